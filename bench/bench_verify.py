"""Identity verification costs: importing the account directory, looking an address up,
and issuing and checking one-time codes, on SQLite and PostgreSQL.

Figures printed as plain lines; everything runs against 127.0.0.1 or a temp dir.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402

from privbot import verify  # noqa: E402
from privbot.accounts import import_file, lookup_account  # noqa: E402
from privbot.app import build_services  # noqa: E402
from privbot.config import Settings  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ACCOUNTS = 50_000
LOOKUPS = 2_000
CODES = 1_000


def run(label: str, url: str, tmp: Path) -> None:
    settings = Settings(data_dir=tmp / label, database_url=url, smtp_listen="", web_listen="")
    services = build_services(settings)
    csv = tmp / "accounts.csv"
    if not csv.exists():
        with csv.open("w") as fh:
            fh.write("email,name,phone,account_id\n")
            for i in range(ACCOUNTS):
                fh.write(f"user{i}@example.org,User {i},+65 5550 {i % 10000:04d},ACC-{i}\n")
    t0 = time.perf_counter()
    report = import_file(services, csv)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    report2 = import_file(services, csv)
    t_reimport = time.perf_counter() - t0
    assert report.added == ACCOUNTS and report2.unchanged == ACCOUNTS
    print(f"{label}: import {ACCOUNTS} accounts {t_import:.1f} s ({ACCOUNTS / t_import:.0f} rows/s); re-import unchanged {t_reimport:.1f} s")

    t0 = time.perf_counter()
    with services.db.transaction() as s:
        for i in range(LOOKUPS):
            who = f"User{(i * 7919) % ACCOUNTS}@Example.org" if i % 2 else f"nobody{i}@example.net"
            found = lookup_account(s, settings, who)
            assert (found is not None) == bool(i % 2)
    t_lookup = time.perf_counter() - t0
    print(f"{label}: lookup {LOOKUPS / t_lookup:.0f}/s ({t_lookup / LOOKUPS * 1e3:.2f} ms each, half known, half unknown)")

    t0 = time.perf_counter()
    issued = []
    for i in range(CODES):
        with services.db.transaction() as s:
            c, code = verify.issue_challenge(s, settings, f"user{i}@example.org")
            issued.append((c.id, code))
    t_issue = time.perf_counter() - t0
    t0 = time.perf_counter()
    from privbot.store.models import Challenge

    for cid, code in issued:
        with services.db.transaction() as s:
            assert verify.check_code(s, settings, s.get(Challenge, cid), code) == "ok"  # type: ignore[arg-type]
    t_check = time.perf_counter() - t0
    print(f"{label}: issue_challenge {CODES / t_issue:.0f}/s, check_code {CODES / t_check:.0f}/s (one transaction each, audited)")
    t0 = time.perf_counter()
    for _ in range(10_000):
        verify.hash_code(settings, "12345678")
    print(f"{label}: code hash {(time.perf_counter() - t0) / 10_000 * 1e6:.1f} µs")
    services.db.dispose()


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run("sqlite", f"sqlite:///{tmp / 'privbot.db'}", tmp)
        schema = "bench_" + uuid.uuid4().hex[:8]
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
        except Exception as exc:  # noqa: BLE001
            print(f"postgresql: skipped ({type(exc).__name__})")
            return 0
        try:
            run("postgresql", f"{PG}?options=-csearch_path%3D{schema}", tmp)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
