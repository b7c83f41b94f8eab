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
from privbot.store import ids
from privbot.store.models import AuditEntry

GENESIS = "0" * 64
_LOCK = text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))")
_TAIL_HASH = select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)
_AUDIT_LOCK = 0x70726976  # "priv"


def record(session: Session, action: str, *, actor: str = "privbot", ticket_id: int | None = None, **detail: Any) -> AuditEntry:
    """Append one entry.

    Concurrent writers must not both link to the same tail.  On SQLite every write
    transaction is already serial (BEGIN IMMEDIATE); on PostgreSQL a transaction-scoped
    advisory lock serialises appends, and the unique ``prev_hash`` turns any fork that
    slipped through into an error instead of a silent branch.

    The entry is added, not flushed: it reaches the database with the caller's next
    flush (at the latest, the commit).  Its id is taken at once, under the lock
    (:mod:`privbot.store.ids`): ids decide the chain's order (:func:`verify_chain` reads
    by id), so the order of the INSERTs in a flush does not matter.  Within one
    transaction the tail is remembered after the first append (see :func:`_cached_tail`),
    so later appends skip both the lock, already held until commit, and the SELECT of
    the tail."""
    tail = _cached_tail(session)
    if tail is None:
        if session.get_bind().dialect.name == "postgresql":
            # Keyed by schema too: deployments (and test runs) in other schemas of the same
            # database keep chains of their own and must not queue behind this one.
            session.connection().execute(_LOCK, {"k": _AUDIT_LOCK})
        # On the connection (no autoflush): the tail is in the database, nothing pending changes it.
        prev_hash = session.connection().execute(_TAIL_HASH).scalar() or GENESIS
    else:
        prev_hash = tail.hash
    entry = AuditEntry(
        ticket_id=ticket_id,
        at=clock.now(),
        actor=actor,
        action=action,
        detail=detail,
        prev_hash=prev_hash,
    )
    entry.hash = hashlib.sha256(entry.canonical().encode()).hexdigest()
    entry.id = ids.next_id(session, "audit")
    session.add(entry)
    session.info[_TAIL] = (session.get_transaction(), entry)
    return entry


_TAIL = "privbot.audit.tail"


def _cached_tail(session: Session) -> AuditEntry | None:
    """The entry this transaction appended last, if it is still this transaction's.

    Valid only inside the same root transaction (a session reused for a second
    transaction asks the database again: another process may have appended in between),
    and only while the entry is still in the session (a rolled-back savepoint expunges
    what it added, so a discarded entry is never linked to)."""
    cached = session.info.get(_TAIL)
    if cached is None:
        return None
    tx, entry = cached
    if tx is not session.get_transaction() or tx is None or not tx.is_active or entry not in session:
        session.info.pop(_TAIL, None)
        return None
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
