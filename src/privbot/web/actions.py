"""What staff do to a ticket, as plain functions over a session.

Why this module exists: the console's handlers (and any script) change tickets only
through these functions and the ones in ``replies`` (approve, edit_draft, deny), so each
change is checked, audited and written in the caller's one transaction, and a form is
never a path to raw SQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from privbot import audit, clock, learned
from privbot.config import Settings
from privbot.domain import Intent, Status
from privbot.store.models import Draft, Message, Ticket

INTENTS: tuple[str, ...] = tuple(str(i) for i in Intent)
#: a closed or answered ticket can still be closed; these cannot be closed again
_FINAL = {str(Status.CLOSED), str(Status.REJECTED), str(Status.WITHDRAWN_BY_REQUESTER)}


class ActionError(Exception):
    """The action does not apply to this ticket (shown to the person who tried)."""


def reclassify(session: Session, settings: Settings, ticket: Ticket, intents: list[str], staff_email: str) -> None:
    """Staff say what the request really asks; the first intent is the primary one.

    The correction is also kept as a labeled example (:mod:`privbot.learned`: one JSON
    line of text, intent, lang, ticket, by, at) so staff corrections become training
    data; it is forgotten when the ticket's personal data is purged.
    """
    chosen: list[str] = []
    for intent in intents:
        if intent not in INTENTS:
            raise ActionError(f"unknown right {intent!r}")
        if intent not in chosen:
            chosen.append(intent)
    if not chosen:
        raise ActionError("choose at least one right")
    if Intent.OTHER in chosen and len(chosen) > 1:
        chosen.remove(Intent.OTHER)
    old = list(ticket.intents or [ticket.intent])
    if chosen == old:
        return
    ticket.intent, ticket.intents = chosen[0], chosen
    ticket.confidence = 1.0
    ticket.cues = [f"set by {staff_email}"]
    if chosen[0] == Intent.OTHER:
        ticket.status = str(Status.TRIAGE)
    elif ticket.status == Status.TRIAGE:
        ticket.status = str(Status.RECEIVED)
    ticket.updated_at = clock.now()
    session.flush()
    audit.record(session, "reclassified", actor=staff_email, ticket_id=ticket.id, old=old, new=chosen)
    first = session.scalar(
        select(Message).where(Message.ticket_id == ticket.id, Message.direction == "in").order_by(Message.id).limit(1)
    )
    if first is not None and (first.new_text or first.body).strip():
        learned.append(
            settings,
            {
                "text": (first.new_text or first.body).strip(),
                "subject": first.subject,
                "intent": chosen[0],
                "intents": chosen,
                "lang": ticket.language,
                "ticket": ticket.ref,  # forgotten with the ticket's personal data (retention)
                "by": staff_email,
                "at": clock.now().isoformat(),
            },
        )


def close(session: Session, ticket: Ticket, staff_email: str, note: str = "") -> None:
    if ticket.status in _FINAL:
        raise ActionError(f"{ticket.ref} is already {ticket.status}")
    now = clock.now()
    for pending in session.scalars(select(Draft).where(Draft.ticket_id == ticket.id, Draft.status == "pending")):
        pending.status = "superseded"  # nothing waits for approval on a closed ticket
    old = ticket.status
    ticket.status = str(Status.CLOSED)
    ticket.closed_at = now
    ticket.updated_at = now
    audit.record(session, "closed", actor=staff_email, ticket_id=ticket.id, was=old, note=note.strip()[:500])


def extension_available() -> bool:
    try:
        from privbot import deadlines
    except ImportError:  # pragma: no cover
        return False
    return callable(getattr(deadlines, "extend", None))


def extend(session: Session, settings: Settings, ticket: Ticket, days: int, reason: str, staff_email: str) -> Any:
    """Move the deadline as the law allows and draft the notice (``deadlines.extend``)."""
    if not extension_available():
        raise ActionError("deadline extensions are not available in this version of privbot")
    if not reason.strip():
        raise ActionError("an extension needs a reason: the requester is told why")
    if days < 1:
        raise ActionError("extend by at least one day")
    from privbot import deadlines

    try:
        return deadlines.extend(session, settings, ticket, days, reason.strip(), staff_email)  # type: ignore[attr-defined]
    except Exception as exc:
        # the law refused (deadlines' own error, or a ValueError): tell the person why
        if type(exc).__module__ == deadlines.__name__ or isinstance(exc, (ValueError, LookupError)):
            raise ActionError(str(exc)) from None
        raise
