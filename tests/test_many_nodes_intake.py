"""Three ``privbot run`` processes, one PostgreSQL, one mailbox: 2,000 requests arrive by
IMAP and SMTP together (some by both), and each still gets exactly one ticket and at most
one acknowledgement, delivered once.

This is the deployment the compose file scales to: several nodes for availability, all
watching the same privacy mailbox and taking SMTP from the same MX.  The processes are
real (``python -m privbot.cli run``), started at the same moment against an empty schema,
so they also race each other's first migration.
"""

from __future__ import annotations

import mailbox
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from privbot.store.models import Message, OutboxItem, Ticket
from tests.support import free_port, make_mail

ROOT = Path(__file__).resolve().parents[1]
NODES = 3
N_SMTP = 1000
N_IMAP = 1000
BOTH = 100  # of the IMAP ones, also sent by SMTP (a sender whose MX retried elsewhere)
BODIES = [
    "Please delete all the personal information you hold about me.",
    "I would like a copy of all the data you have about me.",
    "Please close my account, I no longer use it.",
    "Unsubscribe me from your marketing emails.",
    "Where is my invoice for last month?",
]


def request(i: int) -> bytes:
    msg = make_mail(BODIES[i % len(BODIES)], sender=f"node-user{i}@example.org", subject=f"Request {i}", message_id=f"<many-{i}@example.org>")
    return bytes(msg).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message_id_of(raw: bytes) -> str:
    import email

    return str(email.message_from_bytes(raw)["Message-ID"] or "").strip()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"privbot exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"privbot did not listen on {port} within {timeout} s")


@pytest.fixture
def nodes(pg_url: str, imap_account, tmp_path: Path) -> Iterator[list[int]]:  # type: ignore[no-untyped-def]
    pytest.importorskip("privbot.channels.imap")
    ports = [free_port() for _ in range(NODES)]
    procs = []
    for n, port in enumerate(ports):
        env = {
            **os.environ,
            "PRIVBOT_DATABASE_URL": pg_url,
            # One data dir: one classifier cache (the first node trains, the others load)
            # and one outbox Maildir, which takes concurrent writers by design.
            "PRIVBOT_DATA_DIR": str(tmp_path / "var"),
            "PRIVBOT_PRIVACY_ADDRESS": "privacy@example.com",
            "PRIVBOT_SMTP_LISTEN": f"127.0.0.1:{port}",
            "PRIVBOT_WEB_LISTEN": "",
            "PRIVBOT_IMAP_HOST": imap_account.host,
            "PRIVBOT_IMAP_PORT": str(imap_account.port),
            "PRIVBOT_IMAP_USER": imap_account.user,
            "PRIVBOT_IMAP_PASSWORD": imap_account.password,
            "PRIVBOT_IMAP_SSL": "plain",
            "PRIVBOT_IMAP_POLL_SECONDS": "1",
            "PRIVBOT_OUTBOX_INTERVAL": "0.5",
            "PRIVBOT_MAX_AUTO_REPLIES_PER_DAY": "1000000",
            "PRIVBOT_LOG_LEVEL": "WARNING",
            "PRIVBOT_INTENTS_DIR": str(ROOT / "intents"),
            "PRIVBOT_TEMPLATES_DIR": str(ROOT / "templates"),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "privbot.cli", "run"], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        for port, proc in zip(ports, procs):
            wait_port(port, proc, 120)
        yield ports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def smtp_sender(port: int, numbers: list[int]) -> int:
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        for i in numbers:
            assert smtp.sendmail(f"node-user{i}@example.org", ["privacy@example.com"], request(i)) == {}
            sent += 1
    return sent


@pytest.mark.slow
def test_three_nodes_take_2000_messages_by_imap_and_smtp_once_each(nodes: list[int], pg_url: str, imap_account, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    imap_numbers = list(range(N_IMAP))
    smtp_numbers = list(range(N_IMAP, N_IMAP + N_SMTP)) + imap_numbers[:BOTH]
    t0 = time.perf_counter()
    imap_account.deliver_many([request(i) for i in imap_numbers])
    # Two connections per node, all at once, while the three watchers drain the mailbox.
    chunks = [smtp_numbers[k :: 2 * NODES] for k in range(2 * NODES)]
    with ThreadPoolExecutor(2 * NODES) as pool:
        sent = sum(pool.map(smtp_sender, [nodes[k % NODES] for k in range(2 * NODES)], chunks))
    assert sent == N_SMTP + BOTH  # every SMTP delivery answered 250 (after its commit)

    engine = create_engine(pg_url)
    privacy = sum(1 for i in range(N_IMAP + N_SMTP) if "invoice" not in BODIES[i % len(BODIES)])

    def state() -> tuple[int, int, int]:
        with engine.connect() as c:
            return (
                c.scalar(select(func.count(Ticket.id))) or 0,
                c.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.status == "sent")) or 0,
                imap_account.count("INBOX"),
            )

    smtp_elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and state() != (N_IMAP + N_SMTP, privacy, 0):
        time.sleep(0.5)
    elapsed = time.perf_counter() - t0
    try:
        with engine.connect() as c:
            tickets = c.scalar(select(func.count(Ticket.id)))
            requesters = c.scalar(select(func.count(func.distinct(Ticket.requester))))
            received = c.scalar(select(func.count(Message.id)).where(Message.direction == "in"))
            items = c.execute(select(OutboxItem.recipient, OutboxItem.status, OutboxItem.attempts)).all()
            per_node = c.execute(text("SELECT split_part(claimed_by, ':', 2), count(*) FROM outbox GROUP BY 1")).all()
    finally:
        engine.dispose()

    assert tickets == N_IMAP + N_SMTP, "a request was lost or ticketed twice"
    assert requesters == tickets  # one requester per request: no duplicate ticket
    assert received == N_IMAP + N_SMTP  # the BOTH deliveries were recognised as duplicates
    assert len(items) == privacy  # one acknowledgement per privacy request, none for the invoices
    assert len({r for r, _, _ in items}) == len(items)
    outcomes = Counter((status, attempts) for _, status, attempts in items)
    assert outcomes == {("sent", 1): privacy}, f"after {elapsed:.0f} s: {dict(outcomes)}"
    assert imap_account.count("INBOX") == 0
    # Every IMAP request reached Processed.  (Counted by Message-ID: the nodes share one
    # data directory on one host, hence one name in the mailbox's lease, so all three
    # watch at once — the worst case — and moving the same UIDs can leave extra copies.)
    processed = {message_id_of(raw) for raw in imap_account.fetch_all("Processed")}
    assert processed == {f"<many-{i}@example.org>" for i in imap_numbers}
    # Each acknowledgement was written exactly once into the outbox Maildir.
    box = mailbox.Maildir(str(tmp_path / "var" / "outbox"), create=True)
    delivered = [str(box.get_message(k)["To"]) for k in box.keys()]
    assert sorted(delivered) == sorted(r for r, _, _ in items)
    assert len(per_node) >= 2, f"the work was not shared: {per_node}"
    copies = imap_account.count("Processed")
    print(f"\n{N_IMAP + N_SMTP} messages ({N_IMAP} IMAP, {N_SMTP} SMTP, {BOTH} both) on {NODES} nodes: "
          f"SMTP accepted in {smtp_elapsed:.1f} s, all ticketed and acknowledged in {elapsed:.1f} s; "
          f"{copies} copies in Processed")
