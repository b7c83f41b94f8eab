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
from privbot.store.bulk import add_new
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
    prev_hash = _cached_tail(session)
    if prev_hash is None:
        prev_hash = _take_chain(session)
    entry = AuditEntry.new_row(
        ticket_id=ticket_id,
        at=clock.now(),
        actor=actor,
        action=action,
        detail=detail,
        prev_hash=prev_hash,
    )
    entry.hash = hashlib.sha256(entry.canonical().encode()).hexdigest()
    entry.id = ids.next_id(session, "audit")
    add_new(session, entry)
    session.info[_TAIL] = (session.get_transaction(), entry.hash, entry)
    return entry


def taking_queries(postgresql: bool) -> list[tuple[Any, dict[str, Any]]]:
    """The queries that take the chain for the rest of a transaction, before anything
    else (one that will certainly append: a group of incoming messages): on PostgreSQL
    the lock, then the tail; on SQLite, whose ``BEGIN IMMEDIATE`` is the lock, the tail.
    The caller asks them together with queries of its own
    (:func:`privbot.store.bulk.read_batch`; on PostgreSQL queries sent after these run
    holding the lock, so they may fetch audit ids) and hands the last one's rows, the
    tail, to :func:`taken`."""
    return [(_LOCK, {"k": _AUDIT_LOCK}), (_TAIL_HASH, {})] if postgresql else [(_TAIL_HASH, {})]


def taken(session: Session, tail_rows: list[Any]) -> None:
    """The chain was taken by :func:`taking_queries` in this transaction: its tail."""
    session.info[_TAIL] = (session.get_transaction(), tail_rows[0][0] if tail_rows else GENESIS, None)


def _take_chain(session: Session) -> str:
    """Lock the chain (PostgreSQL) and return the hash of its last entry."""
    if session.get_bind().dialect.name == "postgresql":
        # Keyed by schema too: deployments (and test runs) in other schemas of the same
        # database keep chains of their own and must not queue behind this one.
        session.connection().execute(_LOCK, {"k": _AUDIT_LOCK})
    # On the connection (no autoflush): the tail is in the database, nothing pending changes it.
    return session.connection().execute(_TAIL_HASH).scalar() or GENESIS


_TAIL = "privbot.audit.tail"


def _cached_tail(session: Session) -> str | None:
    """The hash this transaction's next entry links to, if the transaction holds the chain.

    Valid only inside the same root transaction (a session reused for a second
    transaction asks the database again: another process may have appended in between),
    and only while the entry it appended last is still in the session (a rolled-back
    savepoint expunges what it added, so a discarded entry is never linked to)."""
    cached = session.info.get(_TAIL)
    if cached is None:
        return None
    tx, tail_hash, entry = cached
    if tx is not session.get_transaction() or tx is None or not tx.is_active or (entry is not None and entry not in session):
        session.info.pop(_TAIL, None)
        return None
    return str(tail_hash)


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
