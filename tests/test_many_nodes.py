"""Exactly once, whatever happens: three privbot processes on one PostgreSQL, and a mail
relay that refuses connections for a while.

The relay is a real aiosmtpd server that records every message it accepts; "exactly
once" is counted there, by Message-ID, not in privbot's own tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from privbot import clock, deadlines, replies, scheduler
from privbot.app import Services, build_services
from privbot.domain import Status
from privbot.store.models import AuditEntry, DeliveryAttempt, Draft, Message, OutboxItem, Reminder, Ticket
from tests.conftest import make_settings
from tests.support import free_port

STAFF = "dpo@example.com"


class Sink:
    """An SMTP relay that keeps what it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))  # type: ignore[attr-defined]
        return "250 OK"

    def message_ids(self) -> Counter[str]:
        return Counter(str(message_from_bytes(raw, policy=default)["Message-ID"]) for _f, _t, raw in self.messages)

    def to(self, address: str) -> list[bytes]:
        return [raw for _f, rcpt, raw in self.messages if address in rcpt]


@pytest.fixture
def relay() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    yield sink, port
    ctl.stop()


def seed_ticket(services: Services, *, age_days: float, requester: str, with_answer: bool) -> int:
    """A ticket received ``age_days`` ago on the default 30-day clock; optionally with an
    answer draft that a member of staff approves now (so a reply waits in the outbox)."""
    received = clock.now() - timedelta(days=age_days)
    with services.db.transaction() as s:
        t = Ticket(
            intent="access", intents=["access"], status=str(Status.AWAITING_APPROVAL), channel="email", requester=requester,
            received_at=received, due_at=deadlines.due_at(services.settings, received), legal_clock="default", updated_at=received,
        )
        s.add(t)
        s.flush()
        s.add(Message(ticket_id=t.id, direction="in", kind="request", channel="email", message_id=f"<r{t.id}@example.org>",
                      sender=requester, subject="My data", body="Send me my data", new_text="Send me my data", created_at=received))
        if with_answer:
            s.add(Draft(ticket_id=t.id, kind="answer", subject=f"[{t.ref}] Your data", text="Here is your data.", created_at=received))
            s.flush()
            replies.approve(s, services.settings, t, "carol@example.com")
        return t.id


def test_three_processes_send_every_reminder_and_reply_exactly_once(pg_url: str, tmp_path: Path, relay: tuple[Sink, int]) -> None:
    sink, relay_port = relay
    settings = make_settings(tmp_path / "seed", pg_url, staff_address=STAFF, smtp_relay=f"127.0.0.1:{relay_port}")
    services = build_services(settings)
    # 60 tickets: some overdue, some inside 1, 3 or 7 days of their deadline, some far off;
    # half of them with an approved answer waiting in the outbox.
    ages = [31, 29.5, 27.5, 24, 10]
    ids = [seed_ticket(services, age_days=ages[i % 5], requester=f"user{i}@example.org", with_answer=i % 2 == 0) for i in range(60)]
    with services.db.transaction() as s:
        replies_queued = s.scalar(select(func.count(OutboxItem.id)))
    assert replies_queued == 30

    env = {
        **os.environ,
        "PRIVBOT_DATABASE_URL": pg_url,
        "PRIVBOT_PRIVACY_ADDRESS": "privacy@example.com",
        "PRIVBOT_STAFF_ADDRESS": STAFF,
        "PRIVBOT_SMTP_RELAY": f"127.0.0.1:{relay_port}",
        "PRIVBOT_SMTP_LISTEN": "",
        "PRIVBOT_WEB_LISTEN": "",
        "PRIVBOT_OUTBOX_INTERVAL": "0.2",
        "PRIVBOT_SWEEP_INTERVAL": "0.3",
        "PRIVBOT_LOG_LEVEL": "WARNING",
    }
    procs = []
    for n in range(3):
        data = tmp_path / f"node{n}"
        data.mkdir()
        log = (data / "log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "privbot.cli", "run"], env={**env, "PRIVBOT_DATA_DIR": str(data)},
                                      stdout=log, stderr=subprocess.STDOUT))
    try:
        expected_mail = 30 + 2  # every reply, one reminder digest and one escalation digest
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(sink.messages) < expected_mail:
            assert all(p.poll() is None for p in procs), "a privbot process died"
            time.sleep(0.2)
        time.sleep(3)  # many more sweep intervals in every process: nothing more may go out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        errors = [(tmp_path / f"node{n}" / "log").read_text() for n in range(3)]
    assert all(p.returncode == 0 for p in procs), errors
    assert not any("Traceback" in e for e in errors), errors

    ids_seen = sink.message_ids()
    assert len(sink.messages) == expected_mail and set(ids_seen.values()) == {1}
    for i in range(0, 60, 2):  # every approved answer reached its requester once
        assert len(sink.to(f"user{i}@example.org")) == 1
    staff = [message_from_bytes(raw, policy=default).get_content() for raw in sink.to(STAFF)]
    assert len(staff) == 2
    with services.db.transaction() as s:
        kinds = Counter(s.scalars(select(Reminder.kind)))
        # the 30 answered tickets need no reminder; of the 30 open ones, 6 in each band
        assert kinds == {"overdue": 6, "due-1d": 6, "due-3d": 6, "due-7d": 6}
        assert s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.status != "sent")) == 0
        refs = {t.id: t.ref for t in s.scalars(select(Ticket))}
    for i, tid in enumerate(ids):  # each open ticket near its deadline is named in one staff mail, once
        named = sum(m.count(refs[tid]) for m in staff)
        assert named == (1 if i % 2 == 1 and ages[i % 5] != 10 else 0)
    services.db.dispose()


def test_replies_wait_while_the_relay_refuses_and_go_out_once_when_it_returns(db_url: str, tmp_path: Path, frozen_clock: object) -> None:
    port = free_port()  # nothing listens here yet: connections are refused
    services = build_services(make_settings(tmp_path / "var", db_url, smtp_relay=f"127.0.0.1:{port}"))
    ids = [seed_ticket(services, age_days=3, requester=f"user{i}@example.org", with_answer=True) for i in range(5)]

    def outbox() -> str:
        return scheduler.outbox_sweep(services)

    assert outbox() == "outbox: 0 sent, 5 failed (will retry), 0 given up"
    for wait in (31, 61, 121):  # the relay stays down through three retries with growing gaps
        clock.fast_forward(seconds=wait - 10)
        assert outbox().startswith("outbox: 0 sent, 0 failed")  # not yet due: backoff
        clock.fast_forward(seconds=10)
        assert outbox() == "outbox: 0 sent, 5 failed (will retry), 0 given up"

    sink = Sink()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        clock.fast_forward(minutes=5)
        assert outbox() == "outbox: 5 sent, 0 failed (will retry), 0 given up"
        for _ in range(3):
            clock.fast_forward(hours=2)
            assert outbox().startswith("outbox: 0 sent, 0 failed")
    finally:
        ctl.stop()
    assert len(sink.messages) == 5 and set(sink.message_ids().values()) == {1}
    assert sorted(r for _f, rcpt, _raw in sink.messages for r in rcpt) == [f"user{i}@example.org" for i in range(5)]
    with services.db.transaction() as s:
        attempts = list(s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)))
        assert len(attempts) == 5 * 5 and sum(a.ok for a in attempts) == 5
        assert all("Connection refused" in (a.error or "") for a in attempts if not a.ok)
        assert {t.status for t in s.scalars(select(Ticket).where(Ticket.id.in_(ids)))} == {"answered"}
    services.db.dispose()


class RefusingRelay:
    """A relay that refuses every recipient, quoting the address as real servers do."""

    async def handle_RCPT(self, server: object, session: object, envelope: object, address: str, options: list[str]) -> str:
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"


def test_a_refusal_that_quotes_the_requesters_address_is_kept_without_it(db_url: str, tmp_path: Path, frozen_clock: object) -> None:
    # Attempts, the item's last error and the audit entry of a reply given up all keep
    # why it failed; the audit trail is never purged, so none may keep the address.
    port = free_port()
    ctl = Controller(RefusingRelay(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        services = build_services(make_settings(tmp_path / "var", db_url, smtp_relay=f"127.0.0.1:{port}"))
        seed_ticket(services, age_days=3, requester="alice.liddell@example.org", with_answer=True)
        said = []
        for _ in range(12):  # every retry, until it is given up
            said.append(scheduler.outbox_sweep(services))
            clock.fast_forward(hours=2)
    finally:
        ctl.stop()
    assert said[0] == "outbox: 0 sent, 1 failed (will retry), 0 given up" and said[-1] == "outbox: 0 sent, 0 failed (will retry), 1 given up"
    with services.db.transaction() as s:
        item = s.scalars(select(OutboxItem)).one()
        errors = [a.error or "" for a in s.scalars(select(DeliveryAttempt))]
        audit_errors = [str(a.detail) for a in s.scalars(select(AuditEntry).where(AuditEntry.action == "delivery_failed"))]
    assert item.status == "failed" and len(errors) == 12 and len(audit_errors) == 1
    for error in [item.last_error or "", *errors, *audit_errors]:
        assert "Recipient address rejected" in error and "a***@example.org" in error  # still says why, and to whom roughly
        assert "alice.liddell" not in error
    services.db.dispose()
