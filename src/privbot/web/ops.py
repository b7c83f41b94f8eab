"""/healthz and /metrics: what an orchestrator and a Prometheus server ask of privbot.

Why this module exists: operators run privbot next to their mail server and need to
know, without logging in, that it is alive (the Docker HEALTHCHECK, a load balancer) and
whether work is piling up (an outbox that does not drain, a deadline about to pass).

Every figure is computed from the database at scrape time by a custom collector, not
kept in process memory, so any one of several privbot processes sharing a PostgreSQL
reports the truth for all of them, and a restart resets nothing.  Neither route needs a
login and neither says anything about a person: only counts, states and ages.

``routes(services)`` is what the staff console mounts; ``ops_app(services)`` serves
these two routes alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from privbot import clock
from privbot.domain import OPEN_STATUSES, Status
from privbot.store.models import Lease, Message, OutboxItem, Shunted, Ticket

if TYPE_CHECKING:
    from privbot.app import Services


class StoreCollector(Collector):
    """Reads the figures from the database on every scrape (a handful of aggregates)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = clock.now()
        open_states = [str(s) for s in OPEN_STATUSES]
        with self.services.db.transaction() as session:
            by_channel = session.execute(
                select(Message.channel, func.count(Message.id)).where(Message.direction == "in").group_by(Message.channel)
            ).all()
            by_kind = session.execute(
                select(Message.kind, func.count(Message.id)).where(Message.direction == "in").group_by(Message.kind)
            ).all()
            by_status = dict(session.execute(select(Ticket.status, func.count(Ticket.id)).group_by(Ticket.status)).all())
            backlog, oldest = session.execute(
                select(func.count(OutboxItem.id), func.min(OutboxItem.created_at)).where(OutboxItem.status.in_(["pending", "sending"]))
            ).one()
            failed = session.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.status == "failed")) or 0
            nearest = session.scalar(select(func.min(Ticket.due_at)).where(Ticket.status.in_(open_states)))
            overdue = session.scalar(
                select(func.count(Ticket.id)).where(Ticket.status.in_(open_states), Ticket.due_at < now)
            ) or 0
            shunted = session.scalar(select(func.count(Shunted.id)).where(Shunted.status == "pending")) or 0
            held = [name for name, until in session.execute(select(Lease.name, Lease.expires_at)) if clock.ensure_aware(until) >= now]

        received = CounterMetricFamily("privbot_messages_received", "Messages received, by channel (from the store)", labels=["channel"])
        for channel, count in by_channel:
            received.add_metric([channel], count)
        yield received

        kinds = CounterMetricFamily(
            "privbot_messages_received_by_kind", "Messages received, by kind: request, reply, auto_reply", labels=["kind"]
        )
        for kind, count in by_kind:
            kinds.add_metric([kind], count)
        yield kinds

        tickets = GaugeMetricFamily("privbot_tickets", "Tickets by state", labels=["status"])
        for status in Status:  # every state, zeros included, so dashboards need no absent()
            tickets.add_metric([str(status)], by_status.get(str(status), 0))
        yield tickets

        yield GaugeMetricFamily("privbot_outbox_backlog", "Outbox items waiting to be delivered", value=backlog or 0)
        yield GaugeMetricFamily(
            "privbot_outbox_oldest_age_seconds",
            "Age of the oldest undelivered outbox item (0 when the outbox is empty)",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
        yield GaugeMetricFamily("privbot_outbox_failed", "Outbox items given up after every retry", value=failed)
        if nearest is not None:  # absent, rather than a made-up number, with no open ticket
            yield GaugeMetricFamily(
                "privbot_next_deadline_seconds",
                "Seconds until the nearest deadline of an open ticket (negative once passed)",
                value=(nearest - now).total_seconds(),
            )
        yield GaugeMetricFamily("privbot_tickets_overdue", "Open tickets past their deadline", value=overdue)
        yield GaugeMetricFamily("privbot_shunt_pending", "Messages kept in the shunt, waiting for a re-run", value=shunted)

        # Whether some process is doing each one-at-a-time job: 0 while IMAP or long
        # polling is configured means nobody watches that mailbox or polls that bot.
        # Counted by kind only — a lease's name holds the mailbox's login.
        leases = GaugeMetricFamily(
            "privbot_leases_held", "Unexpired leases by job: IMAP mailboxes watched, Telegram bots polled", labels=["job"]
        )
        for job in ("imap", "telegram"):
            leases.add_metric([job], sum(1 for name in held if name.startswith(job + ":")))
        yield leases


def routes(services: Services) -> list[Route]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(services))

    def check_database() -> None:
        with services.db.transaction() as session:
            session.execute(text("SELECT 1"))

    async def healthz(request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(check_database)
        except Exception:
            # No detail: the error text could name hosts; the logs have it.
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        try:
            body = await run_in_threadpool(generate_latest, registry)
        except Exception:
            return Response("# database unreachable\n", status_code=503, media_type="text/plain")
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz, methods=["GET", "HEAD"]), Route("/metrics", metrics, methods=["GET"])]


def ops_app(services: Services) -> Starlette:
    """Just /healthz and /metrics (tests, or a port of their own)."""
    return Starlette(routes=routes(services))
