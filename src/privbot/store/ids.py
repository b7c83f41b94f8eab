"""Primary keys handed out before the INSERT, so a transaction needs one flush, not ten.

Why this module exists: a new ticket's reference (``PRIV-000042``) goes into the subject
of its acknowledgement, and the audit trail names the rows it is about, so the intake
used to flush the session after each new row just to learn its id — three or four
flushes and a dozen round trips per message, most of the pipeline's cost.  With the id
known at once, everything a message causes is written by the single flush at commit,
one statement per table (:mod:`privbot.store.bulk`).

Where the ids come from:

* **SQLite**: ``max(id) + 1`` and counting up — exactly the rowid SQLite would have
  picked.  Safe because every transaction starts with ``BEGIN IMMEDIATE``
  (:mod:`privbot.store.db`): no other writer can insert while this one holds the lock.
* **PostgreSQL**: the column's own sequence (``nextval``), fetched a few at a time in
  one round trip; an id fetched and not used is a gap, as after any rolled-back INSERT.
  Tickets take their ids one at a time, so their references stay dense, except that a
  group of new requests takes as many as it will open, counted by the database in the
  group's first round trip (:func:`privbot.intake.receive_emails`, :func:`provide`).

Every new row of these tables gets its id from here (:mod:`privbot.store.bulk` fills in
any the code did not ask for, just before it writes them), so on SQLite the counter and
the database never disagree within a transaction.  Nothing else may insert into these
tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from privbot.store.models import AuditEntry, Base, Challenge, Draft, Message, OutboxItem, Ticket

#: the tables whose ids are handed out here (the rows one intake writes)
ALLOCATED: tuple[type[Base], ...] = (Ticket, Message, Draft, OutboxItem, AuditEntry, Challenge)
_TABLES: tuple[str, ...] = tuple(cls.__table__.name for cls in ALLOCATED)  # type: ignore[attr-defined]
_KEY = "privbot.ids"
_MAX_IDS = select(*(select(func.max(cls.id)).scalar_subquery() for cls in ALLOCATED))  # type: ignore[attr-defined]
#: PostgreSQL: ids fetched per round trip, growing to this many as a transaction uses more
_MAX_BLOCK = 64
_DENSE = {"tickets"}  # references are read by people: no gaps from over-fetching


class _Counters:
    """One transaction's next free ids, per table."""

    def __init__(self, transaction: object) -> None:
        self.transaction = transaction
        self.free: dict[str, list[int]] = {}  # table -> ids fetched and not yet used (PG)
        self.next: dict[str, int] = {}  # table -> next id (SQLite)
        self.block: dict[str, int] = {}
        self.prefetched = False  # PG: the first blocks of the ordinary tables are fetched
        self.postgresql = False


def _counters(session: Session) -> _Counters:
    tx = session.get_transaction()
    if tx is None:  # not begun yet: begin it, as the INSERT would have
        session.connection()
        tx = session.get_transaction()
    counters = session.info.get(_KEY)
    if not isinstance(counters, _Counters) or counters.transaction is not tx:
        counters = _Counters(tx)
        counters.postgresql = session.get_bind().dialect.name == "postgresql"
        session.info[_KEY] = counters
    return counters


def next_id(session: Session, table: str) -> int:
    """A fresh primary key for one new row of ``table``, valid in this transaction."""
    counters = _counters(session)
    if counters.postgresql:
        free = counters.free.setdefault(table, [])
        if not free:
            _fetch(session, counters, table)
        return free.pop(0)
    if not counters.next:  # the first new row of this transaction: one query for all tables
        row = session.connection().execute(_MAX_IDS).one()  # Core: no ORM round, no autoflush
        counters.next = {name: (value or 0) + 1 for name, value in zip(_TABLES, row, strict=True)}
    nxt = counters.next[table]
    counters.next[table] = nxt + 1
    return nxt


def _fetch(session: Session, counters: _Counters, table: str) -> None:
    """PostgreSQL: more ids from the sequences, in one round trip.

    The first time a transaction needs an id of a table that is neither dense nor the
    audit trail, a block is fetched for each such table at once (a new ticket's message,
    draft, outbox row and challenge follow at once).  Audit ids are fetched only when
    asked for, which is under the audit lock (audit.record): the chain's order is the
    order of its ids, so no transaction may hold audit ids from before it got the lock."""
    if counters.prefetched or table == "audit":
        wanted = {table: 1 if table in _DENSE else min(counters.block.get(table, 4) * 2, _MAX_BLOCK)}
    else:
        wanted = {name: _FIRST_BLOCK for name in _TABLES if name not in _DENSE and name != "audit"}
        if table in _DENSE:
            wanted[table] = 1
        counters.prefetched = True
    counters.block.update(wanted)
    # On the connection: asking for ids must not flush (write what waits for them).
    conn = session.connection()
    if len(wanted) == 1:
        rows = conn.execute(_NEXTVAL, {"name": table, "n": wanted[table]})
    else:
        rows = conn.execute(_NEXTVALS, {"names": list(wanted), "counts": list(wanted.values())})
    _keep(counters, rows)


def _keep(counters: _Counters, rows: Any) -> None:
    for name, value in sorted(rows, key=lambda r: r[1]):
        counters.free.setdefault(name, []).append(value)


#: one table's sequence, ``n`` values (the sequence is named as PostgreSQL names a
#: serial column's: ``<table>_id_seq``, in the schema the table is found in)
_NEXTVAL = text("SELECT CAST(:name AS text), nextval(CAST(CAST(:name AS text) || '_id_seq' AS regclass)) FROM generate_series(1, :n)")
#: each table's sequence, ``counts[i]`` values for ``names[i]``
_NEXTVALS = text(
    "SELECT t.name, nextval(CAST(t.name || '_id_seq' AS regclass)) "
    "FROM unnest(CAST(:names AS text[]), CAST(:counts AS int[])) AS t(name, n), generate_series(1, t.n)"
)
_FIRST_BLOCK = 8


def first_block(counts: dict[str, int]) -> tuple[Any, dict[str, Any]]:
    """PostgreSQL: the query fetching a transaction's first ids, ``counts[table]`` of each
    table (at least a usual block of the ordinary ones), for a caller that sends it in a
    round trip with other queries and hands the rows to :func:`provide`.  Dense tables
    (tickets) and the audit trail get exactly what is asked; audit ids only when the
    query runs after the audit lock (the same round trip may take it first)."""
    wanted = {name: max(_FIRST_BLOCK, counts.get(name, 0)) for name in _TABLES if name not in _DENSE and name != "audit"}
    wanted.update({name: n for name, n in counts.items() if (name in _DENSE or name == "audit") and n})
    return _NEXTVALS, {"names": list(wanted), "counts": list(wanted.values())}


def provide(session: Session, rows: Any) -> None:
    """Ids the caller fetched with :func:`first_block` (or any ``(table, id)`` rows from the
    sequences): handed out before any more are fetched."""
    counters = _counters(session)
    _keep(counters, rows)
    for name, values in counters.free.items():
        counters.block[name] = max(counters.block.get(name, 0), len(values))
    counters.prefetched = True


def assign(session: Session, obj: Any) -> int:
    """Give the pending ``obj`` its id now (if it has none) and return it."""
    values = obj.__dict__
    given = values.get("id")
    if given is None:
        # Into place, as Base.new_row puts columns: a pending row has no history to
        # keep, and the bulk writer reads its values from there (12 ids a request).
        given = values["id"] = next_id(session, obj.__table__.name)
    return int(given)
