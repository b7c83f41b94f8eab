"""What the console's pages show, read from the store as plain values.

Why this module exists: the pages need a few aggregates (queue, one ticket with its
whole story, reports) that are queries, not actions; keeping them here keeps the
handlers thin and lets the reports be tested without a browser.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from privbot import clock
from privbot.domain import OPEN_STATUSES, Channel, Intent, Status, parse_ref
from privbot.store import models
from privbot.store.models import AuditEntry, Challenge, Draft, Message, OutboxItem, Ticket

#: what the queue shows by default: everything that still needs a person
QUEUE_STATES: frozenset[str] = frozenset(str(s) for s in OPEN_STATUSES) | {str(Status.TRIAGE)}
QUEUE_LIMIT = 300


@dataclass(frozen=True)
class Due:
    """A deadline as staff read it: days left, or days overdue."""

    at: datetime
    days: int
    overdue: bool

    @property
    def label(self) -> str:
        if self.overdue:
            return f"{self.days} d overdue" if self.days else "overdue"
        return "due today" if self.days == 0 else f"{self.days} d left"

    @property
    def level(self) -> str:  # css class: overdue (red), soon (amber), ok
        return "overdue" if self.overdue else ("soon" if self.days <= 3 else "ok")


def due(at: datetime, now: datetime | None = None) -> Due:
    seconds = (at - (now or clock.now())).total_seconds()
    if seconds < 0:
        return Due(at, math.floor(-seconds / 86400), True)
    return Due(at, math.floor(seconds / 86400), False)


@dataclass(frozen=True)
class QueueRow:
    ref: str
    status: str
    intent: str
    intents: list[str]
    channel: str
    requester: str
    received_at: datetime
    due: Due
    extended: bool
    verified: bool
    pending: int


@dataclass
class QueueFilter:
    state: str = "open"  # open | all | a status
    right: str = ""
    channel: str = ""
    q: str = ""

    @classmethod
    def from_query(cls, params: Any) -> QueueFilter:
        f = cls(
            state=str(params.get("state") or "open"),
            right=str(params.get("right") or ""),
            channel=str(params.get("channel") or ""),
            q=str(params.get("q") or "").strip()[:200],
        )
        if f.state not in {"open", "all", *(str(s) for s in Status)}:
            f.state = "open"
        if f.right not in {str(i) for i in Intent}:
            f.right = ""
        if f.channel not in {str(c) for c in Channel}:
            f.channel = ""
        return f


def queue(session: Session, f: QueueFilter) -> tuple[list[QueueRow], bool]:
    """Tickets by deadline, the most urgent (overdue) first; True when cut at the limit."""
    stmt = select(Ticket)
    if f.state == "open":
        stmt = stmt.where(Ticket.status.in_(sorted(QUEUE_STATES)))
    elif f.state != "all":
        stmt = stmt.where(Ticket.status == f.state)
    if f.channel:
        stmt = stmt.where(Ticket.channel == f.channel)
    if f.q:
        ref = parse_ref(f.q.upper())
        pattern = "%" + f.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cond = or_(func.lower(Ticket.requester).like(pattern, escape="\\"), func.lower(Ticket.requester_name).like(pattern, escape="\\"))
        stmt = stmt.where(or_(cond, Ticket.id == ref) if ref else cond)
    if f.right:
        # The primary right or any secondary one.  ``intents`` is a JSON list of the
        # right names, which hold no quotes or escapes, so the quoted name appears in its
        # text exactly when it is in the list — one condition for SQLite and PostgreSQL,
        # and the database cuts the queue at the limit instead of Python after reading
        # every ticket.
        stmt = stmt.where(or_(Ticket.intent == f.right, cast(Ticket.intents, Text).contains(f'"{f.right}"', autoescape=True)))
    stmt = stmt.order_by(Ticket.due_at, Ticket.id).limit(QUEUE_LIMIT + 1)
    tickets = list(session.scalars(stmt))
    cut = len(tickets) > QUEUE_LIMIT
    tickets = tickets[:QUEUE_LIMIT]
    pending = dict(
        session.execute(
            select(Draft.ticket_id, func.count(Draft.id))
            .where(Draft.status == "pending", Draft.ticket_id.in_([t.id for t in tickets] or [0]))
            .group_by(Draft.ticket_id)
        ).all()
    )
    now = clock.now()
    rows = [
        QueueRow(
            ref=t.ref, status=t.status, intent=t.intent, intents=list(t.intents or [t.intent]), channel=t.channel,
            requester=t.requester, received_at=t.received_at, due=due(t.due_at, now), extended=bool(t.extended),
            verified=bool(t.verified), pending=int(pending.get(t.id, 0)),
        )
        for t in tickets
    ]
    return rows, cut


def find_ticket(session: Session, ref: str) -> Ticket | None:
    ticket_id = parse_ref(ref)
    return session.get(Ticket, ticket_id) if ticket_id is not None else None


@dataclass
class TicketView:
    ticket: Ticket
    due: Due
    messages: list[Message]
    drafts: list[Draft]
    challenges: list[Challenge]
    audit: list[AuditEntry]
    deadline_history: list[dict[str, Any]]
    delivery: dict[int, str] = field(default_factory=dict)  # draft id -> outbox state

    @property
    def pending(self) -> list[Draft]:
        return [d for d in self.drafts if d.status == "pending"]


def ticket_view(session: Session, ticket: Ticket) -> TicketView:
    messages = list(session.scalars(select(Message).where(Message.ticket_id == ticket.id).order_by(Message.created_at, Message.id)))
    drafts = list(session.scalars(select(Draft).where(Draft.ticket_id == ticket.id).order_by(Draft.id)))
    challenges = list(session.scalars(select(Challenge).where(Challenge.ticket_id == ticket.id).order_by(Challenge.id)))
    trail = list(session.scalars(select(AuditEntry).where(AuditEntry.ticket_id == ticket.id).order_by(AuditEntry.id)))
    delivery: dict[int, str] = {}
    for draft_id, status in session.execute(
        select(OutboxItem.draft_id, OutboxItem.status).where(OutboxItem.ticket_id == ticket.id, OutboxItem.draft_id.is_not(None))
    ):
        delivery[draft_id] = status if delivery.get(draft_id) in (None, "sent") else delivery[draft_id]
    return TicketView(ticket, due(ticket.due_at), messages, drafts, challenges, trail, deadline_history(session, ticket, trail), delivery)


def deadline_history(session: Session, ticket: Ticket, trail: list[AuditEntry]) -> list[dict[str, Any]]:
    """Set on receipt, then every move: the deadlines module's events where it keeps
    them (``DeadlineEvent``), else the audit entries that moved the deadline."""
    history: list[dict[str, Any]] = [
        {"at": ticket.received_at, "what": f"set on receipt ({ticket.legal_clock} clock)", "due": None, "by": "privbot", "reason": ""}
    ]
    opened = next((a for a in trail if a.action == "ticket_opened"), None)
    if opened and opened.detail.get("due_at"):
        history[0]["due"] = opened.detail["due_at"]
    event_model = getattr(models, "DeadlineEvent", None)
    if event_model is not None:
        for e in session.scalars(select(event_model).where(event_model.ticket_id == ticket.id).order_by(event_model.id)):
            history.append(
                {"at": e.at, "what": e.kind, "due": e.new_due_at.isoformat() if e.new_due_at else "", "by": e.actor, "reason": e.reason}
            )
        return history
    for a in trail:
        if "extend" in a.action or "deadline" in a.action:
            history.append({"at": a.at, "what": a.action, "due": a.detail.get("due_at") or a.detail.get("new_due_at") or "",
                            "by": a.actor, "reason": a.detail.get("reason", "")})
    return history


# ---------------------------------------------------------------------------- reports

BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("overdue", -math.inf, 0),
    ("0–3 d", 0, 4),
    ("4–7 d", 4, 8),
    ("8–14 d", 8, 15),
    ("15–30 d", 15, 31),
    ("> 30 d", 31, math.inf),
)


@dataclass
class Report:
    per_right: dict[str, dict[str, int]]  # intent -> channel -> count
    channels: list[str]
    answered: int
    on_time: int
    median_days: float | None
    open_by_days_left: list[tuple[str, int]]

    @property
    def on_time_rate(self) -> float | None:
        return self.on_time / self.answered if self.answered else None


def report(session: Session) -> Report:
    now = clock.now()
    per_right: dict[str, dict[str, int]] = {str(i): {} for i in Intent}
    channels: set[str] = {str(c) for c in Channel}
    for intent, channel, count in session.execute(
        select(Ticket.intent, Ticket.channel, func.count(Ticket.id)).group_by(Ticket.intent, Ticket.channel)
    ):
        per_right.setdefault(intent, {})[channel] = count
        channels.add(channel)
    durations: list[float] = []
    on_time = 0
    for received, answered, due_at in session.execute(
        select(Ticket.received_at, Ticket.answered_at, Ticket.due_at).where(Ticket.answered_at.is_not(None))
    ):
        durations.append((answered - received).total_seconds() / 86400)
        on_time += answered <= due_at
    buckets = {name: 0 for name, _, _ in BUCKETS}
    for (due_at,) in session.execute(select(Ticket.due_at).where(Ticket.status.in_(sorted(QUEUE_STATES)))):
        days = (due_at - now).total_seconds() / 86400
        for name, lo, hi in BUCKETS:
            if lo <= days < hi:
                buckets[name] += 1
                break
    return Report(
        per_right=per_right,
        channels=sorted(channels),
        answered=len(durations),
        on_time=on_time,
        median_days=statistics.median(durations) if durations else None,
        open_by_days_left=list(buckets.items()),
    )
