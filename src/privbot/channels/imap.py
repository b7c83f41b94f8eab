"""The IMAP watcher: drains the privacy mailbox into the pipeline, exactly once.

Why this module exists: most companies' privacy address is a mailbox on their own mail
server, not an MX privbot can stand behind.  privbot logs in, takes every message in the
watched folder through :func:`privbot.intake.receive_email`, and waits with IDLE (or
polls) for more.

Exactly once, because the order never changes:

1. FETCH a batch (``BODY.PEEK[]``: the ``\\Seen`` flag stays as it was);
2. ``receive_email`` for each message — it returns only after its transaction commits
   (a backlog goes in groups of up to 25 through ``receive_emails``, one transaction per
   group, returning after that commit; a group that fails is rolled back whole and its
   messages taken one at a time, so a failing message still fails alone);
3. only then MOVE the committed messages to the processed folder (``COPY`` + ``\\Deleted``
   + ``UID EXPUNGE`` where the server lacks MOVE).

A crash between 2 and 3 leaves a committed message in the folder; the next pass hands it
to the pipeline again, whose Message-ID (or byte-hash) de-duplication turns it into a
no-op, and then moves it.  Nothing is removed from the server before it is committed, and
a message the pipeline cannot take (kept in the shunt for ``privbot reprocess``) moves to
the failed folder, so the server shows a person what needs a look.

One process at a time watches a mailbox: the watcher holds a lease on it
(:mod:`privbot.leases`), renews it while it works, and gives it up when it stops.
Other privbot processes configured with the same mailbox stand by and take over when
the lease is free or has lapsed (``PRIVBOT_IMAP_LEASE_SECONDS`` after a holder died).

The loop is blocking imapclient code on a thread of its own; :class:`ImapComponent` is
what ``privbot run`` starts beside the SMTP intake.  It reconnects with exponential
backoff when the server goes away, and treats a refused login as a configuration
problem: logged once, retried slowly, while the rest of privbot keeps running.
"""

from __future__ import annotations

import asyncio
import imaplib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from privbot import leases
from privbot.intake import GROUP_MAX, receive_email, receive_emails
from privbot.logs import mask
from privbot.store.db import DatabaseUnavailable

if TYPE_CHECKING:
    from privbot.app import Services
    from privbot.config import Settings
    from privbot.domain import IntakeResult

log = logging.getLogger(__name__)

#: a batch is cut short once its messages add up to this many bytes (bounded memory)
BATCH_BYTES = 8 * 1024 * 1024
#: reconnect backoff: first wait, ceiling (seconds)
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
#: a message whose processing raised (not the database being down) this many times in
#: a row goes to the failed folder, so one poison message cannot block the mailbox
MAX_ATTEMPTS = 3
#: how often the thread wakes inside IDLE or a wait to notice it was asked to stop
TICK = 0.5
#: longest a standing-by watcher waits before asking for the mailbox's lease again
STANDBY_POLL_SECONDS = 10.0
#: socket timeout for ordinary commands (IDLE has its own)
COMMAND_TIMEOUT = 120.0

class SessionSpoiled(Exception):
    """The server said the session is no good any more (the watched folder deleted
    under us, a BYE): log in again and select afresh."""


#: what a dropped or restarting server looks like from the client side
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, imaplib.IMAP4.abort, IMAPClientError, socket.timeout, EOFError, SessionSpoiled,
)


Receive = Callable[..., "IntakeResult | None"]


class LeaseLost(Exception):
    """Another process took the mailbox's lease (ours lapsed): this one stands by."""


class ImapConfigError(Exception):
    """The server refused us for a reason a person must fix (login, TLS, folder)."""


@dataclass
class Pass:
    """What one drain did (for logs, tests and the benchmark)."""

    processed: int = 0
    duplicates: int = 0
    failed: int = 0
    actions: dict[str, int] = field(default_factory=dict)

    def count(self, result: IntakeResult) -> None:
        self.actions[result.action] = self.actions.get(result.action, 0) + 1
        if result.action == "duplicate":
            self.duplicates += 1


def connect(settings: Settings) -> IMAPClient:
    """Open, secure (per ``imap_ssl``) and log in; raise ImapConfigError for what a
    person must fix, a connection error for what may pass by itself."""
    context = ssl.create_default_context(cafile=settings.imap_ca_file or None)
    mode = settings.imap_ssl
    client: IMAPClient | None = None
    try:
        client = IMAPClient(settings.imap_host, settings.imap_port, ssl=mode == "tls", ssl_context=context, timeout=COMMAND_TIMEOUT)
        if mode == "starttls":
            if not client.has_capability("STARTTLS"):
                raise ImapConfigError(f"{settings.imap_host} offers no STARTTLS; set PRIVBOT_IMAP_SSL=tls (or plain on a trusted network)")
            client.starttls(context)
        client.login(settings.imap_user, settings.imap_password)
    except LoginError as exc:
        _close(client)
        raise ImapConfigError(f"login refused for {mask(settings.imap_user)}: {_server_text(exc)}") from None
    except ssl.SSLCertVerificationError as exc:
        _close(client)
        raise ImapConfigError(f"the certificate of {settings.imap_host} is not trusted ({exc.verify_message}); see PRIVBOT_IMAP_CA_FILE") from None
    except BaseException:
        _close(client)
        raise
    return client


def _server_text(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith(("b'", 'b"')) and text[-1:] in "'\"":  # imaplib hands over bytes reprs
        text = text[2:-1]
    return text[:200] if text else type(exc).__name__


def _close(client: IMAPClient | None, *, graceful: bool = True) -> None:
    """Log out; after an error just drop the socket (a hung server would make LOGOUT
    wait for the whole command timeout)."""
    if client is None:
        return
    try:
        if not graceful:
            raise OSError
        client.logout()
    except Exception:
        try:
            client.shutdown()
        except Exception:
            pass


class Mailbox:
    """One logged-in session on the watched folder: list, fetch, and file away."""

    def __init__(self, client: IMAPClient, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.folder = settings.imap_folder
        caps = {c.upper() for c in client.capabilities()}
        self.has_move = b"MOVE" in caps
        self.has_uidplus = b"UIDPLUS" in caps
        self.has_idle = b"IDLE" in caps
        self.uidvalidity = 0

    def prepare(self) -> int:
        """Create the folders that are missing, select the watched one; its UIDVALIDITY."""
        for name in (self.folder, self.settings.imap_processed_folder, self.settings.imap_failed_folder):
            if not self.client.folder_exists(name):
                try:
                    self.client.create_folder(name)
                    self.client.subscribe_folder(name)  # so that mail clients show it
                    log.info("IMAP: created folder %r", name)
                except IMAPClientError as exc:
                    if not self.client.folder_exists(name):  # another process may have won
                        raise ImapConfigError(f"cannot create folder {name!r}: {_server_text(exc)}") from None
        info = self.client.select_folder(self.folder)
        self.uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        return self.uidvalidity

    def waiting(self) -> list[int]:
        """UIDs in the folder now, oldest first.  Everything still here is unfiled work:
        filed mail leaves the folder."""
        return sorted(self.client.search("ALL"))

    def batches(self, uids: Sequence[int]) -> Iterable[list[int]]:
        """``uids`` cut into batches of at most ``imap_batch`` messages and BATCH_BYTES."""
        step = self.settings.imap_batch
        for start in range(0, len(uids), step):
            chunk = list(uids[start : start + step])
            sizes = self.client.fetch(chunk, ["RFC822.SIZE"])
            batch: list[int] = []
            total = 0
            for uid in chunk:
                size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
                if batch and total + size > BATCH_BYTES:
                    yield batch
                    batch, total = [], 0
                batch.append(uid)
                total += size
            if batch:
                yield batch

    def fetch(self, uids: Sequence[int]) -> dict[int, bytes]:
        data = self.client.fetch(list(uids), ["BODY.PEEK[]"])
        return {uid: item[b"BODY[]"] for uid, item in data.items() if b"BODY[]" in item}

    def file(self, uids: Sequence[int], folder: str) -> None:
        """Move ``uids`` to ``folder``: MOVE, else COPY + \\Deleted + (UID) EXPUNGE."""
        if not uids:
            return
        uids = list(uids)
        if self.has_move:
            self.client.move(uids, folder)
            return
        self.client.copy(uids, folder)
        self.client.add_flags(uids, [b"\\Deleted"], silent=True)
        if self.has_uidplus:
            self.client.uid_expunge(uids)
        else:
            # Without UIDPLUS only a plain EXPUNGE exists: it also removes anything a
            # person flagged \Deleted in this folder, which is what a mail client's
            # "compact" would do anyway.
            self.client.expunge()

    def wait(self, stop: threading.Event, tick: Callable[[], None] = lambda: None) -> None:
        """Return when new mail may be there, the IDLE is due for renewal, or ``stop``;
        ``tick`` is called every ``TICK`` seconds meanwhile (and may raise to end it)."""
        if not self.has_idle:
            deadline = time.monotonic() + self.settings.imap_poll_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                stop.wait(min(TICK, max(0.0, deadline - time.monotonic())))
                tick()
            if not stop.is_set():
                self.client.noop()
                self.check_uidvalidity()
            return
        self.client.idle()
        spoiled: list[Any] = []
        try:
            deadline = time.monotonic() + self.settings.imap_idle_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                responses = self.client.idle_check(timeout=TICK)
                spoiled = [r for r in responses if _is_trouble(r)]
                if spoiled or any(_is_news(r) for r in responses):
                    break
                tick()
        finally:
            self.client.idle_done()
        if spoiled:
            raise SessionSpoiled(f"server said {spoiled[0][0].decode(errors='replace')} during IDLE")
        if not stop.is_set():
            self.check_uidvalidity()

    def check_uidvalidity(self) -> None:
        """A folder deleted and re-created under us keeps our session selected on the
        dead one on some servers, silently: compare UIDVALIDITY now and then."""
        status = self.client.folder_status(self.folder, [b"UIDVALIDITY"])
        if int(status.get(b"UIDVALIDITY", 0)) != self.uidvalidity:
            raise SessionSpoiled(f"UIDVALIDITY of {self.folder!r} changed")

    def close(self, *, graceful: bool = True) -> None:
        _close(self.client, graceful=graceful)


def _is_news(response: Any) -> bool:
    # (n, b"EXISTS") announces mail.
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT")


def _is_trouble(response: Any) -> bool:
    # An untagged BYE (server going away) or NO (Dovecot's answer when the selected
    # folder is deleted) in the middle of IDLE.
    return isinstance(response, tuple) and bool(response) and response[0] in (b"BYE", b"NO")


class ImapWatcher:
    """The loop: connect, drain, wait, drain … until stopped; reconnect when dropped."""

    def __init__(self, services: Services, *, receive: Receive = receive_email) -> None:
        self.services = services
        #: the pipeline's entry point (the benchmark swaps in a no-op to measure IMAP alone)
        self.receive = receive
        self.settings = services.settings
        self.stopping = threading.Event()
        #: set once logged in and the backlog drained (tests and the benchmark wait on it)
        self.idle_ready = threading.Event()
        self.uidvalidity = 0
        #: committed but not yet filed, by destination: survives a dropped connection,
        #: so the next session files them without running the pipeline again
        self.unfiled: dict[str, set[int]] = {}
        self.attempts: dict[int, int] = {}
        self.totals = Pass()
        self.last_error = ""
        self._config_error_logged = ""
        #: this watcher's name in the mailbox's lease (the turn is made at the first round)
        self.holder = leases.holder_name(str(self.settings.data_dir))
        self._turn: leases.Turn | None = None

    # ---- the loop ---------------------------------------------------------------
    def run(self) -> None:
        backoff = BACKOFF_FIRST
        try:
            while not self.stopping.is_set():
                backoff = self._round(backoff)
        finally:
            self.turn.give_up()
        log.info("IMAP watcher stopped")

    def _round(self, backoff: float) -> float:
        """Hold the mailbox and run one session; the backoff for the next round."""
        try:
            if not self.turn.take():
                self._sleep(min(self.settings.imap_lease_seconds / 3, STANDBY_POLL_SECONDS))
                return BACKOFF_FIRST
            self._session()
        except LeaseLost as exc:
            log.warning("IMAP: %s; standing by", exc)
            return BACKOFF_FIRST
        except ImapConfigError as exc:
            self._config_problem(str(exc))
            self._sleep(self.settings.imap_auth_retry_seconds)
            return backoff
        except DatabaseUnavailable as exc:
            self._trouble(f"database unavailable ({str(exc)[:120]}); mail stays on the server")
        except CONNECTION_ERRORS as exc:
            if self.stopping.is_set():
                return backoff
            self._trouble(f"connection to {self.settings.imap_host}:{self.settings.imap_port} lost: {type(exc).__name__}: {str(exc)[:200]}")
        except Exception:
            log.exception("IMAP watcher: unexpected error; reconnecting")
        else:
            return backoff  # only when stopping
        if self.idle_ready.is_set():
            backoff = BACKOFF_FIRST  # the session had worked: this is a fresh trouble
        self.idle_ready.clear()
        # Jitter, so several privbot processes do not reconnect in lockstep.
        self._sleep(backoff * random.uniform(0.8, 1.2))
        return min(BACKOFF_MAX, backoff * 2)

    def stop(self) -> None:
        self.stopping.set()

    # ---- the mailbox's lease -----------------------------------------------------
    @property
    def lease_name(self) -> str:
        s = self.settings
        return f"imap:{s.imap_host.lower()}:{s.imap_port}:{s.imap_user}:{s.imap_folder}"[:400]

    @property
    def turn(self) -> leases.Turn:
        if self._turn is None:
            self._turn = leases.Turn(self.services.db, self.lease_name, self.holder, self.settings.imap_lease_seconds,
                                     "IMAP: watching this mailbox")
        return self._turn

    @property
    def standing_by(self) -> str:
        """Who watches the mailbox while this watcher stands by ("" while it is ours)."""
        return self.turn.standing_by

    def _renew(self) -> None:
        """While working: renew the lease once a third of it has gone."""
        if not self.turn.keep():
            raise LeaseLost(f"{self.standing_by} took the mailbox over (this watcher's lease had lapsed)")

    def _session(self) -> None:
        self.idle_ready.clear()
        client = connect(self.settings)
        box = Mailbox(client, self.settings)
        try:
            uidvalidity = box.prepare()
            if self.uidvalidity and uidvalidity != self.uidvalidity:
                # The server renumbered the folder: our remembered UIDs mean nothing now.
                # Anything committed is still caught by the pipeline's de-duplication.
                log.warning("IMAP: UIDVALIDITY of %r changed (%s -> %s); starting the folder afresh", box.folder, self.uidvalidity, uidvalidity)
                self.unfiled.clear()
                self.attempts.clear()
            self.uidvalidity = uidvalidity
            if self.last_error or self._config_error_logged:
                log.info("IMAP: connected again to %s as %s", self.settings.imap_host, mask(self.settings.imap_user))
            else:
                log.info("IMAP: watching %r on %s as %s (%s)", box.folder, self.settings.imap_host, mask(self.settings.imap_user),
                         "IDLE" if box.has_idle else f"polling every {self.settings.imap_poll_seconds:g} s")
            self.last_error = self._config_error_logged = ""
            while not self.stopping.is_set():
                self.drain(box)
                self.idle_ready.set()
                if self.stopping.is_set():
                    break
                box.wait(self.stopping, self._renew)
        except BaseException:
            box.close(graceful=False)
            raise
        box.close()

    # ---- one pass over the folder -------------------------------------------------
    def drain(self, box: Mailbox) -> Pass:
        """Take everything now in the folder through the pipeline, batch by batch, and
        keep going until a search finds the folder empty (mail that arrives meanwhile
        is taken in the same pass)."""
        done = Pass()
        self._file_unfiled(box)
        while not self.stopping.is_set():
            uids = box.waiting()
            if not uids:
                break
            if len(uids) > self.settings.imap_batch:  # a backlog: say how much
                log.info("IMAP: %d message(s) waiting in %r", len(uids), box.folder)
            for batch in box.batches(uids):
                if self.stopping.is_set():
                    break
                self._batch(box, batch, done)
                self._renew()
                if done.processed and done.processed % 1000 < len(batch):
                    log.info("IMAP: %d taken in so far", done.processed)
        if done.processed:
            log.info("IMAP: %d message(s) taken in (%s)", done.processed,
                     ", ".join(f"{k} {v}" for k, v in sorted(done.actions.items())))
        return done

    def _batch(self, box: Mailbox, uids: list[int], done: Pass) -> None:
        processed_folder, failed_folder = self.settings.imap_processed_folder, self.settings.imap_failed_folder
        messages = box.fetch(uids)
        try:
            # expunged meanwhile by someone else: nothing to take
            waiting = [(uid, messages.pop(uid)) for uid in uids if uid in messages]
            for start in range(0, len(waiting), GROUP_MAX):
                if self.stopping.is_set():
                    break
                group = waiting[start : start + GROUP_MAX]
                if self._take_group(group, done):
                    continue
                for uid, raw in group:  # one at a time: a failing message fails alone
                    if self.stopping.is_set():
                        break
                    destination = self._take(uid, raw, done)
                    if destination:
                        self.unfiled.setdefault(destination, set()).add(uid)
        finally:
            # File what is committed even when the database went away half-way through.
            self._file_unfiled(box, (processed_folder, failed_folder))

    def _take_group(self, group: list[tuple[int, bytes]], done: Pass) -> bool:
        """Several messages in one transaction (a backlog costs one commit per group, not
        per message); False when they must go one at a time (nothing was committed)."""
        if len(group) < 2 or self.receive is not receive_email:
            return False
        sources = [f"imap:{self.settings.imap_folder}/{uid}" for uid, _ in group]
        results = receive_emails(self.services, [raw for _, raw in group], sources=sources)
        if results is None:
            return False
        for (uid, _), result in zip(group, results):
            destination = self._taken(uid, result, done)
            if destination:
                self.unfiled.setdefault(destination, set()).add(uid)
        return True

    def _take(self, uid: int, raw: bytes, done: Pass) -> str | None:
        """One message through the pipeline; the folder it now belongs in, or None to
        leave it where it is (to be tried again)."""
        source = f"imap:{self.settings.imap_folder}/{uid}"
        try:
            result = self.receive(self.services, raw, source=source)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            # receive_email keeps failures in the shunt itself; this is the shunt failing.
            n = self.attempts[uid] = self.attempts.get(uid, 0) + 1
            if n < MAX_ATTEMPTS:
                log.warning("IMAP: message %s could not be kept (%s), attempt %d of %d", source, type(exc).__name__, n, MAX_ATTEMPTS)
                return None
            log.error("IMAP: message %s failed %d times (%s); moved to %r for a person", source, n, type(exc).__name__, self.settings.imap_failed_folder)
            self.attempts.pop(uid, None)
            done.failed += 1
            return self.settings.imap_failed_folder
        return self._taken(uid, result, done)

    def _taken(self, uid: int, result: IntakeResult | None, done: Pass) -> str | None:
        """Count a committed result; the folder the message now belongs in."""
        self.attempts.pop(uid, None)
        done.processed += 1
        self.totals.processed += 1
        if result is None:  # only with shunt_on_failure=False, which we never ask for
            return None
        done.count(result)
        self.totals.count(result)
        if result.action == "shunted":
            done.failed += 1
            self.totals.failed += 1
            return self.settings.imap_failed_folder
        return self.settings.imap_processed_folder

    def _file_unfiled(self, box: Mailbox, order: Iterable[str] | None = None) -> None:
        for folder in list(order or self.unfiled):
            uids = self.unfiled.get(folder)
            if uids:
                box.file(sorted(uids), folder)
                self.unfiled.pop(folder, None)

    # ---- reporting and waiting -------------------------------------------------------
    def _config_problem(self, message: str) -> None:
        """Logged once per distinct problem: a wrong password is not a crash loop."""
        if message != self._config_error_logged:
            log.error("IMAP: %s; other channels keep running; trying again every %g s", message, self.settings.imap_auth_retry_seconds)
            self._config_error_logged = message
        else:
            log.debug("IMAP: still refused: %s", message)

    def _trouble(self, message: str) -> None:
        if message != self.last_error:
            log.warning("IMAP: %s; reconnecting with backoff", message)
        else:
            log.debug("IMAP: %s", message)
        self.last_error = message

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)


class ImapComponent:
    """``privbot run``'s handle on the watcher thread."""

    name = "imap"

    def __init__(self, services: Services) -> None:
        self.watcher = ImapWatcher(services)
        self.thread: threading.Thread | None = None

    async def start(self) -> None:
        # Returns at once: a slow or absent server must not hold up the other channels.
        self.thread = threading.Thread(target=self.watcher.run, name="imap-watcher", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        self.watcher.stop()
        if self.thread is not None:
            # The thread notices within TICK seconds, after the message in hand is
            # committed and filed.
            await asyncio.to_thread(self.thread.join, 30)


def imap_component(services: Services) -> ImapComponent:
    return ImapComponent(services)
