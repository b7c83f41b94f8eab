"""How fast the staff console answers with a realistic backlog (SQLite, one process).

Seeds N tickets (a third overdue, each with an acknowledgement and a pending answer)
through the real pipeline, serves the console with uvicorn on 127.0.0.1, logs in, and
times the pages staff use all day: the queue, a filtered queue, a ticket, the reports.
Run: .venv/bin/python bench/bench_console.py [N]
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privbot import clock, replies  # noqa: E402
from privbot.app import build_services  # noqa: E402
from privbot.config import Settings  # noqa: E402
from privbot.domain import Channel, Classification, Inbound, Intent, Status  # noqa: E402
from privbot.intake import intake  # noqa: E402
from privbot.store.models import Ticket  # noqa: E402
from privbot.web import auth  # noqa: E402
from privbot.web.app import create_app  # noqa: E402

RIGHTS = [Intent.ACCESS, Intent.DELETION, Intent.CORRECTION, Intent.WITHDRAWAL, Intent.CANCELLATION]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    tmp = Path(tempfile.mkdtemp(prefix="privbot-bench-console-"))
    settings = Settings(data_dir=tmp / "var", database_url=f"sqlite:///{tmp / 'privbot.db'}", privacy_address="privacy@example.com",
                        smtp_listen="", web_listen="", max_auto_replies_per_day=10**6)
    services = build_services(settings)
    with services.db.transaction() as s:
        auth.add_staff(s, "bench@corp.example", "admin", "bench password 1")
    t0 = time.perf_counter()
    ref = ""
    for i in range(n):
        right = RIGHTS[i % len(RIGHTS)]
        inbound = Inbound(channel=Channel.EMAIL, sender=f"person{i}@example.org", text=f"Request {i}: please act on my data.",
                          subject="Privacy request", message_id=f"<bench{i}@example.org>",
                          received_at=clock.now() - timedelta(days=(i * 7) % 45))
        ref = intake(services, inbound, classification=Classification(right, (right,), 0.9, "en", ("cue",))).ticket_ref or ref
        with services.db.transaction() as s:
            t = s.get(Ticket, int(ref[5:]))
            replies.create_draft(s, settings, services.renderer, t, "answer", template="no_account")
            t.status = str(Status.AWAITING_APPROVAL)
    seeded = time.perf_counter() - t0

    from tests.support import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        token = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)  # type: ignore[union-attr]
        t1 = time.perf_counter()
        http.post("/login", data={"email": "bench@corp.example", "password": "bench password 1", "csrf": token})
        login = time.perf_counter() - t1
        print(f"console bench: {n} open tickets on SQLite (seeded through intake in {seeded:.1f} s); 2 cores, Python {sys.version.split()[0]}")
        print(f"login (one Argon2id verification): {login * 1000:.0f} ms")
        for label, path in [("queue (first 300 by deadline)", "/"), ("queue filtered by right", "/?right=deletion"),
                            ("queue search by requester", "/?q=person1999"), ("ticket page", f"/tickets/{ref}"), ("reports", "/reports")]:
            times = []
            for _ in range(15):
                t = time.perf_counter()
                r = http.get(path)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (path, r.status_code)
            print(f"{label:<32} median {statistics.median(times) * 1000:6.1f} ms   p90 {sorted(times)[int(len(times) * 0.9)] * 1000:6.1f} ms")
    server.should_exit = True
    thread.join(10)


if __name__ == "__main__":
    main()
