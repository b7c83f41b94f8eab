"""The staff console as one component of ``privbot run``.

Why this module exists: ``privbot run`` keeps every part on one event loop; the console
is a uvicorn server running as a task on that loop, started and stopped with the rest
(``service.FACTORIES`` calls :func:`web_component`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import uvicorn

from privbot.web.app import create_app

if TYPE_CHECKING:
    from privbot.app import Services

log = logging.getLogger(__name__)


class WebComponent:
    name = "web"

    def __init__(self, services: Services, host: str, port: int) -> None:
        self.services, self.host, self.port = services, host, port
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(
            create_app(self.services), host=self.host, port=self.port, log_level="warning", lifespan="off",
            access_log=False,  # access lines would carry ticket references and queries
        )
        self.server = uvicorn.Server(config)
        # privbot's loop owns SIGINT/SIGTERM and stops every part in order; uvicorn must not take them
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.server.serve(), name="privbot-web")
        while not self.server.started:  # bound before start() returns, so callers can connect
            if self.task.done():
                self.task.result()  # raises the bind error
                raise RuntimeError("the staff console stopped while starting")
            await asyncio.sleep(0.02)
        log.info("staff console on http://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, timeout=10)


def web_component(services: Services) -> WebComponent | None:
    endpoint = services.settings.web_endpoint
    return WebComponent(services, *endpoint) if endpoint else None
