"""A real Dovecot IMAP server for the tests: one per session, one mailbox per test.

Why this module exists: the IMAP watcher's promises (exactly once, nothing lost when the
server or privbot dies, IDLE, STARTTLS) only mean something against a real server, and
Debian's Dovecot starts in a few tens of milliseconds.  So the session starts one from a
throwaway configuration on free loopback ports (plain IMAP with STARTTLS, and implicit
TLS with a self-signed certificate made on the spot), and each test gets a fresh user
with a passwd-file of its own.

Usage::

    def test_x(imap_account: Account) -> None:
        imap_account.append(raw_bytes)            # through IMAP APPEND
        imap_account.deliver_many([raw, ...])     # straight into Maildir/new (fast)
        imap_account.uids("INBOX")                # what is in a folder now
        settings.imap_host, settings.imap_port = imap_account.host, imap_account.port

``dovecot.restart()`` stops and starts the server on the same ports (mail kept).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
#: a second loopback address where the server announces neither IDLE nor MOVE
POOR_HOST = "127.0.0.2"


def _mail_ids() -> tuple[int, int]:
    """Dovecot refuses to give mail to root: as root, mail belongs to nobody (65534)."""
    if os.geteuid() == 0:
        return 65534, 65534
    return os.getuid(), os.getgid()


def _make_cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Account:
    """One mailbox on the test server."""

    server: "Dovecot"
    user: str
    password: str

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def maildir(self) -> Path:
        return self.server.home / self.user / "Maildir"

    def client(self, *, ssl: bool = False, port: int | None = None):  # type: ignore[no-untyped-def]
        from imapclient import IMAPClient

        c = IMAPClient(self.host, port or self.port, ssl=ssl, timeout=30)
        c.login(self.user, self.password)
        return c

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            c.append(folder, raw)

    def deliver_many(self, messages: Sequence[bytes]) -> None:
        """Write straight into Maildir/new, as a local delivery agent would: fast for
        thousands.  Each file appears at once (written in tmp/, renamed into new/)."""
        uid, gid = _mail_ids()
        tmp, new = self.maildir / "tmp", self.maildir / "new"
        stamp = f"{int(time.time())}.{uuid.uuid4().hex[:8]}"
        for i, raw in enumerate(messages):
            name = f"{stamp}_{i}.privbot-test"
            path = tmp / name
            path.write_bytes(raw)
            os.chown(path, uid, gid)
            path.rename(new / name)

    def uids(self, folder: str = "INBOX") -> list[int]:
        with self.client() as c:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            return list(c.search("ALL"))

    def count(self, folder: str = "INBOX") -> int:
        with self.client() as c:
            if not c.folder_exists(folder):
                return 0
            return int(c.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

    def fetch_all(self, folder: str) -> list[bytes]:
        with self.client() as c:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            data = c.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [data[u][b"BODY[]"] for u in sorted(data)]


class Dovecot:
    """The server process, its configuration and its users, all under one temp dir."""

    def __init__(self) -> None:
        # Not under pytest's 0700 tmp dirs: Dovecot's mail processes run as nobody.
        self.root = Path(tempfile.mkdtemp(prefix="privbot-dovecot-"))
        self.root.chmod(0o755)
        self.home = self.root / "home"
        self.home.mkdir()
        self.home.chmod(0o755)
        self.passwd = self.root / "users"
        self.passwd.mkdir()
        self.cert, self.key = _make_cert(self.root)
        self.port, self.tls_port, self.poor_port = free_port(), free_port(), free_port()
        self.conf = self.root / "dovecot.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    def _write_conf(self) -> None:
        uid, gid = _mail_ids()
        r = self.root
        lines = [
            "protocols = imap",
            "listen = 127.0.0.1",
            f"base_dir = {r}/run",
            f"state_dir = {r}/state",
            f"log_path = {r}/dovecot.log",
            "ssl = yes",
            f"ssl_cert = <{self.cert}",
            f"ssl_key = <{self.key}",
            "ssl_dh = </usr/share/dovecot/dh.pem",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            # One passwd-file per user: Dovecot re-reads a changed file at most once a
            # second, but a file it has not seen yet is read at once.
            f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {self.passwd}/%u\n}}",
            f"userdb {{\n  driver = passwd-file\n  args = username_format=%u {self.passwd}/%u\n}}",
            "auth_failure_delay = 0",
            f"mail_location = maildir:{self.home}/%u/Maildir",
            f"first_valid_uid = {uid}",
            f"first_valid_gid = {gid}",
            # Mail dropped into Maildir/new is noticed by IDLE at once (inotify), and
            # without inotify within a second rather than Dovecot's default 30 s.
            "imap_idle_notify_interval = 1 secs",
            "mailbox_idle_check_interval = 1 secs",
            "auth_cache_size = 0",
            "service imap-login {",
            f"  inet_listener imap {{\n    port = {self.port}\n  }}",
            f"  inet_listener imaps {{\n    port = {self.tls_port}\n    ssl = yes\n  }}",
            f"  inet_listener imap_poor {{\n    address = {POOR_HOST}\n    port = {self.poor_port}\n  }}",
            "}",
            # The same mailboxes behind a poorer server (no IDLE, no MOVE), as some
            # providers are: for the watcher's polling and COPY/EXPUNGE paths.
            f"local {POOR_HOST} {{\n  protocol imap {{\n    imap_capability = IMAP4rev1 UIDPLUS LITERAL+ SASL-IR\n  }}\n}}",
        ]
        if os.geteuid() != 0:
            user = os.environ.get("USER") or str(os.getuid())
            lines += [f"default_internal_user = {user}", f"default_login_user = {user}"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited at start-up: {err.strip()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(64).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("dovecot did not start within 10 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop (dropping every connection) and start again on the same ports."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def add_user(self, user: str | None = None, password: str | None = None) -> Account:
        user = user or "u" + uuid.uuid4().hex[:10]
        password = password or uuid.uuid4().hex
        uid, gid = _mail_ids()
        maildir = self.home / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.home / user, maildir, *(maildir / s for s in ("cur", "new", "tmp"))):
            os.chown(path, uid, gid)
        self.set_password(user, password)
        return Account(self, user, password)

    def set_password(self, user: str, password: str) -> None:
        """(Re)write the user's passwd-file.  Note: Dovecot delays a client's logins
        after failures from its address (up to ~4 s here) until one succeeds."""
        uid, gid = _mail_ids()
        entry = self.passwd / f"{user}.tmp"
        entry.write_text(f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{self.home / user}::\n")
        entry.rename(self.passwd / user)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    if not os.path.exists(DOVECOT):
        pytest.skip("Dovecot is not installed (make test installs dovecot-imapd)")
    server = Dovecot()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def imap_account(dovecot: Dovecot) -> Account:
    """A fresh, empty mailbox on the session's Dovecot."""
    if dovecot.proc is None or dovecot.proc.poll() is not None:
        dovecot.start()  # a test that stopped the server must not break the next one
    return dovecot.add_user()
