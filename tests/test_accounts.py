"""The account directory: ``privbot accounts import`` and the SQL connector.

The CLI runs in-process through ``privbot.cli.main`` with a TOML config pointing at the
test database, on SQLite and PostgreSQL; the "company database" of the connector is a
real SQLite file the test creates.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from privbot import cli, verify
from privbot.accounts import lookup_account
from privbot.app import Services
from privbot.config import ConfigError, load_settings
from privbot.domain import Channel, Classification, Inbound, Intent, Status
from privbot.intake import intake
from privbot.store.models import Account, AuditEntry, Draft, Ticket

GOOD = "email,name,phone,account_id\nAnn@Example.ORG,Ann Lee,+65 5550 0001,TW-1\nbob@example.org,Bob Tan,,TW-2\n"


def run(tmp_path: Path, db_url: str, *argv: str) -> int:
    config = tmp_path / "privbot.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\ndatabase_url = "{db_url}"\nsmtp_listen = ""\nweb_listen = ""\n')
    return cli.main(["--config", str(config), *argv])


def accounts(services: Services) -> dict[str, Account]:
    with services.db.transaction() as s:
        return {a.email: a for a in s.scalars(select(Account))}


@pytest.fixture
def csv_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(content: str | bytes) -> str:
        p = tmp_path / "accounts.csv"
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(p)

    return write


def test_import_loads_accounts_with_normalised_addresses_and_reports_counts(
    tmp_path: Path, db_url: str, services: Services, csv_file, capsys  # type: ignore[no-untyped-def]
) -> None:
    path = csv_file(GOOD)
    assert run(tmp_path, db_url, "accounts", "import", path) == 0
    assert "imported 2 accounts (2 new, 0 updated, 0 unchanged); 0 lines skipped" in capsys.readouterr().out
    found = accounts(services)
    assert set(found) == {"ann@example.org", "bob@example.org"}
    assert found["ann@example.org"].name == "Ann Lee" and found["ann@example.org"].account_id == "TW-1"

    # importing the same file again changes nothing; a changed row is updated in place
    assert run(tmp_path, db_url, "accounts", "import", path) == 0
    assert "(0 new, 0 updated, 2 unchanged)" in capsys.readouterr().out
    csv_file(GOOD.replace("Bob Tan", "Bob Tan Wei"))
    assert run(tmp_path, db_url, "accounts", "import", path) == 0
    assert "(0 new, 1 updated, 1 unchanged)" in capsys.readouterr().out
    assert accounts(services)["bob@example.org"].name == "Bob Tan Wei"


def test_bad_rows_are_named_by_line_and_skipped_while_good_rows_load(
    tmp_path: Path, db_url: str, services: Services, csv_file, capsys  # type: ignore[no-untyped-def]
) -> None:
    content = GOOD + "not-an-address,Eve,,TW-3\ncarol@example.org,Carol\nANN@example.org,Ann again,,TW-9\n"
    assert run(tmp_path, db_url, "accounts", "import", csv_file(content)) == 1
    out = capsys.readouterr()
    assert re.search(r"line 4: email: .*skipped", out.err)
    assert "line 5: expected 4 fields, found 2; skipped" in out.err
    assert "line 6: email already given on line 2; skipped" in out.err
    assert "imported 2 accounts" in out.out and "3 lines skipped" in out.out
    assert set(accounts(services)) == {"ann@example.org", "bob@example.org"}
    assert accounts(services)["ann@example.org"].account_id == "TW-1"


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,phone\nAnn,1\n", "no 'email' column"),
        ("email,name,password\na@example.org,A,x\n", "unknown column 'password'"),
        (b"email,name\n\xff\xfe@example.org,A\n", "not UTF-8"),
        ("", "empty file"),
    ],
)
def test_malformed_file_exits_2_with_one_line_and_imports_nothing(
    tmp_path: Path, db_url: str, services: Services, csv_file, capsys, content, message  # type: ignore[no-untyped-def]
) -> None:
    assert run(tmp_path, db_url, "accounts", "import", csv_file(content)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert accounts(services) == {}


def test_missing_file_exits_2(tmp_path: Path, db_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert run(tmp_path, db_url, "accounts", "import", str(tmp_path / "nope.csv")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_imported_address_matches_mail_from_any_capitalisation(services: Services, tmp_path: Path, db_url: str, csv_file) -> None:  # type: ignore[no-untyped-def]
    assert run(tmp_path, db_url, "accounts", "import", csv_file(GOOD)) == 0
    with services.db.transaction() as s:
        assert lookup_account(s, services.settings, "ANN@example.org").account_id == "TW-1"  # type: ignore[union-attr]
        assert lookup_account(s, services.settings, "ann@example.org ").account_id == "TW-1"  # type: ignore[union-attr]
        assert lookup_account(s, services.settings, "ann.lee@example.org") is None
        assert lookup_account(s, services.settings, "telegram:42") is None


# ---------------------------------------------------------------------------- the SQL connector


@pytest.fixture
def company_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'company.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (uid TEXT, mail TEXT, full_name TEXT, mobile TEXT)"))
        conn.execute(text("INSERT INTO users VALUES ('U-77', 'dana@example.org', 'Dana Ong', '+65 5550 0077')"))
        conn.execute(text("INSERT INTO users VALUES ('U-78', 'danab@example.org', 'Dana B', '')"))
    engine.dispose()
    return url


QUERY = "SELECT mail AS email, full_name AS name, mobile AS phone, uid AS account_id FROM users WHERE lower(mail) = :email"


def test_connector_finds_accounts_in_the_company_database_after_the_directory(services: Services, company_db: str) -> None:
    services.settings.accounts_sql_url = company_db
    services.settings.accounts_sql_query = QUERY
    with services.db.transaction() as s:
        s.add(Account(email="ann@example.org", name="Ann", phone="", account_id="TW-1"))
    with services.db.transaction() as s:
        dana = lookup_account(s, services.settings, "Dana@Example.org")
        assert dana is not None and (dana.name, dana.phone, dana.account_id) == ("Dana Ong", "+65 5550 0077", "U-77")
        assert lookup_account(s, services.settings, "ann@example.org").account_id == "TW-1"  # type: ignore[union-attr]
        assert lookup_account(s, services.settings, "eve@example.org") is None


def test_a_loose_connector_query_never_hands_over_another_mailbox(services: Services, company_db: str) -> None:
    services.settings.accounts_sql_url = company_db
    services.settings.accounts_sql_query = QUERY.replace("lower(mail) = :email", "mail LIKE '%' || substr(:email, 1, 4) || '%'")
    with services.db.transaction() as s:
        # "danab@" matches LIKE '%dana%' first; only the row whose address is the asker's counts
        assert lookup_account(s, services.settings, "dana@example.org").account_id == "U-77"  # type: ignore[union-attr]
        assert lookup_account(s, services.settings, "dan@example.org") is None


def _c(intent: Intent) -> Classification:
    return Classification(intent=intent, intents=(intent,), confidence=0.95, language="en")


def test_connector_down_leaves_the_ticket_verified_and_a_later_sweep_drafts_the_answer(services: Services, tmp_path: Path) -> None:
    services.settings.accounts_sql_url = f"sqlite:///{tmp_path / 'missing' / 'company.db'}"  # cannot be opened
    services.settings.accounts_sql_query = QUERY
    intake(services, Inbound(channel=Channel.EMAIL, sender="dana@example.org", text="Unsubscribe me", message_id="<w1@example.org>",
                             sender_authenticated=True), classification=_c(Intent.WITHDRAWAL))
    with services.db.transaction() as s:
        t = s.scalars(select(Ticket)).one()
        assert t.verified and t.status == Status.VERIFIED
        assert s.scalar(select(Draft.id).where(Draft.kind == "answer")) is None  # no false "no account" answer
        assert "account_lookup_failed" in [a.action for a in s.scalars(select(AuditEntry))]
    # the company database comes back
    (tmp_path / "missing").mkdir()
    engine = create_engine(services.settings.accounts_sql_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (uid TEXT, mail TEXT, full_name TEXT, mobile TEXT)"))
        conn.execute(text("INSERT INTO users VALUES ('U-77', 'dana@example.org', 'Dana Ong', '')"))
    engine.dispose()
    assert "1 answers drafted" in verify.sweep(services)
    with services.db.transaction() as s:
        t = s.scalars(select(Ticket)).one()
        [answer] = s.scalars(select(Draft).where(Draft.kind == "answer"))
        assert t.status == Status.AWAITING_APPROVAL and "U-77" in answer.text


def test_connector_settings_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PRIVBOT_ACCOUNTS_SQL_QUERY"):
        load_settings(environ={"PRIVBOT_ACCOUNTS_SQL_URL": "sqlite:///x.db", "PRIVBOT_ACCOUNTS_SQL_QUERY": "SELECT * FROM users"})
