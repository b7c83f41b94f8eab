"""SMTP intake throughput: privbot (accepted, committed, acknowledgement queued) against a
bare aiosmtpd sink that does nothing, 2,000 messages each, on SQLite and PostgreSQL,
over 4 and over 16 connections; three interleaved rounds of each, medians reported.

The clients are separate processes (one per connection, each sending its share in
turn) so that the sending side does not share the server's interpreter; they share the
machine's two cores with the server, in both runs alike.

Each run also says where the CPU went, per message: the clients' sending loops, the
server process (privbot or the sink), and on PostgreSQL the database server's
processes; and how many of the machine's cores that kept busy.  With two cores shared
by clients and server, that is what decides whether half the sink's rate can be
reached at all (docs/performance.md, "What half the sink needs").
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import smtplib
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from dataclasses import dataclass
from pathlib import Path
from statistics import median
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


def _client(port: int, worker: int, count: int, ready: Any, go: Any, spent: Any) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo()
        ready.put(worker)
        go.wait()
        t0 = time.process_time()
        for i in range(count):
            smtp.send_message(request_mail(f"user{worker}-{i}@example.org", i))
        spent.put(time.process_time() - t0)  # this client's CPU in its sending loop


@dataclass
class Blast:
    """One run of N messages: how long it took and the CPU it cost, in seconds."""

    seconds: float
    clients_cpu: float  # the clients' sending loops (not their start-up)
    server_cpu: float  # this process: the server under test
    database_cpu: float  # PostgreSQL's processes (0 for SQLite and the sink)

    @property
    def rate(self) -> float:
        return N / self.seconds

    def per_message_ms(self, cpu: float) -> float:
        return cpu / N * 1000

    @property
    def cores_busy(self) -> float:
        return (self.clients_cpu + self.server_cpu + self.database_cpu) / self.seconds


def _server_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine, with its ended children's
    (a backend that exits passes its time to the postmaster's children's count)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / tick


def blast(port: int, connections: int = CONNECTIONS, *, database: bool = False) -> Blast:
    """Deliver N messages over ``connections`` clients, timed from the moment all are
    connected; ``database``: count PostgreSQL's CPU too.

    The clients are spawned, not forked: a forked child inherits the server's heap (the
    classifier, the ORM) and its garbage collector walks it copy-on-write, which charged
    privbot's run seconds of CPU that the sink's run never paid."""
    ctx = mp.get_context("spawn")
    ready, spent, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = N // connections
    procs = [ctx.Process(target=_client, args=(port, w, per, ready, go, spent)) for w in range(connections)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    server0, db0 = _server_cpu(), postgres_cpu() if database else 0.0
    t0 = time.perf_counter()
    go.set()
    clients = sum(spent.get(timeout=600) for _ in procs)
    seconds = time.perf_counter() - t0
    server, db = _server_cpu() - server0, (postgres_cpu() - db0) if database else 0.0
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("client failed")
    return Blast(seconds, clients, server, db)


class Sink:
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        return "250 OK"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sink(connections: int = CONNECTIONS) -> Blast:
    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        return blast(port, connections)
    finally:
        ctl.stop()


#: what a privbot run gives: the run, tickets committed, acknowledgements queued, mean
#: messages per commit, and the group committer's milliseconds per group spent waiting
#: for a group's first message, waiting for the rest of it, and committing it
Outcome = tuple[Blast, int, int, float, tuple[float, float, float]]


def run_privbot(url: str, data_dir: Path, connections: int) -> Outcome:
    """One privbot run over ``connections`` clients (see :data:`Outcome`)."""
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
        run = blast(port, connections, database=url.startswith("postgresql"))
    finally:
        ctl.stop()
    with services.db.transaction() as s:
        tickets = s.scalar(select(func.count(Ticket.id))) or 0
        queued = s.scalar(select(func.count(OutboxItem.id))) or 0
    services.db.dispose()
    committer = ctl.handler.committer
    groups = max(committer.commits, 1)
    turns = tuple(1000 * seconds / groups for seconds in (committer.idle_seconds, committer.linger_seconds, committer.commit_seconds))
    return run, tickets, queued, committer.committed / groups, turns  # type: ignore[return-value]


#: rounds of (sink, SQLite, PostgreSQL) per number of connections; the median is reported
#: (one round on this shared two-core machine varies by 10-15 %)
ROUNDS = int(os.environ.get("BENCH_SMTP_ROUNDS", "3"))


def main() -> None:
    """Both runs for each number of connections: 4, and 16 (a mail server delivering a
    burst in parallel: Postfix opens up to 20 connections to one destination).  The runs
    are interleaved — sink, SQLite, PostgreSQL, then again — so that a slower minute of
    the machine does not fall on one of them only."""
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
        have_pg = True
    except Exception as exc:  # no PostgreSQL here
        print(f"(PostgreSQL: skipped, {type(exc).__name__})")
        have_pg = False
    for connections in (4, 16):
        sinks: list[Blast] = []
        outcomes: dict[str, list[Outcome]] = {"SQLite": [], "PostgreSQL": []}
        for _ in range(ROUNDS):
            sinks.append(run_sink(connections))
            with tempfile.TemporaryDirectory() as tmp:
                outcomes["SQLite"].append(run_privbot(f"sqlite:///{tmp}/bench.db", Path(tmp), connections))
            if have_pg:
                schema = "bench_" + uuid.uuid4().hex[:8]
                with admin.connect() as c:
                    c.execute(text(f"CREATE SCHEMA {schema}"))
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        outcomes["PostgreSQL"].append(run_privbot(f"{PG}?options=-csearch_path%3D{schema}", Path(tmp), connections))
                finally:
                    with admin.connect() as c:
                        c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        sink = median(r.rate for r in sinks)
        print(f"{connections} connections: aiosmtpd do-nothing sink {sink:6.0f} msg/s "
              f"(median of {ROUNDS} rounds of {N} messages: {', '.join(f'{r.rate:.0f}' for r in sinks)}); {_cpu(sinks)}")
        sink_cores = median(r.cores_busy for r in sinks)
        for backend, runs in outcomes.items():
            if runs:
                _report(backend, sink, sink_cores, connections, runs)


def _cpu(runs: list[Blast]) -> str:
    """Medians of where the CPU went, per message, and of the cores kept busy."""
    def ms(attr: str) -> float:
        return median(r.per_message_ms(getattr(r, attr)) for r in runs)

    db = ms("database_cpu")
    return (f"CPU per message: clients {ms('clients_cpu'):.2f} ms, server {ms('server_cpu'):.2f} ms"
            + (f", PostgreSQL {db:.2f} ms" if db else "") + f"; {median(r.cores_busy for r in runs):.2f} cores busy")


def _report(backend: str, sink: float, sink_cores: float, connections: int,
            outcomes: list[Outcome]) -> None:
    # every client sends requests 0.. of the mix; the invoice question is triage: no acknowledgement
    expected = connections * sum(1 for i in range(N // connections) if "invoice" not in BODIES[i % len(BODIES)])
    bad = [(tickets, queued) for _, tickets, queued, _, _ in outcomes if tickets != N or queued != expected]
    check = "ok" if not bad else f"EXPECTED {N} tickets and {expected} acknowledgements, got {bad}"
    runs = [o[0] for o in outcomes]
    rate = median(r.rate for r in runs)
    per_commit = median(o[3] for o in outcomes)
    print(f"  privbot on {backend + ':':11s} {rate:6.0f} msg/s  ratio {rate / sink:.2f}  "
          f"(rounds: {', '.join(f'{r.rate:.0f}' for r in runs)}; every round {N} tickets, {expected} acknowledgements "
          f"queued: {check}; {per_commit:.1f} messages per commit)")
    # What this CPU per message would allow if privbot kept the machine as busy as the sink did.
    cost = median((r.clients_cpu + r.server_cpu + r.database_cpu) / N for r in runs)
    print(f"    {_cpu(runs)}; at the sink's {sink_cores:.2f} cores busy, this CPU per message "
          f"would allow {sink_cores / cost:.0f} msg/s (ratio {sink_cores / cost / sink:.2f})")
    # Each client sends its next message only after the 250 for the last, so the clients
    # and the commits take turns: while a group commits its senders wait, and while they
    # build and send their next messages the committer waits (docs/performance.md).
    idle, linger, commit = (median(o[4][i] for o in outcomes) for i in range(3))
    print(f"    per group, the committer waited {idle:.1f} ms for its first message and {linger:.1f} ms "
          f"for the rest, then committed it in {commit:.1f} ms (busy {commit / (idle + linger + commit):.0%} of the time)")


if __name__ == "__main__":
    main()
