"""New rows written by one INSERT per table, outside the ORM's unit of work.

Why this module exists: the intake adds six or seven new rows per message (the ticket,
the message, a challenge, the draft, the outbox row, its copy in the thread, audit
entries).  The unit of work spent more time deciding how to write them — per-object
bookkeeping, dependency sorting, one statement per table per flush — than the database
spent writing them: most of the pipeline's cost.  Their ids are already known
(:mod:`privbot.store.ids`), so nothing needs to come back from the database, and just
before each flush this hook writes every new row of those tables itself, one
statement per table in foreign-key order, straight to the driver (SQLite: an
``executemany``; PostgreSQL: one multi-row INSERT each, all of them in one round trip;
SQLAlchemy's statement events do not see them), then hands the objects back to
the session as persistent rows, exactly as if the ORM had inserted them.  Later changes
to them (``draft.status = "sent"``) are ordinary UPDATEs; everything else — updates,
deletes, new rows of other tables — still goes through the unit of work.

It also asks a group's first, independent queries of the driver at once
(:func:`read_batch`: on PostgreSQL in one round trip).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, event
from sqlalchemy.sql import Executable
from sqlalchemy.orm import Session
from sqlalchemy.orm.base import instance_state

from privbot.store import ids
from privbot.store.models import AuditEntry, Challenge, Draft, Message, OutboxItem, Ticket, UTCDateTime

#: foreign-key order: a row is written after the rows it refers to
ORDER: tuple[type, ...] = (Ticket, Draft, Message, Challenge, OutboxItem, AuditEntry)
assert set(ORDER) == set(ids.ALLOCATED)


class _Plan:
    """How one class's objects become INSERT parameters (worked out once per class)."""

    def __init__(self, cls: type) -> None:
        mapper = cls.__mapper__  # type: ignore[attr-defined]
        self.table = cls.__table__  # type: ignore[attr-defined]
        #: (attribute, column key, default maker or None)
        self.columns: list[tuple[str, str, Callable[[], Any] | None]] = []
        for prop in mapper.column_attrs:
            col = prop.columns[0]
            self.columns.append((prop.key, col.key, _default(col)))
        #: many-to-one relationships: (attribute, [(local attribute, remote attribute)])
        self.parents: list[tuple[str, list[tuple[str, str]]]] = []
        #: one-to-many relationships: (attribute, [(remote attribute on child, local attribute)])
        self.children: list[tuple[str, list[tuple[str, str]]]] = []
        self._statements: dict[str, tuple[str, list[str], list[Callable[[Any], Any] | None], bool]] = {}
        #: per dialect: (attribute, default maker, bind conversion) in the statement's order
        self._writers: dict[str, list[tuple[str, Callable[[], Any] | None, Callable[[Any], Any] | None]]] = {}
        self._multirow: dict[tuple[str, int], str] = {}
        for rel in mapper.relationships:
            pairs = [(mapper.get_property_by_column(local).key, rel.mapper.get_property_by_column(remote).key)
                     for local, remote in rel.local_remote_pairs]
            if rel.direction.name == "MANYTOONE":
                self.parents.append((rel.key, pairs))
            elif rel.direction.name == "ONETOMANY":
                self.children.append((rel.key, [(r, l) for l, r in pairs]))

    def statement(self, dialect: Any) -> tuple[str, list[str], list[Callable[[Any], Any] | None], bool]:
        """The INSERT as the driver takes it, with each column's bind conversion
        (worked out once per dialect: compiling a statement per write cost more than
        the write)."""
        cached = self._statements.get(dialect.name)
        if cached is None:
            compiled = self.table.insert().compile(dialect=dialect)
            keys = list(compiled.positiontup) if compiled.positional else [c.key for c in self.table.columns]
            procs = [
                sqlite_utc_text if dialect.name == "sqlite" and isinstance(self.table.c[k].type, UTCDateTime)
                else self.table.c[k].type.dialect_impl(dialect).bind_processor(dialect)
                for k in keys
            ]
            cached = self._statements[dialect.name] = (compiled.string, keys, procs, bool(compiled.positional))
        return cached

    def multirow(self, dialect: Any, n: int) -> str:
        """PostgreSQL: one INSERT of ``n`` rows, with the server's own placeholders
        (``$1``…: the driver sends it as it is, without reading it for placeholders, which
        for a long statement it does on every call) and the parameters row after row in
        the order of :meth:`statement`'s keys."""
        key = (dialect.name, n)
        sql = self._multirow.get(key)
        if sql is None:
            _sql, keys, _procs, _positional = self.statement(dialect)
            quote = dialect.identifier_preparer
            width = len(keys)
            rows = ", ".join("(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(n))
            sql = self._multirow[key] = (
                f"INSERT INTO {quote.format_table(self.table)} ({', '.join(quote.quote(self.table.c[k].name) for k in keys)}) VALUES {rows}"
            )
        return sql

    def values(self, obj: Any, dialect: Any) -> list[Any]:
        """``obj``'s parameters, converted for the driver, in :meth:`statement`'s order."""
        writers = self._writers.get(dialect.name)
        if writers is None:
            _sql, keys, procs, _positional = self.statement(dialect)
            attr_of = {key: (attr, default) for attr, key, default in self.columns}
            writers = self._writers[dialect.name] = [(*attr_of[key], proc) for key, proc in zip(keys, procs, strict=True)]
        values = obj.__dict__
        # Keys the ORM would have copied from related objects at flush time.
        for rel, pairs in self.parents:
            parent = values.get(rel)
            if parent is not None:
                for local, remote in pairs:
                    if values.get(local) is None:
                        setattr(obj, local, getattr(parent, remote))
        out: list[Any] = []
        for attr, default, proc in writers:
            if attr in values:
                value = values[attr]
            else:
                # Loaded, as after an INSERT (no SELECT to read it back); into place, as
                # new_row puts columns: the row is pending and has no history to keep.
                value = values[attr] = default() if default is not None else None
            out.append(proc(value) if proc is not None else value)
        return out

    def adopt_children(self, obj: Any) -> None:
        """Children appended to a new object's collection get its id (as the flush would)."""
        for rel, pairs in self.children:
            for child in obj.__dict__.get(rel) or ():
                for child_attr, local in pairs:
                    if getattr(child, child_attr) is None:
                        setattr(child, child_attr, getattr(obj, local))


def sqlite_utc_text(value: datetime | None) -> str | None:
    """What SQLAlchemy stores in SQLite for a :class:`UTCDateTime`, in one step.

    Its conversion is two (to naive UTC, then a ``%``-format of seven fields), about
    2 µs, for a dozen datetimes a request; ``isoformat`` gives the same text in C
    (tests/test_store.py holds the two equal)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = value.replace(tzinfo=None).isoformat(" ")
    return text if value.microsecond else text + ".000000"


def _default(col: Any) -> Callable[[], Any] | None:
    default = col.default
    if default is None:
        return None
    if default.is_scalar:
        return lambda: default.arg
    if default.is_callable:
        return lambda: default.arg(None)  # SQLAlchemy wraps plain callables to take a context
    return None


_PLANS = {cls: _Plan(cls) for cls in ORDER}
#: each class's relationship attributes: a new object with none of them set has nothing to cascade
_RELATIONSHIPS = {cls: tuple(rel.key for rel in cls.__mapper__.relationships) for cls in ORDER}  # type: ignore[attr-defined]


def add_new(session: Session, obj: Any) -> None:
    """``session.add(obj)`` for a new row of the intake's tables, without the cascade.

    ``Session.add`` walks every relationship of the object's class looking for related
    objects to add with it (3-6 µs an object; the intake adds eight per message).  A row
    built with ``new_row`` and only foreign keys set has none, so it is put in the
    session's new objects directly — what ``add`` does for the object itself.  One with
    a related object set goes through ``add`` as usual."""
    rels = _RELATIONSHIPS.get(type(obj))
    values = obj.__dict__
    if rels is None or any(values.get(rel) is not None for rel in rels):
        session.add(obj)
        return
    state = instance_state(obj)
    state._orphaned_outside_of_session = False
    session._save_impl(state)


#: most parameters in one multi-row INSERT (PostgreSQL's protocol allows 65,535)
_MAX_PARAMS = 30_000


def write_new(session: Session) -> int:
    """INSERT every new row of the intake's tables now; return how many were written."""
    new = [obj for obj in session.new if type(obj) in _PLANS]
    if not new:
        return 0
    by_class: dict[type, list[Any]] = {cls: [] for cls in ORDER}
    for obj in new:
        ids.assign(session, obj)
        by_class[type(obj)].append(obj)
    for cls in ORDER:  # parents first, so children can copy their ids
        for obj in by_class[cls]:
            _PLANS[cls].adopt_children(obj)
    conn = session.connection()
    postgresql = conn.dialect.name == "postgresql"
    statements: list[tuple[str, Any]] = []
    for cls in ORDER:
        objs = by_class[cls]
        if objs:
            plan = _PLANS[cls]
            sql, keys, _procs, positional = plan.statement(conn.dialect)
            converted = [plan.values(obj, conn.dialect) for obj in objs]
            if postgresql:
                # One statement for all the rows (in chunks below the driver's parameter
                # limit): psycopg sends and reads back an executemany row by row, which
                # cost more client CPU than the server spent on the rows.
                per = max(1, _MAX_PARAMS // len(keys))
                for start in range(0, len(converted), per):
                    chunk = converted[start : start + per]
                    statements.append((plan.multirow(conn.dialect, len(chunk)), tuple(v for values in chunk for v in values)))
                continue
            params = [tuple(values) if positional else dict(zip(keys, values, strict=True)) for values in converted]
            statements.append((sql, params if len(params) > 1 else params[0]))
    if postgresql:
        if _commit_follows(session, by_class):
            statements.append(("COMMIT", ()))  # the commit under way sends nothing more
        _pipelined(conn, statements)
    else:
        _on_sqlite_cursor(conn, statements)
    # Now rows that exist: the same bookkeeping the unit of work does after its own
    # INSERTs (identity keys, committed attribute state, noted in the transaction so a
    # rollback makes them transient again) — without re-adding each object, whose
    # cascades cost more than the INSERTs.
    session._register_persistent({instance_state(obj) for obj in new})
    return len(new)


#: session.info key: the transaction whose commit may go with its INSERTs (see below)
COMMIT_WITH_INSERTS = "privbot.bulk.commit_with_inserts"


def commit_with_inserts(session: Session) -> None:
    """PostgreSQL: this transaction has done all it will do, and is about to commit: the
    flush of that commit may send COMMIT in the same round trip as the INSERTs (a
    group of incoming messages, whose commit is the wait every sender hears last).  The
    driver then finds the transaction ended and sends nothing when SQLAlchemy commits."""
    session.info[COMMIT_WITH_INSERTS] = session.get_transaction()


def _commit_follows(session: Session, by_class: dict[type, list[Any]]) -> bool:
    """Whether this flush is the commit :func:`commit_with_inserts` announced, with
    nothing to write but the rows here: an UPDATE or DELETE still to come, or another
    table's new row, must not land after the COMMIT."""
    announced = session.info.pop(COMMIT_WITH_INSERTS, None)
    if announced is None or announced is not session.get_transaction():
        return False
    written = sum(len(objs) for objs in by_class.values())
    return not session.dirty and not session.deleted and len(session.new) == written


def _pipelined(conn: Connection, statements: list[tuple[str, Any]]) -> None:
    """PostgreSQL: the multi-row INSERTs sent at once, one round trip for the lot.

    Nothing is read back from them, so none has to wait for the one before (psycopg's
    pipeline mode); the server still runs them in order, and an error in any — a
    delivery another process recorded first — is raised here, as SQLAlchemy raises it.
    They go straight to the driver (a raw cursor: ``$n`` placeholders), so SQLAlchemy's
    statement events do not see them."""
    import psycopg

    driver = conn.connection.driver_connection
    sql, params = statements[0]  # named in the error even if entering the pipeline fails
    try:
        with driver.pipeline(), psycopg.RawCursor(driver) as cursor:  # type: ignore[union-attr, arg-type]
            for sql, params in statements:
                cursor.execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:  # raised at the pipeline's end: not yet wrapped
        conn._handle_dbapi_exception(exc, sql, params, None, None)  # raises IntegrityError, OperationalError, ...


def _on_sqlite_cursor(conn: Connection, statements: list[tuple[str, Any]]) -> None:
    """SQLite: the INSERTs on the driver's cursor.  SQLAlchemy's execution context around
    each statement (events, context, result set-up) cost more than writing a row to a
    local file; errors are raised as SQLAlchemy raises them."""
    driver = conn.connection.driver_connection
    cursor = driver.cursor()  # type: ignore[union-attr]
    sql, params = statements[0]
    try:
        for sql, params in statements:
            if isinstance(params, list):
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, sql, params, None, None)  # raises IntegrityError, OperationalError, ...
    finally:
        cursor.close()


def read_batch(conn: Connection, queries: list[tuple[Executable, dict[str, Any]]]) -> list[list[Row[Any]]]:
    """Several queries that do not depend on each other's answers, each one's rows back.

    For a transaction whose first questions are known at once (a group of incoming
    messages: take the audit lock, read the chain's tail, look up the deliveries, fetch
    ids).  PostgreSQL: sent at once, one round trip — under load every wait for an
    answer also costs the caller its turn for a core, and a group's four round trips
    used to cost more than its INSERTs; the server runs them in order, so a query sent
    after a lock runs holding it.  SQLite: one after the other on the driver's cursor,
    without SQLAlchemy's execution context, which cost more than the queries.  Each
    query is compiled once; its parameters go to the driver as they are (plain values:
    text, numbers and, on PostgreSQL, lists of them).  Errors are raised as SQLAlchemy
    raises them.  Statement events (echo) do not see these queries."""
    driver = conn.connection.driver_connection
    compiled = [_compiled_query(conn.dialect, query, params) for query, params in queries]
    sql, params = compiled[0]
    if conn.dialect.name != "postgresql":
        try:
            rows: list[list[Any]] = []
            for sql, params in compiled:
                cursor = driver.execute(sql, params)  # type: ignore[union-attr]
                rows.append(cursor.fetchall())
                cursor.close()
            return rows
        except conn.dialect.loaded_dbapi.Error as exc:
            conn._handle_dbapi_exception(exc, sql, params, None, None)
            raise  # not reached: the line above raises
    cursors: list[Any] = []
    try:
        with driver.pipeline():  # type: ignore[union-attr]
            for sql, params in compiled:
                cursor = driver.cursor()  # type: ignore[union-attr]
                cursors.append(cursor)
                cursor.execute(sql, params)
        return [cursor.fetchall() for cursor in cursors]
    except conn.dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, sql, params, None, None)
        raise  # not reached: the line above raises
    finally:
        for cursor in cursors:
            cursor.close()


#: (id of the query, dialect) -> (the query, kept so that its id stays its own; SQL; its
#: own values; the order of its positional parameters, or None when they are named)
_COMPILED: dict[tuple[int, str], tuple[Executable, str, dict[str, Any], tuple[str, ...] | None]] = {}


def _compiled_query(dialect: Any, query: Executable, params: dict[str, Any]) -> tuple[str, Any]:
    cached = _COMPILED.get((id(query), dialect.name))
    if cached is None:
        compiled = query.compile(dialect=dialect)
        order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None
        cached = _COMPILED[(id(query), dialect.name)] = (query, str(compiled), dict(compiled.params), order)
    _query, sql, defaults, order = cached
    values = {**defaults, **params}  # the statement's own values (a LIMIT) and the caller's
    return sql, tuple(values[name] for name in order) if order is not None else values


@event.listens_for(Session, "before_flush")
def _write_new_rows(session: Session, _ctx: Any, _instances: Any) -> None:
    write_new(session)
