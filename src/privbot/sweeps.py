"""The deadline sweeps: staff reminders, escalations, and the retention purge.

Why this module exists: no deadline may pass unnoticed even when staff are slow, and
any number of privbot processes may run these sweeps against one PostgreSQL at once.
So every sweep is a pass over columns (``due_at``, ``closed_at``) that claims its rows
before acting:

* reminders and escalations: one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING
  RETURNING`` into ``reminders``, whose UNIQUE(ticket, kind, due_at) key is the claim;
  the staff mail listing exactly the rows this process inserted goes into the outbox in
  the same transaction.  Staff get one digest per sweep, not one mail per ticket.
* retention: a conditional ``UPDATE tickets SET purged_at`` (with ``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL) claims a batch; the personal data of exactly those tickets is
  replaced by a marker, and each gets an audit entry ``purged``.  Then what is kept
  beside the tickets: shunted messages a person resolved, Telegram chats idle that long
  (the address a chat proved, its conversation) and the last Telegram update's reply
  texts — deleted or emptied by conditions that a second run finds already false.

A sweep that finds nothing to do does nothing, so running it twice, or in three
processes, or as ``privbot sweep --at`` for a past moment, is harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, delete, exists, func, literal, not_, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from privbot import audit, clock, deadlines, learned
from privbot.domain import OPEN_STATUSES, format_ref
from privbot.store.models import (
    Challenge,
    Draft,
    Message,
    OutboxItem,
    Reminder,
    Shunted,
    TelegramChat,
    TelegramUpdate,
    Ticket,
    UTCDateTime,
)

if TYPE_CHECKING:
    from privbot.app import Services
    from privbot.config import Settings

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock keys: one sweep of each kind at a time across processes
#: (the unique key already makes a second one harmless; the lock makes it cheap)
_LOCK_REMINDERS = 0x70620001
_LOCK_RETENTION = 0x70620002
#: a digest lists this many tickets; the rest are counted (the console lists all)
DIGEST_LIMIT = 200
PURGED = "[purged]"
#: what a message keeps of what it held once purged (with its ticket, or alone after
#: the period when it joined none): the row and its de-duplication key only
_MESSAGE_PURGED = {"subject": PURGED, "body": PURGED, "new_text": PURGED, "raw": None, "sender": PURGED, "recipient": PURGED}
OPEN = [str(s) for s in OPEN_STATUSES]


def _insert(session: Session) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(Reminder)


def _try_lock(session: Session, key: int) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: BEGIN IMMEDIATE already serialises writers
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}))


# ---------------------------------------------------------------------------- reminders


def deadline_sweep(services: Services) -> str:
    """Remind staff of deadlines coming up, escalate the ones passed; exactly once each."""
    settings = services.settings
    offsets = deadlines.parse_reminder_days(settings.reminder_days)
    now = clock.now()
    with services.db.transaction() as session:
        if not _try_lock(session, _LOCK_REMINDERS):
            return "deadlines: another process is sweeping"
        resumed = _resume_bulk_closed(session, now)
        claimed = _claim_due(session, now, offsets) + _claim_unconfirmed(session, now)
        if not claimed:
            return "deadlines: nothing due" + (f"; {resumed} clocks resumed" if resumed else "")
        mailed = 0
        for template, batch in (
            ("staff_reminder", [c for c in claimed if c[1].startswith("due-")]),
            ("staff_escalation", [c for c in claimed if not c[1].startswith("due-")]),
        ):
            if batch and settings.staff_address:
                _mail_staff(services, session, template, _describe(services.settings, session, batch, now), batch, now)
                mailed += 1
        kinds: dict[str, int] = {}
        for _tid, kind, _due in claimed:
            kinds[kind] = kinds.get(kind, 0) + 1
        audit.record(session, "staff_reminded", kinds=kinds, tickets=len({c[0] for c in claimed}), mailed=mailed)
    parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return f"deadlines: {parts}; {mailed} staff mail{'s' if mailed != 1 else ''}"


def _claim_due(session: Session, now: datetime, offsets: list[int]) -> list[tuple[int, str, datetime]]:
    """Insert one reminder row per ticket that crossed a threshold; return those inserted.

    A ticket gets the most urgent reminder it qualifies for: one that reaches 3 days
    before its deadline without having had the 7-day one (the sweep was down, or it
    arrived late) gets only the 3-day one, and the 7-day one is never sent after it.
    """
    kind = case(
        (Ticket.due_at <= now, literal("overdue")),
        *[(Ticket.due_at <= now + timedelta(days=n), literal(f"due-{n}d")) for n in sorted(offsets)],
        else_=literal(None),
    )
    horizon = now + timedelta(days=max(offsets)) if offsets else now
    # A later, less urgent kind must not follow a more urgent one on the same deadline.
    more_urgent = [f"due-{n}d" for n in offsets]  # largest first
    src = (
        select(Ticket.id, kind, Ticket.due_at, literal(now, UTCDateTime()))
        .where(
            Ticket.status.in_(OPEN),
            Ticket.due_at <= horizon,
            Ticket.purged_at.is_(None),
            # the UK clock stands still while privbot waits for the requester
            not_(and_(Ticket.legal_clock == "uk", Ticket.clock_paused_at.is_not(None))),
            ~exists().where(
                Reminder.ticket_id == Ticket.id,
                Reminder.due_at == Ticket.due_at,
                or_(Reminder.kind == kind, Reminder.kind == "overdue", *_urgency_guard(kind, more_urgent)),
            ),
        )
        .order_by(Ticket.id)
    )
    return _claim_rows(session, src)


def _claim_rows(session: Session, src: Any) -> list[tuple[int, str, datetime]]:
    """Insert the reminder rows ``src`` selects; the unique key makes the insert the claim,
    so a row another process inserted first is simply not returned here."""
    stmt = (
        _insert(session)
        .from_select(["ticket_id", "kind", "due_at", "sent_at"], src)
        .on_conflict_do_nothing(index_elements=["ticket_id", "kind", "due_at"])
        .returning(Reminder.ticket_id, Reminder.kind, Reminder.due_at)
    )
    return [(int(t), str(k), clock.ensure_aware(d)) for t, k, d in session.execute(stmt)]


def _urgency_guard(kind: Any, offsets_desc: list[str]) -> list[Any]:
    """Conditions meaning "a more urgent reminder than ``kind`` was already sent"."""
    guards = []
    for i, k in enumerate(offsets_desc):
        smaller = offsets_desc[i + 1 :]
        if smaller:
            guards.append(and_(kind == k, Reminder.kind.in_(smaller)))
    return guards


def _claim_unconfirmed(session: Session, now: datetime) -> list[tuple[int, str, datetime]]:
    """CCPA: receipt must be confirmed within 10 business days.  privbot confirms at
    once, unless it could not (rate limit, triage that staff reclassified, a chat with no
    reply): after one day without any message to the requester, staff are told."""
    outgoing = exists().where(Message.ticket_id == Ticket.id, Message.direction == "out")
    src = (
        select(Ticket.id, literal("confirm-receipt"), Ticket.due_at, literal(now, UTCDateTime()))
        .where(
            Ticket.legal_clock == "ccpa",
            Ticket.status.in_(OPEN),
            Ticket.received_at <= now - timedelta(days=1),
            Ticket.purged_at.is_(None),
            ~outgoing,
            ~exists().where(Reminder.ticket_id == Ticket.id, Reminder.kind == "confirm-receipt"),
        )
        .order_by(Ticket.id)
    )
    return _claim_rows(session, src)


def _resume_bulk_closed(session: Session, now: datetime) -> int:
    """Tickets that left a waiting state by a bulk UPDATE (no ORM listener ran) get their
    pause cleared here; a closed ticket's deadline no longer matters, so nothing moves."""
    n = session.execute(
        update(Ticket)
        .where(Ticket.clock_paused_at.is_not(None), Ticket.status.not_in([str(s) for s in deadlines.PAUSE_STATUSES]))
        .values(clock_paused_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    return int(n or 0)


def _describe(settings: Settings, session: Session, claimed: list[tuple[int, str, datetime]], now: datetime) -> list[dict[str, Any]]:
    """Digest rows, most urgent first.  Only the rows a digest lists are looked up: a
    first sweep over a large backlog claims thousands and lists :data:`DIGEST_LIMIT`."""
    order = sorted(claimed, key=lambda c: (c[2], c[0]))
    shown = order[:DIGEST_LIMIT]
    details = {
        t.id: t
        for t in session.execute(
            select(Ticket.id, Ticket.intent, Ticket.status, Ticket.received_at, Ticket.legal_clock).where(
                Ticket.id.in_([c[0] for c in shown])
            )
        )
    }
    rows: list[dict[str, Any]] = []
    for ticket_id, kind, due in shown:
        t = details[ticket_id]
        if kind == "confirm-receipt":
            due = deadlines.confirm_by(settings, t) or due  # (t: the ticket's columns)
        rows.append({
            "ticket_id": ticket_id, "ref": format_ref(ticket_id), "intent": t.intent, "status": t.status, "due_at": due,
            "days_left": max(0, -(-int((due - now).total_seconds()) // 86400)), "kind": kind, "clock": t.legal_clock,
        })
    return rows


def _mail_staff(
    services: Services, session: Session, template: str, rows: list[dict[str, Any]], claimed: list[tuple[int, str, datetime]], now: datetime
) -> None:
    """One digest to ``PRIVBOT_STAFF_ADDRESS`` through the outbox (nothing when unset:
    the console shows the reminders table either way)."""
    from privbot.channels.mail_out import build_email, new_message_id

    settings = services.settings
    console = settings.public_url.rstrip("/") if settings.public_url else ""
    rendered = services.renderer.render(
        template, settings.staff_language, tickets=rows, more=max(0, len(claimed) - len(rows)), total=len(claimed),
        overdue_total=sum(1 for c in claimed if c[1] == "overdue"),
        console_url=console, privacy_address=settings.privacy_address,
    )
    message_id = new_message_id(settings.privacy_address)
    session.add(
        OutboxItem(
            ticket_id=rows[0]["ticket_id"] if len(claimed) == 1 else None,
            channel="email",
            recipient=settings.staff_address,
            message_id=message_id,
            subject=rendered.subject,
            payload=build_email(
                sender=settings.privacy_address, to=settings.staff_address, subject=rendered.subject,
                text=rendered.text, html=rendered.html, message_id=message_id,
            ),
            next_attempt_at=now,
            created_at=now,
        )
    )


# ---------------------------------------------------------------------------- retention

#: a ticket's "closed" moment: when it was closed, else answered, else last touched
_ENDED = func.coalesce(Ticket.closed_at, Ticket.answered_at, Ticket.updated_at)
RETENTION_BATCH = 200


def retention_sweep(services: Services, *, max_batches: int = 50) -> str:
    """Remove the personal data of tickets closed longer than ``PRIVBOT_RETENTION_DAYS``.

    Kept: the ticket row's reference, intent(s), status and dates, the deadline history
    and the audit trail (which never holds bodies or codes); everything a requester
    wrote, their address and name, drafts' text and outbox payloads become ``[purged]``.
    Then the personal data kept outside tickets (:func:`_purge_leftovers`), and the
    examples staff corrections copied out of purged tickets (:func:`privbot.learned.forget`).
    """
    settings = services.settings
    if not settings.retention_days:
        return "retention: off"
    cutoff = clock.now() - timedelta(days=settings.retention_days)
    total = 0
    for _ in range(max_batches):
        n = _purge_batch(services, cutoff)
        total += n
        if n < RETENTION_BATCH:
            break
    said = f"retention: {total} tickets purged" if total else "retention: nothing to purge"
    leftovers = _purge_leftovers(services, cutoff)
    # This node's copies of purged tickets' words (staff corrections kept as examples);
    # every node prunes its own file, so this is not under the leftovers' lock.
    examples = learned.forget(services, cutoff)
    if examples:
        leftovers = "; ".join(filter(None, [leftovers, f"{examples} learned examples forgotten with their tickets"]))
    return f"{said}; {leftovers}" if leftovers else said


def _purge_batch(services: Services, cutoff: datetime) -> int:
    now = clock.now()
    with services.db.transaction() as session:
        pick = (
            select(Ticket.id)
            .where(Ticket.purged_at.is_(None), Ticket.status.not_in(OPEN), _ENDED <= cutoff)
            .order_by(Ticket.id)
            .limit(RETENTION_BATCH)
        )
        if session.get_bind().dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        ids = list(session.scalars(pick))
        if not ids:
            return 0
        # The claim: only rows still unpurged are ours (SQLite has no SKIP LOCKED, but
        # its writers are serial, so the condition alone decides).
        claimed = [
            int(i)
            for i in session.scalars(
                update(Ticket)
                .where(Ticket.id.in_(ids), Ticket.purged_at.is_(None))
                .values(
                    purged_at=now, requester=PURGED, requester_name="", chat_id=None, account_id=None, cues=[], updated_at=now,
                )
                .returning(Ticket.id)
                .execution_options(synchronize_session=False)
            )
        ]
        if not claimed:
            return 0
        _scrub(session, claimed)
        for ticket_id in claimed:
            audit.record(session, "purged", ticket_id=ticket_id, retention_days=services.settings.retention_days)
    log.info("retention: purged personal data of %d tickets", len(claimed))
    return len(claimed)


def _purge_leftovers(services: Services, cutoff: datetime) -> str:
    """Personal data kept outside tickets, past the same retention period:

    * shunted messages a person re-ran or discarded before ``cutoff`` are deleted (the
      message's own ticket, if re-running made one, keeps its copy under the rules
      above).  A shunted message still *pending* is a request nobody has answered yet:
      it is kept, and said, however old;
    * a Telegram chat nobody has written from since ``cutoff`` and with no open ticket
      is forgotten: the address it proved, its language and any half-told request.  A
      later message starts afresh (the address is proven again);
    * the newest handled Telegram update (kept for the poll offset when older ones are
      pruned) loses the reply texts it kept for re-sending once they are shown;
    * an auto-reply or bounce recorded before ``cutoff`` without joining a ticket loses
      its text, raw bytes and addresses as a purged ticket's messages do (its row and
      de-duplication key stay).
    """
    with services.db.transaction() as session:
        if not _try_lock(session, _LOCK_RETENTION):
            return ""
        shunted = session.execute(
            delete(Shunted).where(Shunted.status != "pending", Shunted.resolved_at <= cutoff)
        ).rowcount or 0
        open_ticket = exists().where(Ticket.chat_id == TelegramChat.chat_id, Ticket.status.in_(OPEN))
        chats = session.execute(
            delete(TelegramChat).where(TelegramChat.updated_at <= cutoff, ~open_ticket).execution_options(synchronize_session=False)
        ).rowcount or 0
        # Auto-replies and bounces that joined no ticket: nothing else would ever purge
        # them, and a bounce quotes the mail it bounces (names, addresses, codes).
        stray = session.execute(
            update(Message)
            .where(Message.ticket_id.is_(None), Message.created_at <= cutoff, Message.sender != PURGED)
            .values(**_MESSAGE_PURGED)
            .execution_options(synchronize_session=False)
        ).rowcount or 0
        session.execute(
            update(TelegramUpdate)
            .where(TelegramUpdate.processed_at <= cutoff, TelegramUpdate.replied.is_(True), TelegramUpdate.chat_id.is_not(None))
            .values(replies=[], chat_id=None)
            .execution_options(synchronize_session=False)
        )
        waiting = session.scalar(select(func.count(Shunted.id)).where(Shunted.status == "pending", Shunted.created_at <= cutoff)) or 0
        if shunted or chats or stray:
            audit.record(session, "retention", shunted_deleted=shunted, telegram_chats_forgotten=chats, stray_auto_replies_purged=stray)
    said = []
    if shunted or chats:
        said.append(f"{shunted} resolved shunted messages deleted, {chats} idle Telegram chats forgotten")
    if stray:
        said.append(f"{stray} auto-replies and bounces that joined no ticket purged")
    if waiting:
        log.warning("retention: %d shunted messages older than the retention period still wait for a person", waiting)
        said.append(f"{waiting} shunted messages older than that still wait for a person (privbot reprocess)")
    return "; ".join(said)


def _scrub(session: Session, ids: list[int]) -> None:
    def bulk(model: Any, where: Any, **values: Any) -> None:
        session.execute(update(model).where(where).values(**values).execution_options(synchronize_session=False))

    bulk(Message, Message.ticket_id.in_(ids), **_MESSAGE_PURGED)
    bulk(Draft, Draft.ticket_id.in_(ids), subject=PURGED, text=PURGED, html="")
    bulk(OutboxItem, OutboxItem.ticket_id.in_(ids) & OutboxItem.status.in_(("sent", "failed")),
         payload=b"", subject=PURGED, recipient=PURGED)
    bulk(Challenge, Challenge.ticket_id.in_(ids), address=PURGED)


# ---------------------------------------------------------------------------- reporting


def reminders_for(session: Session, ticket_id: int) -> list[dict[str, Any]]:
    """The reminders and escalations sent about one ticket (for the console and ``show``)."""
    rows = session.scalars(select(Reminder).where(Reminder.ticket_id == ticket_id).order_by(Reminder.id))
    return [{"kind": r.kind, "due_at": r.due_at, "sent_at": r.sent_at} for r in rows]

