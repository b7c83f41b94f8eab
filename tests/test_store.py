"""The store on both backends: migrations, the audit chain, the outbox worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, update

from privbot import audit, clock, outbox
from privbot.app import Services
from privbot.store.models import AuditEntry, Base, DeliveryAttempt, OutboxItem


def test_migrations_create_exactly_the_models(services: Services) -> None:
    with services.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrating_twice_changes_nothing(services: Services) -> None:
    services.db.migrate()
    assert services.db.is_current()


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
