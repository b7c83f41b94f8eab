"""SMTP intake throughput: privbot (accepted, committed, acknowledgement queued) against a
bare aiosmtpd sink that does nothing, 2,000 messages each, on SQLite and PostgreSQL.

The clients are separate processes (4 connections, 500 messages each) so that the
sending side does not share the server's interpreter.
"""

from __future__ import annotations

import multiprocessing as mp
import smtplib
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.controller import Controller  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402

N = 2000
CONNECTIONS = 4
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BODIES = [
    "Please delete all the personal information you hold about me.",
    "I would like a copy of all the data you have about me.",
    "Please close my account.",
    "Unsubscribe me from your newsletter, please.",
    "My phone number on file is wrong, please correct it to +44 20 7946 0000.",
    "Where is my invoice for last month?",
]


def request_mail(sender: str, i: int) -> EmailMessage:
    """The i-th request of the benchmark mix, from ``sender``, with a fresh Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "privacy@example.com"
    msg["Subject"] = "Privacy request"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    msg.set_content(BODIES[i % len(BODIES)])
    return msg


def _client(port: int, worker: int, count: int, ready: Any, go: Any) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo()
        ready.put(worker)
        go.wait()
        for i in range(count):
            smtp.send_message(request_mail(f"user{worker}-{i}@example.org", i))


def blast(port: int) -> float:
    """Seconds for the clients to deliver N messages, from the moment all are connected.

    The clients are spawned, not forked: a forked child inherits the server's heap (the
    classifier, the ORM) and its garbage collector walks it copy-on-write, which charged
    privbot's run seconds of CPU that the sink's run never paid."""
    ctx = mp.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    per = N // CONNECTIONS
    procs = [ctx.Process(target=_client, args=(port, w, per, ready, go)) for w in range(CONNECTIONS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("client failed")
    return time.perf_counter() - t0


class Sink:
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        return "250 OK"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sink() -> float:
    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        return N / blast(port)
    finally:
        ctl.stop()


def run_privbot(url: str, data_dir: Path) -> tuple[float, int]:
    from privbot.app import build_services
    from privbot.channels.smtp_in import controller
    from privbot.config import Settings
    from privbot.store.models import OutboxItem, Ticket

    settings = Settings(data_dir=data_dir, database_url=url, privacy_address="privacy@example.com", smtp_listen="", web_listen="")
    settings.max_auto_replies_per_day = 10**6
    services = build_services(settings)
    services.classifier  # loaded before timing, as `privbot run` does at start
    port = free_port()
    ctl = controller(services, "127.0.0.1", port)
    ctl.start()
    try:
        rate = N / blast(port)
    finally:
        ctl.stop()
    with services.db.transaction() as s:
        tickets = s.scalar(select(func.count(Ticket.id)))
        queued = s.scalar(select(func.count(OutboxItem.id)))
    services.db.dispose()
    return rate, (tickets or 0) + 0 * (queued or 0)


def main() -> None:
    sink = run_sink()
    print(f"aiosmtpd do-nothing sink: {sink:8.0f} msg/s ({N} messages, {CONNECTIONS} connections)")
    with tempfile.TemporaryDirectory() as tmp:
        rate, tickets = run_privbot(f"sqlite:///{tmp}/bench.db", Path(tmp))
        print(f"privbot on SQLite:        {rate:8.0f} msg/s  ratio {rate / sink:.2f}  ({tickets} tickets committed)")
    schema = "bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # no PostgreSQL here
        print(f"privbot on PostgreSQL:    skipped ({type(exc).__name__})")
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rate, tickets = run_privbot(f"{PG}?options=-csearch_path%3D{schema}", Path(tmp))
            print(f"privbot on PostgreSQL:    {rate:8.0f} msg/s  ratio {rate / sink:.2f}  ({tickets} tickets committed)")
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
