"""IMAP intake: a 10,000-message backlog drained from a real Dovecot, and the time from
a message landing in the mailbox to its acknowledgement in the outbox (with IDLE).

Three figures, each bounded in time:

1. the channel alone: the watcher with a do-nothing pipeline (FETCH, MOVE and the loop
   only) over 10,000 messages — what IMAP costs;
2. ``privbot run`` (a separate process, SQLite) draining 10,000 messages through the
   whole pipeline: messages per second and the process's peak resident memory; stopped
   after DRAIN_LIMIT seconds if not done, and the rate reported for what it took;
3. latency: 100 messages APPENDed one at a time to a watcher waiting in IDLE; for each,
   the time from the APPEND's OK to the acknowledgement's outbox row being committed.

Loads go only to 127.0.0.1.  Run standalone: ``.venv/bin/python bench/bench_imap.py``.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from privbot.app import build_services  # noqa: E402
from privbot.channels.imap import ImapWatcher  # noqa: E402
from privbot.config import Settings  # noqa: E402
from privbot.domain import IntakeResult  # noqa: E402
from privbot.store.db import Database  # noqa: E402
from privbot.store.models import Message, OutboxItem  # noqa: E402
from tests.dovecot import Account, Dovecot  # noqa: E402
from tests.support import make_mail  # noqa: E402

N = int(os.environ.get("BENCH_IMAP_N", "10000"))
LATENCY_SAMPLES = 60
DRAIN_LIMIT = float(os.environ.get("BENCH_IMAP_LIMIT", "75"))
BODIES = [
    "Please delete all the personal information you hold about me.",
    "I would like a copy of all the data you have about me.",
    "Please close my account.",
    "Unsubscribe me from your newsletter, please.",
    "My phone number on file is wrong, please correct it.",
    "Where is my invoice for last month?",
]


def messages(n: int, tag: str, bodies: list[str] = BODIES) -> list[bytes]:
    return [
        bytes(make_mail(bodies[i % len(bodies)], sender=f"{tag}{i}@example.org", subject=f"Request {i}",
                        message_id=f"<{tag}-{i}@example.org>"))
        for i in range(n)
    ]


def settings_for(account: Account, data_dir: Path, url: str) -> Settings:
    s = Settings(data_dir=data_dir, database_url=url, privacy_address="privacy@example.com", smtp_listen="", web_listen="")
    s.imap_host, s.imap_port, s.imap_user, s.imap_password, s.imap_ssl = account.host, account.port, account.user, account.password, "plain"
    s.max_auto_replies_per_day = 10**6
    return s


def channel_alone(dovecot: Dovecot, tmp: Path) -> Account:
    account = dovecot.add_user()
    t0 = time.perf_counter()
    account.deliver_many(messages(N, "req"))
    print(f"(delivered {N} messages into the Maildir in {time.perf_counter() - t0:.1f} s)")
    services = build_services(settings_for(account, tmp / "sink", f"sqlite:///{tmp}/sink.db"))

    def nothing(services: object, raw: bytes, *, source: str) -> IntakeResult:
        return IntakeResult("opened")

    watcher = ImapWatcher(services, receive=nothing)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    watcher.idle_ready.wait(300)
    elapsed = time.perf_counter() - t0
    watcher.stop()
    thread.join(10)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    left = account.count("INBOX")
    print(f"channel alone (no-op pipeline):   {N / elapsed:8.0f} msg/s  ({N} messages fetched and moved in {elapsed:.1f} s; "
          f"{left} left; bench process peak RSS {rss1 / 1024:.0f} MB, +{(rss1 - rss0) / 1024:.0f} MB while draining)")
    services.db.dispose()
    with account.client() as c:  # the same backlog again, for the full pipeline
        c.select_folder("Processed")
        c.move(c.search("ALL"), "INBOX")
    return account


def hwm_kib(pid: int) -> tuple[int, int]:
    """(peak, current) resident memory of a process, KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def start_memory(tmp: Path, *, warm: bool) -> int:
    """Peak RSS (KiB) of a `privbot run` process from start until it is ready and idle,
    with an empty mailbox: cold (no cached classifier model) or warm (cached)."""
    data = tmp / ("warm" if warm else "cold")
    url = f"sqlite:///{data}/run.db"
    env = {
        **os.environ,
        "PRIVBOT_DATA_DIR": str(data),
        "PRIVBOT_DATABASE_URL": url,
        "PRIVBOT_PRIVACY_ADDRESS": "privacy@example.com",
        "PRIVBOT_SMTP_LISTEN": f"127.0.0.1:{_free_port()}",
        "PRIVBOT_WEB_LISTEN": "",
        "PRIVBOT_LOG_LEVEL": "INFO",
    }
    if warm:
        subprocess.run([sys.executable, "-c", "from privbot.app import build_services; from privbot.config import load_settings; "
                        "build_services(load_settings()).classifier"], env=env, cwd=ROOT, check=True)
    log_path = tmp / f"start-{'warm' if warm else 'cold'}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "privbot.cli", "run"], env=env, stdout=log, stderr=log, cwd=ROOT)
        deadline = time.perf_counter() + 60
        ready_at = None
        while time.perf_counter() < deadline and proc.poll() is None:
            time.sleep(0.2)
            ready = b"privbot running" in log_path.read_bytes()
            if ready and ready_at is None:
                ready_at = time.perf_counter()
            if ready_at and time.perf_counter() - ready_at > 2:  # idle a while after ready
                break
        peak, _ = hwm_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return peak


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def privbot_run(account: Account, tmp: Path) -> None:
    url = f"sqlite:///{tmp}/run.db"
    db = Database(url)
    db.migrate()
    env = {
        **os.environ,
        "PRIVBOT_DATA_DIR": str(tmp / "run"),
        "PRIVBOT_DATABASE_URL": url,
        "PRIVBOT_PRIVACY_ADDRESS": "privacy@example.com",
        "PRIVBOT_SMTP_LISTEN": "",
        "PRIVBOT_WEB_LISTEN": "",
        "PRIVBOT_MAX_AUTO_REPLIES_PER_DAY": "1000000",
        "PRIVBOT_IMAP_HOST": account.host,
        "PRIVBOT_IMAP_PORT": str(account.port),
        "PRIVBOT_IMAP_USER": account.user,
        "PRIVBOT_IMAP_PASSWORD": account.password,
        "PRIVBOT_IMAP_SSL": "plain",
        "PRIVBOT_LOG_LEVEL": "WARNING",
    }
    # The classifier's model cache is warmed first, as on any start but the very first.
    subprocess.run([sys.executable, "-c", "from privbot.app import build_services; from privbot.config import load_settings; "
                    "build_services(load_settings()).classifier"], env=env, cwd=ROOT, check=True)
    log = (tmp / "run.log").open("wb")
    t_start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "privbot.cli", "run"], env=env, stdout=log, stderr=log, cwd=ROOT)
    deadline = t_start + DRAIN_LIMIT
    left = N
    base = (0, 0)
    while time.perf_counter() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if base == (0, 0):
            with db.transaction() as s:
                if s.scalar(select(func.count(Message.id))):
                    base = hwm_kib(proc.pid)  # ready, the first message just in
        left = account.count("INBOX")
        if left == 0:
            break
    wall = time.perf_counter() - t_start
    peak, now = hwm_kib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    with db.transaction() as s:
        taken = s.scalar(select(func.count(Message.id)).where(Message.direction == "in")) or 0
        first, last = s.execute(select(func.min(Message.created_at), func.max(Message.created_at)).where(Message.direction == "in")).one()
    db.dispose()
    busy = (last - first).total_seconds() if first and last else 0.0
    rate = (taken - 1) / busy if busy else 0.0
    done = "drained" if taken >= N else f"stopped after {DRAIN_LIMIT:.0f} s with {left} still in INBOX"
    print(f"privbot run, full pipeline, SQLite: {rate:8.0f} msg/s  ({taken} of {N} taken in, {done}; "
          f"{wall:.1f} s wall clock including start-up)")
    print(f"privbot run memory: peak RSS {peak / 1024:.0f} MB; RSS {base[1] / 1024:.0f} MB when the drain began, "
          f"{now / 1024:.0f} MB at its end (peak before the drain {base[0] / 1024:.0f} MB: start-up, mostly the classifier)")


def latency(dovecot: Dovecot, tmp: Path) -> None:
    account = dovecot.add_user()
    services = build_services(settings_for(account, tmp / "lat", f"sqlite:///{tmp}/lat.db"))
    services.classifier
    watcher = ImapWatcher(services)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    watcher.idle_ready.wait(60)
    samples = []
    with account.client() as client:
        # Privacy requests only: each gets an acknowledgement (an "other" message would
        # go to triage, with nothing in the outbox to wait for).
        for i, raw in enumerate(messages(LATENCY_SAMPLES, "lat", BODIES[:5])):
            mid = f"<lat-{i}@example.org>"
            client.append("INBOX", raw)
            t0 = time.perf_counter()
            while True:
                with services.db.transaction() as s:
                    acked = s.scalar(
                        select(OutboxItem.id).join(Message, Message.ticket_id == OutboxItem.ticket_id).where(Message.message_id == mid)
                    )
                if acked is not None or time.perf_counter() - t0 > 30:
                    break
                time.sleep(0.002)
            samples.append(time.perf_counter() - t0)
    watcher.stop()
    thread.join(10)
    services.db.dispose()
    acked_n = sum(1 for x in samples if x <= 30)
    q = statistics.quantiles(samples, n=100)
    print(f"mailbox → acknowledgement (IDLE): p50 {statistics.median(samples) * 1000:6.0f} ms  p95 {q[94] * 1000:6.0f} ms  "
          f"max {max(samples) * 1000:.0f} ms  ({len(samples)} messages, {acked_n} acknowledged)")


def main() -> None:
    dovecot = Dovecot()
    dovecot.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cold, warm = start_memory(Path(tmp), warm=False), start_memory(Path(tmp), warm=True)
            print(f"privbot run start-up, idle: peak RSS {cold / 1024:.0f} MB cold (no cached classifier model), "
                  f"{warm / 1024:.0f} MB warm (cached)")
            account = channel_alone(dovecot, Path(tmp))
            privbot_run(account, Path(tmp))
            latency(dovecot, Path(tmp))
    finally:
        dovecot.cleanup()


if __name__ == "__main__":
    main()
