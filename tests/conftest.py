"""Fixtures that start real things: databases (SQLite and PostgreSQL), an SMTP server.

The PostgreSQL at 127.0.0.1:5432 (database ``test``) is shared, so each test gets a
schema of its own and drops it afterwards; tests may run in parallel processes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from privbot import clock
from privbot.app import Services, build_services
from privbot.config import Settings
from tests.dovecot import dovecot, imap_account  # noqa: F401  (a real IMAP server)
from tests.support import free_port

PG_BASE = os.environ.get("PRIVBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_BASE)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


PG_OK = _pg_available()


@pytest.fixture(autouse=True)
def _real_clock_after_each_test() -> Iterator[None]:
    yield
    clock.unfreeze()


@pytest.fixture
def frozen_clock() -> Iterator[object]:
    """The clock stopped at a known instant; ``clock.fast_forward(days=...)`` moves it."""
    from datetime import UTC, datetime

    clock.freeze(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    yield clock
    clock.unfreeze()


def pg_schema_url() -> Iterator[str]:
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on both backends."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'privbot.db'}"
        return
    if not PG_OK:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    yield from pg_schema_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'privbot.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not PG_OK:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    yield from pg_schema_url()


def make_settings(data_dir: Path, db_url: str, **overrides: object) -> Settings:
    s = Settings(
        data_dir=data_dir,
        database_url=db_url,
        privacy_address="privacy@example.com",
        smtp_listen="",
        web_listen="",
    )
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "var", db_url)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = build_services(settings)
    yield svc
    svc.db.dispose()


@pytest.fixture
def smtp_port(services: Services) -> Iterator[int]:
    """A real aiosmtpd server in front of the pipeline, on a free loopback port."""
    from privbot.channels.smtp_in import controller

    port = free_port()
    ctl = controller(services, "127.0.0.1", port)
    ctl.start()
    yield port
    ctl.stop()
