"""``privbot run``: every configured part in one process, on one event loop.

Each part is a small component with ``start()`` and ``stop()``; a factory returns None
when its part is not configured (no IMAP account, no bot token), so a bare machine runs
the SMTP intake, the sweeps (outbox included) and the console.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from privbot import scheduler

if TYPE_CHECKING:
    from privbot.app import Services

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SMTPComponent:
    name = "smtp"

    def __init__(self, services: Services, host: str, port: int) -> None:
        self.services, self.host, self.port = services, host, port
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        from privbot.channels.smtp_in import start_server

        self.server = await start_server(self.services, self.host, self.port)
        log.info("SMTP intake listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()


class SweepComponent:
    """APScheduler 3 runs each sweep on its interval, in a worker thread, one at a time."""

    name = "scheduler"

    def __init__(self, services: Services) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.services = services
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        #: sweeps running now; stop() lets them finish their transaction instead of
        #: cancelling them mid-way (which also logged a CancelledError per sweep)
        self.running: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def job(sweep: scheduler.Sweep, name: str) -> Callable[[], object]:
            async def run() -> None:
                task = asyncio.current_task()
                if task is not None:
                    self.running.add(task)
                    task.add_done_callback(self.running.discard)
                try:
                    result = await loop.run_in_executor(None, sweep, self.services)
                    # A pass that did nothing (no non-zero count) is not worth a line
                    # every few seconds; sweeps already name themselves in their result.
                    if result and re.search(r"[1-9]", result):
                        log.info("%s", result if result.startswith(f"{name}:") else f"{name}: {result}")
                except asyncio.CancelledError:
                    # Shutdown caught a sweep that started as the scheduler stopped.  Its
                    # worker thread still finishes (or rolls back) its own transaction;
                    # there is nothing to report and nothing to re-raise into APScheduler.
                    log.debug("sweep %s interrupted by shutdown", name)
                except Exception:
                    log.exception("sweep %s failed; it runs again at its next interval", name)

            return run

        for name, sweep, interval in scheduler.SWEEPS:
            settings = self.services.settings
            interval = settings.outbox_interval if name == "outbox" else (settings.sweep_interval or interval)
            self.scheduler.add_job(job(sweep, name), "interval", seconds=interval, id=name, max_instances=1, coalesce=True)
            self.scheduler.add_job(job(sweep, name), id=f"{name}-now")  # once at start
        self.scheduler.start()

    async def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # let jobs submitted just before shutdown register themselves
        if self.running:
            await asyncio.wait(set(self.running), timeout=30)


ComponentFactory = Callable[["Services"], "Component | None"]


def _smtp(services: Services) -> Component | None:
    endpoint = services.settings.smtp_endpoint
    return SMTPComponent(services, *endpoint) if endpoint else None


def _web(services: Services) -> Component | None:
    try:
        from privbot.web.server import web_component
    except ImportError:
        return None
    return web_component(services)


def _imap(services: Services) -> Component | None:
    if not services.settings.imap_host:
        return None
    from privbot.channels.imap import imap_component

    return imap_component(services)


def _telegram(services: Services) -> Component | None:
    if not services.settings.telegram_token:
        return None
    from privbot.channels.telegram import telegram_component

    return telegram_component(services)


#: the parts ``privbot run`` starts, in order (stopped in reverse)
FACTORIES: list[ComponentFactory] = [_smtp, _imap, _telegram, _web, lambda s: SweepComponent(s)]


async def serve(services: Services, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    # Load the classifier before taking traffic, so the first message is not slow.
    await loop.run_in_executor(None, lambda: services.classifier)
    started: list[Component] = []
    try:
        for factory in FACTORIES:
            component = factory(services)
            if component is None:
                continue
            await component.start()
            started.append(component)
        log.info("privbot running: %s", ", ".join(c.name for c in started))
        await stop.wait()
    finally:
        for component in reversed(started):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", component.name)
        log.info("privbot stopped")
