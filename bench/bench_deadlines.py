"""Deadline benchmark: does every request get answered or escalated before it is due?

1. A simulation on SQLite with a frozen clock stepping two hours at a time through 90 days of
   arrivals (1,000 requests, GDPR clock) and on until every deadline has passed.  Staff
   answer after random delays: most on their own, some only once reminded, some ask for
   an extension when reminded, some never answer.  The real sweeps, approval path and
   outbox (into a Maildir) run at every step.
2. One deadline sweep over 100,000 open tickets on PostgreSQL (cold: thousands of
   reminders to claim; warm: nothing new), with the query plan's index.

Run: ``.venv/bin/python bench/bench_deadlines.py`` (about a minute).
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from privbot import clock, deadlines, replies, scheduler, sweeps  # noqa: E402
from privbot.app import Services, build_services  # noqa: E402
from privbot.config import Settings  # noqa: E402
from privbot.domain import Status  # noqa: E402
from privbot.store.models import DeadlineEvent, Draft, Message, OutboxItem, Reminder, Ticket  # noqa: E402

PG = os.environ.get("PRIVBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
STAFF = "dpo@example.com"
#: the simulated sweep interval (privbot's default is a minute; hours keep the bench short
#: and are the harder case: a reminder threshold may be crossed up to this long before a sweep)
STEP_HOURS = 2


def make_settings(data_dir: Path, url: str) -> Settings:
    return Settings(data_dir=data_dir, database_url=url, privacy_address="privacy@example.com", smtp_listen="", web_listen="",
                    staff_address=STAFF, legal_clock="gdpr", retention_days=0)


# ---------------------------------------------------------------------------- simulation


def open_request(services: Services, n: int) -> int:
    now = clock.now()
    with services.db.transaction() as s:
        t = Ticket(intent="access", intents=["access"], status=str(Status.AWAITING_APPROVAL), channel="email",
                   requester=f"user{n}@example.org", received_at=now, due_at=deadlines.due_at(services.settings, now),
                   legal_clock="gdpr", updated_at=now)
        s.add(t)
        s.flush()
        s.add(Message(ticket_id=t.id, direction="in", kind="request", channel="email", message_id=f"<r{n}@example.org>",
                      sender=t.requester, subject="My data", body="Please send me my data.", new_text="Please send me my data.",
                      created_at=now))
        s.add(Draft(ticket_id=t.id, kind="answer", subject=f"[{t.ref}] Your data", text="Here is your data.", created_at=now))
        return t.id


def simulate(n_requests: int = 1000, days: int = 90, seed: int = 8) -> None:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-deadlines-"))
    services = build_services(make_settings(tmp / "var", f"sqlite:///{tmp / 'sim.db'}"))
    clock.freeze(START)
    arrivals = sorted(START + timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n_requests))
    # staff behaviour per ticket: (kind, own delay in days)
    behaviour: dict[int, tuple[str, float]] = {}
    plan: dict[int, datetime] = {}  # ticket id -> when staff will answer
    answered: dict[int, datetime] = {}
    extended: set[int] = set()
    steps = 0
    seen_reminder = 0  # staff read the reminders that arrived since the last step
    t0 = time.monotonic()
    end = START + timedelta(days=days + 100)
    i = 0
    while clock.now() < end:
        now = clock.now()
        while i < len(arrivals) and arrivals[i] <= now:
            tid = open_request(services, i)
            r = rng.random()
            if r < 0.55:
                behaviour[tid] = ("prompt", rng.uniform(0.5, 20))
            elif r < 0.75:
                behaviour[tid] = ("slow", rng.uniform(20, 50))  # answers a day or two after a reminder
            elif r < 0.85:
                behaviour[tid] = ("extends", rng.uniform(20, 50))  # asks for more time when reminded
            else:
                behaviour[tid] = ("never", 1e5)
            plan[tid] = now + timedelta(days=behaviour[tid][1])
            i += 1
        # staff react to reminders they received since the last step
        with services.db.transaction() as s:
            fresh = s.execute(select(Reminder.id, Reminder.ticket_id).where(Reminder.id > seen_reminder).order_by(Reminder.id)).all()
        for rid, tid in fresh:
            seen_reminder = rid
            style = behaviour[tid][0]
            if tid in answered:
                continue
            if style == "slow":
                plan[tid] = min(plan[tid], now + timedelta(days=rng.uniform(0, 1.5)))
            elif style == "extends" and tid not in extended:
                with services.db.transaction() as s:
                    t = s.get(Ticket, tid)
                    try:
                        deadlines.extend(s, services.settings, t, 30, "Records must be restored from the archive.", "carol@example.com")
                        extended.add(tid)
                        plan[tid] = t.due_at - timedelta(days=rng.uniform(1, 10))
                    except deadlines.ExtensionRefused:
                        plan[tid] = min(plan[tid], now + timedelta(days=1))
        for tid, when in list(plan.items()):
            if when <= now and tid not in answered:
                with services.db.transaction() as s:
                    replies.approve(s, services.settings, s.get(Ticket, tid), "carol@example.com")
                answered[tid] = now
                del plan[tid]
        sweeps.deadline_sweep(services)
        scheduler.outbox_sweep(services)
        steps += 1
        clock.fast_forward(hours=STEP_HOURS)
    wall = time.monotonic() - t0

    with services.db.transaction() as s:
        tickets = {t.id: t for t in s.scalars(select(Ticket))}
        reminders = s.execute(select(Reminder.ticket_id, Reminder.kind, Reminder.sent_at, Reminder.due_at)).all()
        events = list(s.scalars(select(DeadlineEvent).where(DeadlineEvent.kind == "extended")))
        staff_mails = s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.recipient == STAFF))
        unsent = s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.status != "sent"))
        inside_first = sum(e.at < deadlines.first_period_end(services.settings, tickets[e.ticket_id]) for e in events)
    first_warning: dict[int, datetime] = {}
    for tid, _kind, sent_at, _due in reminders:
        first_warning[tid] = min(first_warning.get(tid, sent_at), sent_at)
    n = len(tickets)
    before_due = sum(1 for tid, at in answered.items() if at <= tickets[tid].due_at)
    answered_or_escalated = sum(
        1 for tid, t in tickets.items()
        if (tid in answered and answered[tid] <= t.due_at) or (tid in first_warning and first_warning[tid] < t.due_at)
    )
    per_ticket = Counter(tid for tid, *_ in reminders)
    kinds = Counter(k for _tid, k, *_ in reminders)
    styles = Counter(b[0] for b in behaviour.values())
    print(f"simulation: {n} requests over {days} days (GDPR clock), staff {dict(styles)}; {steps} sweeps {STEP_HOURS} h apart in {wall:.0f} s")
    print(f"  answered before due: {before_due}/{n} = {100 * before_due / n:.1f} %; never answered: {n - len(answered)}")
    print(f"  answered or escalated to staff before due: {answered_or_escalated}/{n} = {100 * answered_or_escalated / n:.1f} % (goal 100 %)")
    print(f"  reminders per ticket: {len(reminders) / n:.2f} mean, {max(per_ticket.values(), default=0)} max; by kind {dict(sorted(kinds.items()))}")
    print(f"  staff mails (digests): {staff_mails}; outbox items not sent: {unsent}")
    print(f"  extension notices: {len(events)}, inside the first period: {inside_first} ({100 * inside_first / max(1, len(events)):.0f} %)")
    clock.unfreeze()
    services.db.dispose()


# ---------------------------------------------------------------------------- 100,000 on PostgreSQL


def pg_sweep(n_tickets: int = 100_000) -> None:
    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"postgresql sweep: skipped, no PostgreSQL at {PG}: {type(exc).__name__}")
        return
    url = f"{PG}?options=-csearch_path%3D{schema}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-deadlines-pg-"))
    try:
        services = build_services(make_settings(tmp / "var", url))
        now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
        rng = random.Random(1)
        t0 = time.monotonic()
        buf = io.StringIO()
        statuses = ["received", "awaiting_verification", "verified", "awaiting_approval"]
        for n in range(n_tickets):
            due = now + timedelta(seconds=rng.uniform(-2 * 86400, 45 * 86400))
            received = due - timedelta(days=30)
            buf.write(f"access\t[\"access\"]\t0.9\t[]\ten\t{rng.choice(statuses)}\temail\tuser{n}@example.org\t\t"
                      f"{received.isoformat()}\t{due.isoformat()}\tgdpr\tf\tf\t{received.isoformat()}\t0\n")
        raw = services.db.engine.raw_connection()
        try:
            with raw.cursor() as cur:  # type: ignore[attr-defined]
                with cur.copy("COPY tickets (intent, intents, confidence, cues, language, status, channel, requester, requester_name, "
                              "received_at, due_at, legal_clock, extended, verified, updated_at, paused_seconds) FROM STDIN") as cp:
                    cp.write(buf.getvalue())
                cur.execute("ANALYZE tickets")
            raw.commit()
        finally:
            raw.close()
        load = time.monotonic() - t0
        clock.freeze(now)
        timings = []
        for label in ("cold (claims every ticket inside 7 days)", "warm (same moment, nothing new)"):
            t1 = time.monotonic()
            line = sweeps.deadline_sweep(services)
            timings.append((label, time.monotonic() - t1, line))
        clock.fast_forward(hours=1)
        t1 = time.monotonic()
        line = sweeps.deadline_sweep(services)
        timings.append(("one hour later (the steady state)", time.monotonic() - t1, line))
        with services.db.engine.connect() as c:
            plan = "\n".join(r[0] for r in c.execute(text(
                "EXPLAIN SELECT id FROM tickets WHERE status IN ('received','awaiting_verification','verified','awaiting_approval') "
                "AND due_at <= :horizon AND purged_at IS NULL"), {"horizon": now + timedelta(days=7)}))
            reminders = c.scalar(text("SELECT count(*) FROM reminders"))
        index = next((w for w in ("ix_tickets_status_due", "ix_tickets_due_at") if w in plan), "none (sequential scan)")
        print(f"postgresql: {n_tickets} open tickets loaded by COPY in {load:.1f} s; candidate scan uses index: {index}")
        for label, secs, line in timings:
            print(f"  deadline sweep {label}: {secs * 1000:.0f} ms  [{line}]  (goal < 1000 ms)")
        print(f"  reminder rows after three sweeps: {reminders}")
        services.db.dispose()
    finally:
        clock.unfreeze()
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    simulate()
    pg_sweep()
