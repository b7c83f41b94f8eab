"""Statutory clocks: when an answer is due, how far it may be extended, when it stops.

Why this module exists: the promise to answer within the legal period is the point of
privbot, and the periods differ by law.  Everything about them lives here, as pure
functions of a ticket and :func:`privbot.clock.now` (the only source of time):

============  ===================================  ==========================  =============
clock         first period                         extension                   clock stops
============  ===================================  ==========================  =============
``default``   ``PRIVBOT_DEADLINE_DAYS`` (30) days  up to 30 days               no
``gdpr``      one calendar month                   up to two months            no
``uk``        one calendar month                   up to two months            identity / clarification
``ccpa``      45 days (receipt confirmed within    up to 45 days               no
              10 business days)
``pdpa``      30 days                              up to 30 days               no
============  ===================================  ==========================  =============

Every extension needs a reason and must be announced to the requester *inside the
first period* (GDPR Art. 12(3), CCPA §7021(b), PDPA reg. 4(3)); :func:`extend` refuses
otherwise and sends the notice at once (see docs/deadlines.md for why it is not held
for approval).  Month arithmetic clamps to the end of the month (31 January + one month
= 28/29 February).  Business days are Monday to Friday, less the public holidays listed
in ``PRIVBOT_HOLIDAYS``.

The UK clock stop is kept by an ORM listener on ``Ticket.status`` (see
:func:`on_status_change`): whoever moves a ticket into or out of
``awaiting_verification`` / ``awaiting_clarification`` — intake, verification, the
console — pauses or resumes its clock without having to know about deadlines.
"""

from __future__ import annotations

import calendar
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from privbot import audit, clock
from privbot.config import ConfigError, Settings
from privbot.domain import OPEN_STATUSES, Status

if TYPE_CHECKING:
    from privbot.replies import Renderer
    from privbot.store.models import Draft, Ticket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LegalClock:
    name: str
    law: str
    months: int = 0
    #: 0 with months 0: ``PRIVBOT_DEADLINE_DAYS``
    days: int = 0
    extension_months: int = 0
    extension_days: int = 0
    #: the clock stops while privbot waits for the requester (identity, clarification)
    pauses: bool = False
    #: receipt must be confirmed within this many business days (0: no such rule)
    confirm_business_days: int = 0


CLOCKS: dict[str, LegalClock] = {
    "default": LegalClock("default", "the privacy policy's promise", extension_days=30),
    "gdpr": LegalClock("gdpr", "GDPR Art. 12(3)", months=1, extension_months=2),
    "uk": LegalClock("uk", "UK GDPR Art. 12(3)", months=1, extension_months=2, pauses=True),
    "ccpa": LegalClock("ccpa", "CCPA §1798.130 / Regs §7021", days=45, extension_days=45, confirm_business_days=10),
    "pdpa": LegalClock("pdpa", "Singapore PDPA reg. 4", days=30, extension_days=30),
}

#: statuses in which privbot waits for the requester; the UK clock stands still there
PAUSE_STATUSES = frozenset({Status.AWAITING_VERIFICATION, Status.AWAITING_CLARIFICATION})


class ExtensionRefused(Exception):
    """The law (or the ticket's state) does not allow this extension; the message says why."""


# ---------------------------------------------------------------------------- arithmetic


def add_months(at: datetime, months: int) -> datetime:
    """Calendar months, clamped: 31 January + 1 month = the last day of February."""
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


def add_business_days(at: datetime, days: int, holidays: frozenset[date] = frozenset()) -> datetime:
    """Monday to Friday, not on ``holidays``; a start on a day off counts from the next
    business day."""
    out = at
    while days > 0:
        out += timedelta(days=1)
        if out.weekday() < 5 and out.date() not in holidays:
            days -= 1
    return out


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _entries(text: str) -> Iterator[str]:
    """The entries of a list setting: ``"a, b;c"`` → a, b, c (empty ones skipped)."""
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if part:
            yield part


@lru_cache(maxsize=4)
def parse_holidays(text: str) -> frozenset[date]:
    """``"2026-12-25, 2027-01-01"`` → those dates; raises ConfigError naming the bad entry."""
    out: set[date] = set()
    for part in _entries(text):
        try:
            if not _ISO_DATE.fullmatch(part):
                raise ValueError(part)
            out.add(date.fromisoformat(part))
        except ValueError:
            raise ConfigError(f"PRIVBOT_HOLIDAYS: {part!r} is not a date written YYYY-MM-DD") from None
    return frozenset(out)


def clock_for(name: str | None) -> LegalClock:
    return CLOCKS.get(name or "default", CLOCKS["default"])


def due_at(settings: Settings, received_at: datetime, clock_name: str | None = None) -> datetime:
    """The end of the first period for a request received at ``received_at``."""
    c = clock_for(clock_name or settings.legal_clock)
    received_at = clock.ensure_aware(received_at)
    if c.months:
        return add_months(received_at, c.months)
    return received_at + timedelta(days=c.days or settings.deadline_days)


def first_period_end(settings: Settings, ticket: Ticket) -> datetime:
    """When the first period ends: the original deadline plus any time the clock stood still."""
    return due_at(settings, ticket.received_at, ticket.legal_clock) + timedelta(seconds=ticket.paused_seconds or 0)


def latest_due(settings: Settings, ticket: Ticket) -> datetime:
    """The latest deadline any extension may reach."""
    c = clock_for(ticket.legal_clock)
    first = first_period_end(settings, ticket)
    return add_months(first, c.extension_months) + timedelta(days=c.extension_days)


class Received(Protocol):
    """A ticket, or a row of its columns: what :func:`confirm_by` reads."""

    @property
    def received_at(self) -> datetime: ...
    @property
    def legal_clock(self) -> str | None: ...


def confirm_by(settings: Settings, ticket: Received) -> datetime | None:
    """When receipt must have been confirmed (CCPA: 10 business days), else None."""
    c = clock_for(ticket.legal_clock)
    if not c.confirm_business_days:
        return None
    return add_business_days(clock.ensure_aware(ticket.received_at), c.confirm_business_days, parse_holidays(settings.holidays))


def parse_reminder_days(text: str) -> list[int]:
    """``"7,3,1"`` → ``[7, 3, 1]`` (largest first); raises ConfigError naming the bad entry."""
    out: set[int] = set()
    for part in _entries(text):
        if not part.isdigit() or not 1 <= int(part) <= 365:
            raise ConfigError(f"PRIVBOT_REMINDER_DAYS: {part!r} is not a number of days between 1 and 365")
        out.add(int(part))
    return sorted(out, reverse=True)


# ---------------------------------------------------------------------------- history


def record_event(session: Session, ticket: Ticket, kind: str, *, actor: str, old: datetime | None, new: datetime | None, reason: str = "") -> None:
    """One line of the ticket's deadline history (``deadline_events``)."""
    from privbot.store.models import DeadlineEvent

    session.add(DeadlineEvent(ticket_id=ticket.id, at=clock.now(), actor=actor, kind=kind, old_due_at=old, new_due_at=new, reason=reason))


def history(session: Session, ticket_id: int) -> list[dict[str, Any]]:
    """The deadline history as plain rows, oldest first (the console's ticket page shows it)."""
    from sqlalchemy import select

    from privbot.store.models import DeadlineEvent

    rows = session.scalars(select(DeadlineEvent).where(DeadlineEvent.ticket_id == ticket_id).order_by(DeadlineEvent.id))
    return [
        {"at": r.at, "actor": r.actor, "kind": r.kind, "old_due_at": r.old_due_at, "new_due_at": r.new_due_at, "reason": r.reason}
        for r in rows
    ]


# ---------------------------------------------------------------------------- the UK clock stop


def on_status_change(session: Session | None, settings: Settings | None, ticket: Ticket, old: object, new: object) -> None:
    """Pause the clock when privbot starts waiting for the requester; resume it after.

    The moment a ticket starts waiting is kept in ``clock_paused_at`` for every clock
    (the console shows "waiting since"); only a clock that pauses by law (``uk``) moves
    ``due_at`` on by the time waited when the ticket leaves the waiting state.  Called by
    the ORM listener below for every ``ticket.status = ...``; a bulk UPDATE bypasses it,
    and the deadline sweep resumes such tickets instead.
    """
    waiting_before = old in PAUSE_STATUSES
    waiting_now = new in PAUSE_STATUSES
    now = clock.now()
    if waiting_now and not waiting_before:
        if ticket.clock_paused_at is None:
            ticket.clock_paused_at = now
        return
    if not waiting_now and ticket.clock_paused_at is not None:
        resume(session, ticket, now)


def resume(session: Session | None, ticket: Ticket, now: datetime, actor: str = "privbot") -> None:
    paused_at = clock.ensure_aware(ticket.clock_paused_at) if ticket.clock_paused_at else now
    ticket.clock_paused_at = None
    if not clock_for(ticket.legal_clock).pauses or now <= paused_at:
        return
    waited = now - paused_at
    old_due = ticket.due_at
    ticket.paused_seconds = (ticket.paused_seconds or 0) + int(waited.total_seconds())
    ticket.due_at = clock.ensure_aware(old_due) + timedelta(seconds=int(waited.total_seconds()))
    if session is not None and ticket.id is not None:
        record_event(
            session, ticket, "resumed", actor=actor, old=old_due, new=ticket.due_at,
            reason=f"clock stopped {paused_at.isoformat()} to {now.isoformat()} while waiting for the requester",
        )


def _install_listener() -> None:
    from privbot.store.models import Ticket

    @event.listens_for(Ticket.status, "set", active_history=True)
    def _status_set(target: Ticket, value: object, oldvalue: object, _initiator: object) -> None:
        if value == oldvalue:
            return
        on_status_change(object_session(target), None, target, oldvalue, value)


_install_listener()


# ---------------------------------------------------------------------------- extensions


@lru_cache(maxsize=8)
def _renderer(templates_dir: Path) -> Renderer:
    from privbot.replies import Renderer

    return Renderer(templates_dir)


def check_extension(settings: Settings, ticket: Ticket, days: int, reason: str, now: datetime | None = None) -> datetime:
    """The new deadline if the law allows extending ``ticket`` by ``days``; else ExtensionRefused."""
    now = now or clock.now()
    c = clock_for(ticket.legal_clock)
    if ticket.status not in OPEN_STATUSES:
        raise ExtensionRefused(f"{ticket.ref} is {ticket.status}: only an open request can be extended")
    if days < 1:
        raise ExtensionRefused(f"--days must be at least 1, got {days}")
    if not reason.strip():
        raise ExtensionRefused("a reason is required: the requester must be told why the answer takes longer")
    first = first_period_end(settings, ticket)
    if now >= first:
        raise ExtensionRefused(
            f"{ticket.ref}: too late to extend: {c.law} requires the notice within the first period, which ended {first.isoformat()}"
        )
    new_due = clock.ensure_aware(ticket.due_at) + timedelta(days=days)
    limit = latest_due(settings, ticket)
    if new_due > limit:
        room = max(0, (limit - clock.ensure_aware(ticket.due_at)).days)
        raise ExtensionRefused(
            f"{ticket.ref}: {days} days is too long: {c.law} allows the deadline to reach {limit.isoformat()} at most "
            f"({room} more days)"
        )
    return new_due


def extend(session: Session, settings: Settings, ticket: Ticket, days: int, reason: str, actor: str) -> Draft:
    """Extend the deadline by ``days`` and send the requester the reasoned notice.

    The notice is queued at once (no approval step): the member of staff who extends has
    written the reason, and the law wants the requester told promptly, inside the first
    period.  Returns the notice's draft.  Raises :class:`ExtensionRefused`.
    """
    from privbot import replies

    if session.get_bind().dialect.name == "postgresql":
        # Two staff extending at once must not both stay under the limit and sum above it.
        session.refresh(ticket, with_for_update=True)
    now = clock.now()
    new_due = check_extension(settings, ticket, days, reason, now)
    old_due = ticket.due_at
    ticket.due_at = new_due
    ticket.extended = True
    ticket.updated_at = now
    record_event(session, ticket, "extended", actor=actor, old=old_due, new=new_due, reason=reason.strip())
    audit.record(
        session, "deadline_extended", actor=actor, ticket_id=ticket.id, days=days,
        old_due_at=clock.ensure_aware(old_due).isoformat(), new_due_at=new_due.isoformat(), clock=ticket.legal_clock,
    )
    draft = replies.create_draft(
        session, settings, _renderer(settings.templates_dir), ticket, "extension", needs_approval=False,
        reason=reason.strip(), old_due_at=old_due, days=days,
    )
    draft.approved_by, draft.approved_at = actor, now
    replies.enqueue(session, settings, ticket, draft)
    return draft
