"""The database handle: engine, sessions, ``transaction()`` and migrations.

SQLite is the default so that ``privbot run`` works on a bare machine; it runs in WAL
mode and every transaction starts with ``BEGIN IMMEDIATE`` so that two writers queue
instead of failing half-way.  PostgreSQL is chosen by URL and is what several privbot
processes share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from privbot.store import bulk as _bulk  # noqa: F401  (installs the hook that writes new rows: store.bulk)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock key held while migrating (an arbitrary constant)
_MIGRATION_LOCK = 0x707269766274


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened."""


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_pragmas(self.engine)
        else:
            _ping_when_idle(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back on any exception."""
        session = self._sessions()
        try:
            with session.begin():
                yield session
        except OperationalError as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
        finally:
            session.close()

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        cfg = alembic_config()
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Several nodes starting at once on an empty database would each create
                    # the tables and all but one fail; one at a time, the later ones find
                    # the schema current.  Released when this transaction ends.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc

    def is_current(self) -> bool:
        try:
            return "alembic_version" in inspect(self.engine).get_table_names()
        except OperationalError as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


#: a pooled connection unused for this long is tested before it is handed out
IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use only when it has been idle.

    A server restart or a dropped connection is noticed while the connection sits in
    the pool, so that is when it is tested (the pool then opens a new one).  Testing
    it at every checkout — ``pool_pre_ping`` — cost a round trip per transaction, which
    under load was a tenth of the intake's time; a connection that dies while in use
    fails its transaction (:class:`DatabaseUnavailable`: the sender retries) and
    SQLAlchemy then discards the pool's other connections of that age."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["privbot.idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("privbot.idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # new, or just used
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool retries with a fresh connection
            raise DisconnectionError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def open_database(url: str, *, migrate: bool = True) -> Database:
    db = Database(url)
    if migrate:
        db.migrate()
    return db
