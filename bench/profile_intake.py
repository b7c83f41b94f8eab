"""Per-message cost of the intake pipeline, broken down by stage.

Runs ``receive_email`` in-process (no sockets) on simple requests, once under cProfile,
and prints the milliseconds per message spent in each pipeline stage, the SQL
statements and flushes per message (statements through SQLAlchemy: the intake's
INSERTs and a group's first queries go to the driver directly and are not counted).
Not a ``bench_*`` file: ``make bench`` skips it.

    .venv/bin/python bench/profile_intake.py [--pg] [N]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.bench_smtp import PG, request_mail  # noqa: E402  (the same mix of requests as the SMTP bench)
STAGES = [
    ("parse_email", "parse.py", "parse_email"),
    ("classify", "classify/__init__.py", "classify"),
    ("find_thread", "intake.py", "find_thread"),
    ("may_auto_reply", "intake.py", "may_auto_reply"),
    ("audit.record", "audit.py", "record"),
    ("verify.on_new_ticket", "verify.py", "on_new_ticket"),
    ("verify.issue_challenge", "verify.py", "issue_challenge"),
    ("verify.forget_code", "verify.py", "forget_code"),
    ("replies.create_draft", "replies.py", "create_draft"),
    ("replies.enqueue", "replies.py", "enqueue"),
    ("commit", "session.py", "commit"),
]


def mail(i: int) -> bytes:
    return bytes(request_mail(f"user{i}@example.org", i))


def main() -> None:
    from privbot.app import build_services
    from privbot.config import Settings
    from privbot.intake import receive_email

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 500
    schema = None
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/p.db"
        if "--pg" in sys.argv:
            schema = "prof_" + uuid.uuid4().hex[:8]
            with create_engine(PG, isolation_level="AUTOCOMMIT").connect() as c:
                c.execute(text(f"CREATE SCHEMA {schema}"))
            url = f"{PG}?options=-csearch_path%3D{schema}"
        settings = Settings(data_dir=Path(tmp), database_url=url, privacy_address="privacy@example.com", smtp_listen="", web_listen="")
        settings.max_auto_replies_per_day = 10**6
        services = build_services(settings)
        services.classifier
        raws = [mail(i) for i in range(n + 50)]
        for raw in raws[:50]:  # warm up caches and the connection pool
            receive_email(services, raw)
        counts = {"sql": 0, "flush": 0}
        event.listen(services.db.engine, "before_cursor_execute", lambda *a, **k: counts.__setitem__("sql", counts["sql"] + 1))
        event.listen(Session, "before_flush", lambda *a, **k: counts.__setitem__("flush", counts["flush"] + 1))
        t0 = time.perf_counter()
        for raw in raws[50:]:
            receive_email(services, raw)
        plain = (time.perf_counter() - t0) / n * 1000
        counts_plain = dict(counts)
        more = [mail(i) for i in range(n)]
        prof = cProfile.Profile()
        prof.enable()
        for raw in more:
            receive_email(services, raw)
        prof.disable()
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        total = sum(v[2] for v in stats.values())
        print(f"backend {services.db.dialect}: {plain:.2f} ms/msg without the profiler ({1000 / plain:.0f} msg/s), "
              f"{counts_plain['sql'] / n:.1f} SQL statements and {counts_plain['flush'] / n:.1f} flushes per message")
        whole = next(v[3] for (f, _l, name), v in stats.items() if name == "receive_email" and f.endswith("intake.py"))
        for label, file, func in STAGES:
            cum = sum(v[3] for (f, _l, name), v in stats.items() if name == func and f.endswith(file))
            calls = sum(v[0] for (f, _l, name), v in stats.items() if name == func and f.endswith(file))
            print(f"  {label:24s} {cum / n * 1000:6.2f} ms/msg (profiled) {100 * cum / whole:5.1f} %  {calls / n:.1f} calls/msg")
        services.db.dispose()
        if schema:
            with create_engine(PG, isolation_level="AUTOCOMMIT").connect() as c:
                c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        del total


if __name__ == "__main__":
    main()
