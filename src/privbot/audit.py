"""Append-only, hash-chained audit trail.

Each entry carries the hash of the one before it, so an entry edited or removed in the
database breaks the chain at that point and :func:`verify_chain` names it.  Details
hold references and decisions, never message bodies or one-time codes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from privbot import clock
from privbot.store.models import AuditEntry

GENESIS = "0" * 64
_AUDIT_LOCK = 0x70726976  # "priv"


def record(session: Session, action: str, *, actor: str = "privbot", ticket_id: int | None = None, **detail: Any) -> AuditEntry:
    """Append one entry.

    Concurrent writers must not both link to the same tail.  On SQLite every write
    transaction is already serial (BEGIN IMMEDIATE); on PostgreSQL a transaction-scoped
    advisory lock serialises appends, and the unique ``prev_hash`` turns any fork that
    slipped through into an error instead of a silent branch."""
    if session.get_bind().dialect.name == "postgresql":
        # Keyed by schema too: deployments (and test runs) in other schemas of the same
        # database keep chains of their own and must not queue behind this one.
        session.execute(text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"), {"k": _AUDIT_LOCK})
    last = session.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
    entry = AuditEntry(
        ticket_id=ticket_id,
        at=clock.now(),
        actor=actor,
        action=action,
        detail=detail,
        prev_hash=last.hash if last else GENESIS,
    )
    entry.hash = hashlib.sha256(entry.canonical().encode()).hexdigest()
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    reason: str = ""


def verify_chain(session: Session) -> ChainReport:
    prev = GENESIS
    count = 0
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        count += 1
        if entry.prev_hash != prev:
            return ChainReport(False, count, entry.id, "link to the previous entry is broken (an entry was removed or reordered)")
        if hashlib.sha256(entry.canonical().encode()).hexdigest() != entry.hash:
            return ChainReport(False, count, entry.id, "entry content does not match its hash (it was altered)")
        prev = entry.hash
    return ChainReport(True, count)
