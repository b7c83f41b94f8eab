"""The directory of known customer accounts, used by identity verification.

Why this module exists: before privbot drafts an answer that reveals or destroys data it
must know which account the proven mailbox belongs to.  Accounts come from two places,
consulted in order:

1. the **imported directory** (``privbot accounts import FILE.csv``: columns ``email``,
   ``name``, ``phone``, ``account_id``), kept in the ``accounts`` table;
2. a **SQL connector** to the company's own database: ``PRIVBOT_ACCOUNTS_SQL_URL`` (any
   SQLAlchemy URL) and ``PRIVBOT_ACCOUNTS_SQL_QUERY`` (a query with an ``:email``
   parameter returning ``email``, ``name``, ``phone``, ``account_id``), read-only.

Addresses are normalised the way the mail parser normalises a sender (validated by
email-validator, then lowercased whole), so ``Ann@Example.ORG`` in the CSV matches mail
from ``ann@example.org``.  Lookups are only ever made by the *requester's* address —
never by details a message claims — so nobody reaches an account by naming it.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from privbot.config import Settings
from privbot.logs import mask
from privbot.store.models import Account

log = logging.getLogger(__name__)

COLUMNS = ("email", "name", "phone", "account_id")
#: bounds so a wrong file (a database dump, a binary) fails fast instead of filling the table
MAX_FIELD = {"email": 320, "name": 200, "phone": 64, "account_id": 200}


class AccountFileError(Exception):
    """The file as a whole cannot be imported (not CSV, no ``email`` column...): exit 2."""


def normalise_email(address: str, *, check_deliverability: bool = False) -> str:
    """The canonical form of an address, or raise :class:`EmailNotValidError`.

    ``test_environment`` admits the reserved ``example.org`` style domains tests and
    demos use; syntax is what matters here, since a code proves the mailbox anyway.
    """
    result = validate_email(
        (address or "").strip(), check_deliverability=check_deliverability, test_environment=not check_deliverability
    )
    return result.normalized.lower()


def _safe_normalise(settings: Settings, address: str) -> str:
    try:
        return normalise_email(address, check_deliverability=False)
    except EmailNotValidError:
        return ""


# ---------------------------------------------------------------------------- lookups


def lookup_account(session: Session, settings: Settings, address: str) -> Account | None:
    """The account whose address is ``address``: the imported directory, then SQL.

    An account found by the connector is returned as a transient :class:`Account` (not
    added to the session): the company's database stays the source of truth for it.
    """
    email = _safe_normalise(settings, address)
    if not email:
        return None
    found = session.scalar(select(Account).where(Account.email == email))
    if found is not None:
        return found
    if settings.accounts_sql_url:
        return SqlDirectory.for_settings(settings).lookup(email)
    return None


@dataclass
class SqlDirectory:
    """Read-only lookups in the company's own database with the configured query."""

    url: str
    query: str
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_engine(self.url, pool_pre_ping=True)

    @classmethod
    def for_settings(cls, settings: Settings) -> SqlDirectory:
        # One engine (and its pool) per URL and query per process, not one per lookup.
        key = (settings.accounts_sql_url, settings.accounts_sql_query)
        with _SQL_LOCK:
            if key not in _SQL_DIRECTORIES:
                _SQL_DIRECTORIES[key] = cls(*key)
            return _SQL_DIRECTORIES[key]

    def lookup(self, email: str) -> Account | None:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(text(self.query), {"email": email}).mappings().fetchmany(2)
        except SQLAlchemyError as exc:
            # The connector being down must not make intake fail: the draft says "no
            # account found" and waits for staff, who see this in the log and the audit.
            log.error("account connector failed looking up %s: %s", mask(email), type(exc).__name__)
            raise ConnectorUnavailable(type(exc).__name__) from None
        for row in rows:
            row_email = _safe_normalise_plain(str(row.get("email") or email))
            if row_email != email:  # a loose query (LIKE, case folding) must not match another mailbox
                continue
            return Account(
                email=email,
                name=str(row.get("name") or "")[:200],
                phone=str(row.get("phone") or "")[:64],
                account_id=str(row.get("account_id") or "")[:200],
            )
        return None

    def dispose(self) -> None:
        self.engine.dispose()


class ConnectorUnavailable(Exception):
    """The company's database could not be asked; the lookup result is unknown."""


_SQL_DIRECTORIES: dict[tuple[str, str], SqlDirectory] = {}
_SQL_LOCK = threading.Lock()


def _safe_normalise_plain(address: str) -> str:
    try:
        return normalise_email(address)
    except EmailNotValidError:
        return ""


# ---------------------------------------------------------------------------- CSV import


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    #: (line number, reason) for every row that was skipped
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.added + self.updated + self.unchanged


def read_rows(data: bytes, *, check_deliverability: bool = False) -> tuple[list[tuple[int, dict[str, str]]], list[tuple[int, str]]]:
    """Parse and validate the CSV; return good rows (with their line numbers) and bad ones.

    Raises :class:`AccountFileError` when the file as a whole is unusable.
    """
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AccountFileError(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in content:
        raise AccountFileError("not a CSV file (contains NUL bytes)")
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise AccountFileError(f"line 1: {exc}") from None
    if not header:
        raise AccountFileError("empty file; expected a header line: email,name,phone,account_id")
    names = [h.strip().lower() for h in header]
    if "email" not in names:
        raise AccountFileError(f"line 1: no 'email' column; expected a header line: {','.join(COLUMNS)}")
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise AccountFileError(f"line 1: unknown column {unknown[0]!r}; expected: {', '.join(COLUMNS)}")
    if len(set(names)) != len(names):
        raise AccountFileError("line 1: a column is named twice")

    good: list[tuple[int, dict[str, str]]] = []
    bad: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(names):
                bad.append((line, f"expected {len(names)} fields, found {len(fields)}"))
                continue
            row = {n: f.strip() for n, f in zip(names, fields)}
            too_long = [n for n, v in row.items() if len(v) > MAX_FIELD[n]]
            if too_long:
                bad.append((line, f"{too_long[0]} longer than {MAX_FIELD[too_long[0]]} characters"))
                continue
            try:
                row["email"] = normalise_email(row["email"], check_deliverability=check_deliverability)
            except EmailNotValidError as exc:
                bad.append((line, f"email: {exc}"))
                continue
            if row["email"] in seen:
                bad.append((line, f"email already given on line {seen[row['email']]}"))
                continue
            seen[row["email"]] = line
            good.append((line, row))
    except csv.Error as exc:
        raise AccountFileError(f"line {reader.line_num}: {exc}") from None
    return good, bad


def import_rows(session: Session, rows: list[tuple[int, dict[str, str]]]) -> ImportReport:
    """Insert or update accounts by address (importing the same file twice changes nothing)."""
    report = ImportReport()
    existing: dict[str, Account] = {}
    emails = [r["email"] for _, r in rows]
    for i in range(0, len(emails), 500):  # bounded IN lists: SQLite caps bound parameters
        existing.update((a.email, a) for a in session.scalars(select(Account).where(Account.email.in_(emails[i : i + 500]))))
    for _line, row in rows:
        account = existing.get(row["email"])
        values = {k: row.get(k, "") for k in ("name", "phone", "account_id")}
        if account is None:
            session.add(Account(email=row["email"], **values))
            report.added += 1
        elif any(getattr(account, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(account, k, v)
            report.updated += 1
        else:
            report.unchanged += 1
    session.flush()
    return report


def import_file(services: Any, path: Path) -> ImportReport:
    """Read, validate and load one CSV file in one transaction (all good rows or none)."""
    from privbot import audit

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AccountFileError(f"cannot read {path}: {exc.strerror}") from None
    good, bad = read_rows(data, check_deliverability=services.settings.check_deliverability)
    with services.db.transaction() as session:
        report = import_rows(session, good)
        report.skipped = bad
        if report.added > 1000 and session.get_bind().dialect.name == "postgresql":
            # A table that just grew by thousands of rows has no statistics until
            # autovacuum gets to it; meanwhile the planner takes it for empty and scans
            # it for every lookup (a re-import of 50,000 took 45 s instead of 2).
            session.execute(text("ANALYZE accounts"))
        audit.record(
            session, "accounts_imported", added=report.added, updated=report.updated, unchanged=report.unchanged, skipped=len(bad)
        )
    return report


def cmd_accounts_import(args: Any, settings: Settings) -> int:
    """``privbot accounts import FILE.csv``: exit 0 when every row loaded, 1 when some
    rows were skipped (each named on stderr by line), 2 when the file is unusable."""
    import sys

    from privbot.app import build_services
    from privbot.cli import UsageError

    services = build_services(settings)
    try:
        report = import_file(services, Path(args.file))
    except AccountFileError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    finally:
        services.db.dispose()
    for line, reason in report.skipped:
        print(f"{args.file}: line {line}: {reason}; skipped", file=sys.stderr)
    print(
        f"imported {report.imported} accounts ({report.added} new, {report.updated} updated, {report.unchanged} unchanged); "
        f"{len(report.skipped)} line{'s' if len(report.skipped) != 1 else ''} skipped"
    )
    return 1 if report.skipped else 0
