"""The store on both backends: migrations, the audit chain, the outbox worker."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text, update

from privbot import audit, clock, outbox
from privbot.app import Services
from privbot.store import bulk
from privbot.store.models import AuditEntry, Base, DeliveryAttempt, OutboxItem, Ticket
from tests.conftest import PG_BASE


def test_migrations_create_exactly_the_models(services: Services) -> None:
    with services.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrating_twice_changes_nothing(services: Services) -> None:
    services.db.migrate()
    assert services.db.is_current()


def test_an_audit_trail_written_before_the_hash_index_was_dropped_upgrades_whole_and_still_refuses_a_fork(db_url: str) -> None:
    """Migration 0005 rebuilds the audit table on SQLite: the entries must survive it,
    the chain must still verify, and two entries linking to one predecessor must still
    be refused."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from privbot.store.db import Database, alembic_config
    from privbot.store.models import AuditEntry

    db = Database(db_url)
    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    with db.transaction() as s:
        for i in range(3):
            audit.record(s, "before the upgrade", n=i)
    db.migrate()
    try:
        with db.transaction() as s:
            report = audit.verify_chain(s)
            assert (report.ok, report.entries) == (True, 3)
            tail = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
            assert tail is not None
            fork = AuditEntry(ticket_id=None, at=clock.now(), actor="x", action="fork", detail={}, prev_hash=tail.prev_hash, hash="f" * 64)
        with pytest.raises(IntegrityError), db.transaction() as s:
            s.add(fork)
    finally:
        db.dispose()


def test_audit_chain_verifies_and_names_the_first_altered_entry(services: Services) -> None:
    with services.db.transaction() as s:
        for i in range(5):
            audit.record(s, "step", ticket_id=None, n=i)
    with services.db.transaction() as s:
        assert audit.verify_chain(s).ok
        third = s.scalars(select(AuditEntry).order_by(AuditEntry.id).offset(2).limit(1)).one()
        third_id = third.id
    with services.db.transaction() as s:
        s.execute(update(AuditEntry).where(AuditEntry.id == third_id).values(actor="mallory"))
    with services.db.transaction() as s:
        report = audit.verify_chain(s)
    assert not report.ok and report.first_bad_id == third_id


class FlakyTransport:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[bytes] = []

    def send(self, recipient: str, payload: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("relay down")
        self.sent.append(payload)


def _queue(services: Services, n: int = 1) -> None:
    with services.db.transaction() as s:
        for i in range(n):
            now = clock.now()
            s.add(OutboxItem(channel="email", recipient="a@example.org", payload=f"m{i}".encode(), next_attempt_at=now, created_at=now))


def test_outbox_retries_with_backoff_and_delivers_once(services: Services, frozen_clock: object) -> None:
    _queue(services)
    relay = FlakyTransport(failures=2)
    assert outbox.deliver_due(services.db, {"email": relay}).failed == 1
    # Not due again until the backoff has passed.
    assert outbox.deliver_due(services.db, {"email": relay}).failed == 0
    clock.fast_forward(seconds=31)
    assert outbox.deliver_due(services.db, {"email": relay}).failed == 1
    clock.fast_forward(seconds=61)
    assert outbox.deliver_due(services.db, {"email": relay}).sent == 1
    clock.fast_forward(hours=2)
    assert outbox.deliver_due(services.db, {"email": relay}).sent == 0
    assert relay.sent == [b"m0"]
    with services.db.transaction() as s:
        attempts = [a.ok for a in s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id))]
    assert attempts == [False, False, True]


def test_a_claimed_item_is_not_sent_by_a_second_worker(services: Services) -> None:
    _queue(services)
    with services.db.transaction() as s:
        item_id = s.scalar(select(OutboxItem.id))
    assert outbox._claim(services.db, item_id) is not None
    assert outbox._claim(services.db, item_id) is None


def test_claim_of_a_crashed_worker_expires_and_is_retried(services: Services, frozen_clock: object) -> None:
    _queue(services)
    with services.db.transaction() as s:
        item_id = s.scalar(select(OutboxItem.id))
    assert outbox._claim(services.db, item_id) is not None  # ...and the process dies here
    relay = FlakyTransport(failures=0)
    assert outbox.deliver_due(services.db, {"email": relay}).sent == 0
    clock.fast_forward(minutes=6)
    assert outbox.deliver_due(services.db, {"email": relay}).sent == 1
    with services.db.transaction() as s:
        assert s.get(OutboxItem, item_id).attempts == 2  # the lost try is on record


def test_backoff_grows_and_is_capped() -> None:
    assert outbox.backoff(1) == timedelta(seconds=30)
    assert outbox.backoff(3) == timedelta(seconds=120)
    assert outbox.backoff(50) == timedelta(hours=1)


# ---------------------------------------------------------------------------- ids and bulk writes


def test_rows_written_in_bulk_read_back_with_their_defaults_and_stay_tracked(services: Services) -> None:
    """New rows of the intake's tables skip the unit of work (store.bulk); they must come
    back exactly as written, defaults filled in, and later changes must still be saved."""
    from privbot.store import ids
    from privbot.store.models import Challenge, Draft, Message, Ticket

    now = clock.now()
    with services.db.transaction() as s:
        # new_row: the intake's fast constructor (columns straight into place)
        ticket = Ticket.new_row(intent="access", status="received", channel="email", requester="ann@example.org",
                                received_at=now, due_at=now + timedelta(days=30), updated_at=now)
        s.add(ticket)
        tid = ids.assign(s, ticket)  # known before anything is written: the reference goes into the subject
        draft = Draft(ticket_id=tid, kind="answer", intent="access", language="en", subject=f"[{ticket.ref}] x",
                      text="t", html="", status="pending", needs_approval=True, created_at=now)
        # a child attached only through the relationship gets its key as the ORM would give it
        message = Message(ticket=ticket, direction="in", kind="request", channel="email", dedupe_key="k1",
                          sender="ann@example.org", subject="s", body="b", new_text="b", created_at=now)
        challenge = Challenge.new_row(ticket_id=tid, address="ann@example.org", code_hash="h", created_at=now, expires_at=now)
        s.add_all([draft, message, challenge])
        s.flush()
        draft.status = "approved"  # after the bulk INSERT: an ordinary UPDATE
        ticket.requester_name = "Ann"  # (made by new_row: tracked all the same)
        audit.record(s, "test", ticket_id=tid)
        with pytest.raises(TypeError, match="requestor"):  # a misspelt column is an error, not a stray attribute
            Ticket.new_row(requestor="ann@example.org")
    with services.db.transaction() as s:
        t = s.get(Ticket, tid)
        assert t is not None and t.ref == f"PRIV-{tid:06d}"
        assert (t.extended, t.verified, t.paused_seconds, t.intents, t.language) == (False, False, 0, [], "en")
        assert t.requester_name == "Ann"
        assert s.scalar(select(Draft.status).where(Draft.ticket_id == tid)) == "approved"
        assert s.scalar(select(Message.ticket_id).where(Message.dedupe_key == "k1")) == tid
        assert s.scalar(select(Challenge.attempts).where(Challenge.ticket_id == tid)) == 0
        assert audit.verify_chain(s).ok


def test_a_row_added_without_the_cascade_still_brings_along_a_parent_set_on_it(services: Services) -> None:
    """The intake adds its new rows without Session.add's cascade walk (store.bulk.add_new);
    a row that does carry a related object must still bring it along, and a rollback
    must leave nothing behind."""
    from privbot.store.bulk import add_new
    from privbot.store.models import Message, Ticket

    now = clock.now()

    def message(key: str) -> Message:
        return Message.new_row(direction="in", kind="request", channel="email", dedupe_key=key, sender="bo@example.org",
                               subject="s", body="b", new_text="b", created_at=now)

    with services.db.transaction() as s:
        ticket = Ticket.new_row(intent="access", status="received", channel="email", requester="bo@example.org",
                                received_at=now, due_at=now + timedelta(days=30), updated_at=now)
        child = message("k-with-ticket")
        child.ticket = ticket  # the ticket itself is never added
        add_new(s, child)
        add_new(s, message("k-alone"))
    with services.db.transaction() as s:
        tid = s.scalar(select(Message.ticket_id).where(Message.dedupe_key == "k-with-ticket"))
        assert tid is not None
        found = s.get(Ticket, tid)
        assert found is not None and found.requester == "bo@example.org"
        assert s.scalar(select(Message.ticket_id).where(Message.dedupe_key == "k-alone")) is None
        assert s.scalar(select(func.count(Message.id)).where(Message.dedupe_key == "k-alone")) == 1
    with pytest.raises(RuntimeError), services.db.transaction() as s:
        add_new(s, message("k-rolled-back"))
        s.flush()
        raise RuntimeError("the transaction fails after the INSERT")
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Message.id)).where(Message.dedupe_key == "k-rolled-back")) == 0


def test_a_row_the_database_refuses_is_raised_as_sqlalchemy_raises_it(services: Services) -> None:
    """The intake's rows go to the driver directly (store.bulk); a refusal must still be
    SQLAlchemy's IntegrityError — what intake() catches to answer a delivery another
    process recorded first — and the transaction must leave nothing behind."""
    from sqlalchemy.exc import IntegrityError

    from privbot.store.bulk import add_new
    from privbot.store.models import Message

    now = clock.now()

    def message(key: str) -> Message:
        return Message.new_row(direction="in", kind="request", channel="email", dedupe_key=key, sender="cy@example.org",
                               subject="s", body="b", new_text="b", created_at=now)

    with services.db.transaction() as s:
        add_new(s, message("k-taken"))
    with pytest.raises(IntegrityError), services.db.transaction() as s:
        add_new(s, message("k-new"))
        add_new(s, message("k-taken"))
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Message.id)).where(Message.dedupe_key.in_(["k-new", "k-taken"]))) == 1


def test_ids_handed_out_in_one_transaction_never_collide_with_the_next(services: Services) -> None:
    from privbot.store import ids
    from privbot.store.models import Ticket

    now = clock.now()
    seen: list[int] = []
    for _ in range(3):
        with services.db.transaction() as s:
            for _ in range(3):
                t = Ticket(intent="access", status="received", channel="email", requester="a@example.org",
                           received_at=now, due_at=now, updated_at=now)
                seen.append(ids.assign(s, t))
                s.add(t)
    assert len(set(seen)) == 9 and seen == sorted(seen)
    with services.db.transaction() as s:
        assert sorted(s.scalars(select(Ticket.id))) == seen


def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_before_use(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database restarted (or an administrator ended the session) while privbot was
    quiet: the next transaction gets a fresh connection instead of failing."""
    from privbot.store import db as dbmod

    monkeypatch.setattr(dbmod, "IDLE_PING_SECONDS", 0.0)
    database = dbmod.open_database(pg_url)
    try:
        with database.transaction() as session:
            pid = session.scalar(text("SELECT pg_backend_pid()"))
        admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
        time.sleep(0.05)
        with database.transaction() as session:
            assert session.scalar(text("SELECT pg_backend_pid()")) != pid
            assert session.scalar(select(func.count(AuditEntry.id))) == 0
    finally:
        database.dispose()


def test_a_commit_sent_with_the_inserts_never_leaves_a_pending_update_behind(services: Services) -> None:
    """PostgreSQL: a transaction that announces its commit (bulk.commit_with_inserts) has
    COMMIT sent with its INSERTs only when nothing else waits to be written; an UPDATE
    still pending goes first, in the same transaction (the rows share PostgreSQL's xmin)."""
    if services.db.dialect != "postgresql":
        pytest.skip("PostgreSQL: SQLite has no round trip to save")
    now = clock.now()
    with services.db.transaction() as s:
        ticket = Ticket(intent="access", intents=["access"], status="received", channel="email", requester="ann@example.org",
                        language="en", received_at=now, due_at=now + timedelta(days=30), updated_at=now)
        s.add(ticket)
        s.flush()
        ticket_id = ticket.id
    with services.db.transaction() as s:
        changed = s.get(Ticket, ticket_id)
        assert changed is not None
        changed.status = "triage"  # an UPDATE the unit of work writes at the commit's flush
        entry_id = audit.record(s, "status_changed", ticket_id=ticket_id).id  # a row the bulk writer INSERTs
        bulk.commit_with_inserts(s)
    with services.db.transaction() as s:
        ticket_xmin = s.scalar(text("SELECT xmin::text FROM tickets WHERE id = :i"), {"i": ticket_id})
        entry_xmin = s.scalar(text("SELECT xmin::text FROM audit WHERE id = :i"), {"i": entry_id})
        assert s.scalar(select(Ticket.status).where(Ticket.id == ticket_id)) == "triage"
    assert ticket_xmin == entry_xmin  # one transaction, not a COMMIT and then the UPDATE


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.one_of(st.none(), st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))),
)
def test_a_datetime_the_bulk_writer_stores_in_sqlite_is_exactly_what_sqlalchemy_stores(moment: datetime, tz: timezone | None) -> None:
    """The bulk writer converts UTCDateTime values for SQLite itself (store.bulk.sqlite_utc_text);
    the text must be SQLAlchemy's to the character, or reads and comparisons would break."""
    from sqlalchemy.dialects import sqlite

    from privbot.store.bulk import sqlite_utc_text
    from privbot.store.models import UTCDateTime

    value = moment.replace(tzinfo=tz)
    dialect = sqlite.dialect()
    sqlalchemys = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert sqlalchemys is not None
    assert sqlite_utc_text(value) == sqlalchemys(value)
    assert sqlite_utc_text(None) is None
