"""Telegram bot throughput and latency: the real python-telegram-bot Application, long
polling a Bot API server on loopback (tests/botapi.py), on SQLite and PostgreSQL.

Three figures per backend:

* commands: 400 ``/help`` updates from 40 chats queued at once — updates handled per
  second (each committed, answered and acknowledged before the next offset);
* round trip: one chat sending ``/status`` 50 times, each after the previous answer —
  the time from the update being available to the answer shown (p50 / p95);
* requests: 20 chats each going free text → address → code (read from the mailed code)
  → ticket opened — tickets opened per second, the outbox worker delivering the codes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import sys
import tempfile
import time
import uuid
from email import message_from_bytes
from email.policy import default
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from privbot import outbox  # noqa: E402
from privbot.app import Services, build_services  # noqa: E402
from privbot.channels.telegram import TelegramComponent  # noqa: E402
from privbot.config import Settings  # noqa: E402
from privbot.store.models import OutboxItem, Ticket  # noqa: E402
from tests.botapi import FakeBotAPI, User  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CODE = re.compile(r"^ {4}(\S+)\s*$", re.M)


def settings_for(data_dir: Path, url: str, api: FakeBotAPI) -> Settings:
    return Settings(
        data_dir=data_dir, database_url=url, privacy_address="privacy@example.com", smtp_listen="", web_listen="",
        telegram_token=api.token, telegram_api_url=api.url, telegram_poll_timeout=1, telegram_flood_per_minute=10_000,
    )


async def wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the bot did not keep up")
        await asyncio.sleep(0.005)


async def commands(api: FakeBotAPI) -> str:
    users = [User(api, 10_000 + i) for i in range(40)]
    before = len(api.shown)
    t0 = time.perf_counter()
    for _ in range(10):
        for u in users:
            u.say("/help")
    await wait_for(lambda: len(api.shown) - before >= 400)
    dt = time.perf_counter() - t0
    return f"commands: 400 /help from 40 chats in {dt:.2f} s = {400 / dt:.0f} updates/s"


async def round_trip(api: FakeBotAPI) -> str:
    user = User(api, 20_000)
    latencies = []
    for _ in range(50):
        n = len(user.messages)
        t0 = time.perf_counter()
        user.say("/status")
        await wait_for(lambda: len(user.messages) > n)
        latencies.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(latencies, n=20)
    return f"round trip /status: p50 {statistics.median(latencies):.0f} ms, p95 {q[18]:.0f} ms"


async def requests(api: FakeBotAPI, services: Services) -> str:
    users = [User(api, 30_000 + i) for i in range(20)]
    t0 = time.perf_counter()
    for u in users:
        u.say("I would like a copy of all the personal data you hold about me.")
    await wait_for(lambda: all(any("email address" in m.text for m in u.messages) for u in users))
    for i, u in enumerate(users):
        u.say(f"user{i}@example.org")
    await wait_for(lambda: all(any("I have sent" in m.text for m in u.messages) for u in users))
    assert services.transports is not None
    await asyncio.to_thread(outbox.deliver_due, services.db, services.transports)
    with services.db.transaction() as s:
        mails = {
            item.recipient: item.payload
            for item in s.scalars(select(OutboxItem).where(OutboxItem.channel == "email").order_by(OutboxItem.id))
        }
    for i, u in enumerate(users):
        body = message_from_bytes(mails[f"user{i}@example.org"], policy=default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
        u.say(CODE.search(body).group(1))  # type: ignore[union-attr]
    await wait_for(lambda: all(any("PRIV-" in m.text for m in u.messages) for u in users))
    dt = time.perf_counter() - t0
    with services.db.transaction() as s:
        opened = s.scalar(select(func.count()).select_from(Ticket).where(Ticket.verified.is_(True)))
    return f"requests: {opened} verified tickets via text → address → code in {dt:.2f} s = {opened / dt:.1f} tickets/s (60 updates + 20 code mails)"


async def run(label: str, url: str) -> None:
    api = FakeBotAPI().start()
    with tempfile.TemporaryDirectory() as tmp:
        services = build_services(settings_for(Path(tmp), url, api))
        services.classifier  # noqa: B018 — loaded before timing, as privbot run does
        bot = TelegramComponent(services)
        await bot.start()
        try:
            for line in (await commands(api), await round_trip(api), await requests(api, services)):
                print(f"{label}: {line}", flush=True)
        finally:
            await bot.stop()
            services.db.dispose()
            api.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run("sqlite", f"sqlite:///{tmp}/privbot.db"))
    schema = "bench_" + uuid.uuid4().hex[:8]
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        print(f"postgresql: skipped ({type(exc).__name__})")
        return
    try:
        asyncio.run(run("postgresql", f"{PG}?options=-csearch_path%3D{schema}"))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
