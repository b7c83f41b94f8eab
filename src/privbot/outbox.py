"""The delivery worker: sends what the outbox holds, once, with a record of each try.

Rows are claimed with a conditional UPDATE (``pending`` → ``sending``), so several
privbot processes can run this worker against one database and no row is sent by two
of them.  Every attempt is recorded before the result is known; a failure is retried
with exponential backoff; a claim left by a crashed process expires and is retried,
with the earlier attempt on record.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update

from privbot import audit, clock
from privbot.channels.mail_out import MaildirTransport, SMTPRelayTransport, Transport
from privbot.config import Settings
from privbot.logs import redact
from privbot.store.db import Database
from privbot.store.models import DeliveryAttempt, OutboxItem

log = logging.getLogger(__name__)

#: seconds before the n-th retry: 30 s, 1 min, 2 min ... capped at 1 h
BASE_DELAY = 30.0
MAX_DELAY = 3600.0
#: after this many failed tries the item is marked failed and staff must look
MAX_ATTEMPTS = 12
#: a claim older than this belongs to a process that died mid-send
CLAIM_TIMEOUT = timedelta(minutes=5)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_DELAY, BASE_DELAY * 2 ** max(0, attempts - 1)))


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    gave_up: int = 0

    def __str__(self) -> str:
        return f"outbox: {self.sent} sent, {self.failed} failed (will retry), {self.gave_up} given up"


def default_transports(settings: Settings) -> dict[str, Transport]:
    relay = settings.relay_endpoint
    mail: Transport
    if relay:
        mail = SMTPRelayTransport(
            relay[0], relay[1], sender=settings.privacy_address, user=settings.smtp_relay_user,
            password=settings.smtp_relay_password, starttls=settings.smtp_relay_starttls,
        )
    else:
        mail = MaildirTransport(settings.outbox_maildir)
    return {"email": mail}


def deliver_due(db: Database, transports: Mapping[str, Transport], *, limit: int = 100) -> DeliveryReport:
    """Deliver every outbox item that is due now; returns what happened."""
    report = DeliveryReport()
    now = clock.now()
    with db.transaction() as session:
        due = session.scalars(
            select(OutboxItem.id)
            .where(
                OutboxItem.channel.in_(list(transports)),
                or_(
                    (OutboxItem.status == "pending") & (OutboxItem.next_attempt_at <= now),
                    (OutboxItem.status == "sending") & (OutboxItem.next_attempt_at <= now - CLAIM_TIMEOUT),
                ),
            )
            .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
            .limit(limit)
        ).all()
    for item_id in due:
        _deliver_one(db, transports, item_id, report)
    return report


def _claim(db: Database, item_id: int) -> OutboxItem | None:
    now = clock.now()
    with db.transaction() as session:
        claimed = session.execute(
            update(OutboxItem)
            .where(
                OutboxItem.id == item_id,
                or_(
                    (OutboxItem.status == "pending") & (OutboxItem.next_attempt_at <= now),
                    (OutboxItem.status == "sending") & (OutboxItem.next_attempt_at <= now - CLAIM_TIMEOUT),
                ),
            )
            .values(status="sending", claimed_by=WORKER_ID, next_attempt_at=now, attempts=OutboxItem.attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return None  # another worker has it
        item = session.get(OutboxItem, item_id)
        assert item is not None
        session.add(DeliveryAttempt(outbox_id=item_id, at=now, ok=False, error="in progress"))
        session.expunge(item)
        return item


def _deliver_one(db: Database, transports: Mapping[str, Transport], item_id: int, report: DeliveryReport) -> None:
    item = _claim(db, item_id)
    if item is None:
        return
    error: str | None = None
    try:
        transports[item.channel].send(item.recipient, item.payload)
    except Exception as exc:  # any transport fault is retried, never lost
        # A relay's refusal usually quotes the recipient ("550 5.1.1 <alice@…>: unknown
        # user"); the error is kept in the attempts, on the item and — when it is given
        # up — in the audit trail, which is never purged: so it is kept masked, as logs are.
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
    now = clock.now()
    with db.transaction() as session:
        row = session.get(OutboxItem, item_id)
        assert row is not None
        attempt = session.scalars(
            select(DeliveryAttempt).where(DeliveryAttempt.outbox_id == item_id).order_by(DeliveryAttempt.id.desc()).limit(1)
        ).first()
        if attempt is not None:
            attempt.ok = error is None
            attempt.error = error
            attempt.at = now
        if error is None:
            row.status, row.sent_at, row.last_error = "sent", now, None
            report.sent += 1
            audit.record(session, "delivered", ticket_id=row.ticket_id, outbox=row.id, channel=row.channel)
        elif row.attempts >= MAX_ATTEMPTS:
            row.status, row.last_error = "failed", error
            report.gave_up += 1
            log.error("outbox item %s given up after %s attempts: %s", row.id, row.attempts, error)
            audit.record(session, "delivery_failed", ticket_id=row.ticket_id, outbox=row.id, attempts=row.attempts, error=error)
        else:
            row.status, row.last_error = "pending", error
            row.next_attempt_at = now + backoff(row.attempts)
            report.failed += 1
            log.warning("outbox item %s attempt %s failed, retry at %s: %s", row.id, row.attempts, row.next_attempt_at.isoformat(), error)


