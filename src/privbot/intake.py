"""The pipeline: one Inbound in, one committed decision out.

Every channel calls :func:`intake` and acknowledges its source (SMTP ``250``, IMAP
move, Telegram offset) only after it returns, because it returns only after its one
transaction has committed.  Inside that transaction, in order:

1. **dedupe** — the same delivery (by Message-ID, else a hash of the bytes) is a no-op;
2. **thread** — a reply to one of our messages, or naming ``[PRIV-000042]``, joins its
   ticket, but only when it comes from that ticket's requester;
3. **auto-replies and bounces** are recorded and never answered;
4. **classify** the new text; **open the ticket** with its deadline;
5. **verify** decides whether a challenge is needed;
6. **draft** the acknowledgement (or a clarification) and write it to the outbox.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, String, and_, any_, bindparam, cast, func, literal_column, null, or_, select, text, union_all
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from privbot import audit, clock, deadlines, replies, verify
from privbot.domain import Classification, Inbound, IntakeResult, Intent, Status, parse_ref
from privbot.store import ids
from privbot.store.bulk import add_new, commit_with_inserts, read_batch
from privbot.store.models import Draft, Message, OutboxItem, Ticket

if TYPE_CHECKING:
    from privbot.app import Services
    from privbot.config import Settings

log = logging.getLogger(__name__)


def _message_id_key(message_id: str) -> str:
    """The dedupe key of a delivery that has a Message-ID."""
    return "mid:" + message_id.strip()[:290]


def dedupe_key(inbound: Inbound) -> str:
    if inbound.message_id:
        return _message_id_key(inbound.message_id)
    h = hashlib.sha256()
    h.update(inbound.raw if inbound.raw is not None else f"{inbound.channel}\0{inbound.sender}\0{inbound.subject}\0{inbound.text}".encode())
    return "sha:" + h.hexdigest()


def intake(services: Services, inbound: Inbound, *, classification: Classification | None = None) -> IntakeResult:
    """Record ``inbound`` and everything it causes, in one transaction."""
    key = dedupe_key(inbound)
    try:
        with services.db.transaction() as session:
            return _intake(services, session, inbound, key, classification)
    except IntegrityError:
        # Another process committed the same delivery between our check and our insert.
        with services.db.transaction() as session:
            if session.scalar(select(Message.id).where(Message.dedupe_key == key)) is not None:
                return IntakeResult("duplicate")
        raise


def _intake(
    services: Services, session: Session, inbound: Inbound, key: str, classification: Classification | None,
    seen: dict[str, int | None] | None = None,
) -> IntakeResult:
    """``seen``: a group's deliveries already recorded (key -> ticket id), asked for the
    whole group at once; without it, this delivery is looked up on its own."""
    if seen is None:
        # Only the ticket is wanted: loading the whole row would read the raw bytes too.
        existing = session.execute(select(Message.ticket_id).where(Message.dedupe_key == key)).first()
        known_ticket, duplicate = (existing.ticket_id, True) if existing is not None else (None, False)
    else:
        duplicate, known_ticket = key in seen, seen.get(key)
    if duplicate:
        known = session.get(Ticket, known_ticket) if known_ticket is not None else None
        return IntakeResult("duplicate", known.ref if known else None)
    result = _record(services, session, inbound, key, classification)
    if seen is not None:
        seen[key] = parse_ref(result.ticket_ref) if result.ticket_ref else None
    return result


def _record(services: Services, session: Session, inbound: Inbound, key: str, classification: Classification | None) -> IntakeResult:
    now = clock.now()
    received_at = inbound.received_at or now
    ticket = find_thread(session, inbound)

    message = Message.new_row(
        ticket_id=ticket.id if ticket else None,
        direction="in",
        kind="request",
        channel=str(inbound.channel),
        dedupe_key=key,
        message_id=inbound.message_id[:300],
        in_reply_to=inbound.in_reply_to[:300],
        references=list(inbound.references[-20:]),
        sender=inbound.sender[:320],
        subject=inbound.subject,
        body=inbound.body_for_record,
        new_text=inbound.text,
        raw=inbound.raw,
        auto_reason=inbound.auto_reason,
        created_at=received_at,
    )

    if inbound.auto_reason:
        message.kind = "auto_reply"
        ids.assign(session, message)
        add_new(session, message)
        audit.record(session, "auto_reply_recorded", ticket_id=ticket.id if ticket else None, message=message.id, reason=inbound.auto_reason)
        return IntakeResult("auto_reply", ticket.ref if ticket else None, ticket.status_enum if ticket else None, inbound.auto_reason)

    if ticket is not None:
        message.kind = "reply"
        ids.assign(session, message)
        add_new(session, message)
        ticket.updated_at = now
        audit.record(session, "reply_received", ticket_id=ticket.id, message=message.id)
        handled = verify.on_reply(services, session, ticket, inbound, message)
        if handled:
            return IntakeResult(handled, ticket.ref, ticket.status_enum)
        if ticket.status == Status.AWAITING_CLARIFICATION:
            return _clarified(services, session, ticket, inbound)
        return IntakeResult("threaded", ticket.ref, ticket.status_enum)

    if classification is None:
        # Inside the transaction: a second transaction per message cost more than the
        # overlap it bought (the GIL serialises CPU work in one process anyway).
        classification = services.classifier.classify(inbound.text, inbound.subject, str(inbound.channel))
    return _open_ticket(services, session, inbound, message, classification, received_at)


def _open_ticket(
    services: Services, session: Session, inbound: Inbound, message: Message, c: Classification, received_at: object
) -> IntakeResult:
    settings = services.settings
    now = clock.now()
    is_privacy = c.intent != Intent.OTHER
    # A message that asks for two rights ("delete my account and all my data") splits its
    # confidence between them; that it is a privacy request is then not in doubt.
    asked = [i for i in c.intents if i != Intent.OTHER]
    unsure = is_privacy and c.confidence < settings.clarify_below and len(asked) < 2
    ticket = Ticket.new_row(
        intent=str(c.intent),
        intents=[str(i) for i in c.intents],
        confidence=c.confidence,
        cues=list(c.cues),
        language=c.language or inbound.language_hint or "en",
        status=str(Status.RECEIVED if is_privacy else Status.TRIAGE),
        channel=str(inbound.channel),
        requester=inbound.sender[:320],
        requester_name=inbound.sender_name[:200],
        chat_id=inbound.chat_id,
        received_at=message.created_at,
        due_at=deadlines.due_at(settings, message.created_at, settings.legal_clock),
        legal_clock=settings.legal_clock,
        updated_at=now,
    )
    # The ticket's id is needed at once, for its reference and the audit trail; it is
    # handed out without a flush (store.ids), and the flush writes the ticket before the
    # message (store.bulk writes tables in foreign-key order).
    message.ticket_id = ids.assign(session, ticket)
    add_new(session, ticket)
    add_new(session, message)
    audit.record(
        session,
        "ticket_opened",
        ticket_id=ticket.id,
        channel=ticket.channel,
        intent=ticket.intent,
        intents=ticket.intents,
        confidence=round(c.confidence, 3),
        cues=c.cue_kinds[:10],  # not the words they quote: the audit trail is never purged
        due_at=ticket.due_at.isoformat(),
    )
    # Asked for every new ticket, triage too: a ticket opened later in the same group
    # for the same requester must not count as their first.
    first = _requesters_first_ticket(session, ticket)
    if not is_privacy:
        return IntakeResult("triage", ticket.ref, Status.TRIAGE)

    if first:  # nothing automatic can have gone to them yet: the count would be 0
        allowed = 0 < settings.max_auto_replies_per_day
    elif isinstance(session.info.get(_GROUP), _GroupRequesters):
        # The count autoflushes: in a group, answers queued for this requester by the
        # messages before this one are still waiting to be written, and they count.
        allowed = may_auto_reply(session, settings.max_auto_replies_per_day, ticket.requester)
    else:
        with session.no_autoflush:  # alone, what is pending (this ticket's rows) cannot change the count
            allowed = may_auto_reply(session, settings.max_auto_replies_per_day, ticket.requester)
    if not allowed:
        audit.record(session, "auto_reply_suppressed", ticket_id=ticket.id, why="too many automatic answers to this requester today")
        return IntakeResult("opened", ticket.ref, ticket.status_enum, "no acknowledgement: rate limit")

    if unsure:
        ticket.status = str(Status.AWAITING_CLARIFICATION)
        draft = replies.create_draft(session, settings, services.renderer, ticket, "clarification", needs_approval=False)
        replies.enqueue(session, settings, ticket, draft, answering=message)
        return IntakeResult("opened", ticket.ref, Status.AWAITING_CLARIFICATION)

    extra = verify.on_new_ticket(services, session, ticket, inbound, new=True)
    draft = replies.create_draft(session, settings, services.renderer, ticket, "acknowledgement", needs_approval=False, **extra)
    replies.enqueue(session, settings, ticket, draft, answering=message, scrub=verify.code_scrubber(extra))
    return IntakeResult("opened", ticket.ref, ticket.status_enum)


def _clarified(services: Services, session: Session, ticket: Ticket, inbound: Inbound) -> IntakeResult:
    """The requester answered our clarification question: classify the answer."""
    c = services.classifier.classify(inbound.text, inbound.subject, str(inbound.channel))
    if c.intent == Intent.OTHER or c.confidence < services.settings.clarify_below:
        audit.record(session, "clarification_unclear", ticket_id=ticket.id, confidence=round(c.confidence, 3))
        return IntakeResult("threaded", ticket.ref, ticket.status_enum, "still unclear; left for staff")
    ticket.intent = str(c.intent)
    ticket.intents = [str(i) for i in c.intents]
    ticket.confidence = c.confidence
    ticket.cues = list(c.cues)
    ticket.status = str(Status.RECEIVED)
    audit.record(session, "reclassified", ticket_id=ticket.id, intent=ticket.intent, by="clarification")
    extra = verify.on_new_ticket(services, session, ticket, inbound)
    draft = replies.create_draft(session, services.settings, services.renderer, ticket, "acknowledgement", needs_approval=False, **extra)
    replies.enqueue(session, services.settings, ticket, draft, scrub=verify.code_scrubber(extra))
    return IntakeResult("clarified", ticket.ref, ticket.status_enum)


def find_thread(session: Session, inbound: Inbound) -> Ticket | None:
    """The ticket this message continues, if it comes from that ticket's requester.

    A reference in the subject (or, failing that, the text) or an In-Reply-To /
    References naming one of privbot's own Message-IDs joins the ticket — and so does
    one naming the requester's own earlier message: "nobody has answered the mail
    below" chases that request, and must not open a second ticket beside it.  A
    stranger quoting someone else's reference or mail starts a ticket of their own
    instead: nobody can add to, or verify, another person's request.
    """
    candidates = _named_refs(inbound)
    message_ids = [i for i in (inbound.in_reply_to, *inbound.references) if i][-20:]
    if message_ids:  # no In-Reply-To / References (most first requests): no query at all
        # Ours by their Message-ID; what we received by its dedupe key (both indexed).
        rows = session.execute(
            select(Message.ticket_id, Message.direction).where(
                or_(
                    and_(Message.direction == "out", Message.message_id.in_(message_ids)),
                    Message.dedupe_key.in_([_message_id_key(i) for i in message_ids]),
                ),
                Message.ticket_id.is_not(None),
            )
        ).all()
        candidates.extend(t for t, d in rows if d == "out")  # a reply to our mail first
        candidates.extend(t for t, d in rows if d != "out")
    for ticket_id in candidates:
        ticket = session.get(Ticket, ticket_id)
        if ticket is not None and _same_requester(ticket, inbound):
            return ticket
    return None


def _named_refs(inbound: Inbound) -> list[int]:
    """The ticket ids a reference in the subject, then the text, names."""
    return [ref for ref in (parse_ref(inbound.subject), parse_ref(inbound.text)) if ref is not None]


def _names_a_ticket(inbound: Inbound) -> bool:
    """Whether :func:`find_thread` might join this message to a ticket."""
    return bool(inbound.in_reply_to or inbound.references or _named_refs(inbound))


def _may_open(inbound: Inbound) -> bool:
    """Whether a message (unless it is a repeated delivery) may open a ticket: it is not
    automatic and names none of ours — so it is worth classifying."""
    return not inbound.auto_reason and not _names_a_ticket(inbound)


def _same_requester(ticket: Ticket, inbound: Inbound) -> bool:
    if inbound.chat_id is not None and ticket.chat_id is not None:
        return inbound.chat_id == ticket.chat_id
    return bool(inbound.sender) and ticket.requester == inbound.sender


def may_auto_reply(session: Session, limit: int, recipient: str) -> bool:
    """At most ``limit`` automatic messages to one requester per day, so a burst or a
    loop with another robot never makes privbot a spam cannon.

    Counted per requester (``Ticket.requester``: an address, or ``telegram:<chat>``) and
    per draft, not per outbox row: a chat ticket's outbox rows are addressed to the bare
    chat id, and one draft may go out by chat and by mail.  The count cannot race: the
    caller has already appended to the audit trail, whose lock (PostgreSQL) or
    ``BEGIN IMMEDIATE`` (SQLite) serialises these transactions.
    """
    since = clock.now() - timedelta(days=1)
    sent = session.scalar(
        select(func.count(func.distinct(OutboxItem.draft_id)))
        .join(Draft, Draft.id == OutboxItem.draft_id)
        .join(Ticket, Ticket.id == OutboxItem.ticket_id)
        .where(Ticket.requester == recipient, OutboxItem.created_at >= since, Draft.needs_approval.is_(False))
    )
    return (sent or 0) < limit


#: session.info key: a group transaction's requesters (see :func:`receive_emails`)
_GROUP = "privbot.intake.group"


class _GroupRequesters:
    """Which of a group's requesters have no ticket but the one just opened.

    Asked once per group (one query) instead of a rate-limit count per message."""

    def __init__(self, transaction: object, requesters: set[str], alone: set[str]) -> None:
        self.transaction = transaction
        self.requesters = requesters
        self.alone = alone  # who had no ticket before this group (asked at its start)


def _group_lookup(recorded: Any, with_tickets: Any) -> Any:
    """One query for a group: ``("k", dedupe key, ticket id)`` for each delivery already
    recorded, ``("r", requester, None)`` for each requester who has a ticket."""
    return union_all(
        select(literal_column("'k'"), Message.dedupe_key, Message.ticket_id).where(recorded),
        select(literal_column("'r'"), Ticket.requester, cast(null(), Integer)).where(with_tickets).distinct(),
    )


def _json_values(name: str) -> Any:
    """SQLite: the values of the JSON array passed as ``name``, as a one-column table."""
    return text(f"SELECT value FROM json_each(:{name})").columns(value=String)


#: Built once (building the expression per group cost more than running it): with a
#: JSON array read by ``json_each`` on SQLite, and with arrays on PostgreSQL — one
#: statement whatever the group's size, compiled once and handed to the driver as it is
#: (:func:`privbot.store.bulk.read_batch`; on PostgreSQL in the group's first round trip,
#: :func:`_take_group_postgresql`).
_GROUP_LOOKUP = _group_lookup(Message.dedupe_key.in_(_json_values("keys")), Ticket.requester.in_(_json_values("requesters")))
_GROUP_LOOKUP_PG = _group_lookup(
    Message.dedupe_key == any_(bindparam("keys", type_=ARRAY(String))), Ticket.requester == any_(bindparam("requesters", type_=ARRAY(String)))
)
#: PostgreSQL: one ticket id for each of ``keys`` (the deliveries that may open a ticket)
#: not yet recorded — counted by the database in the same round trip as the lookup, so
#: ticket references stay dense without a second round trip to ask for them.
_FRESH_TICKET_IDS = text(
    f"SELECT CAST('{Ticket.__tablename__}' AS text), nextval(CAST('{Ticket.__tablename__}_id_seq' AS regclass)) "
    f"FROM generate_series(1, (SELECT CAST(count(*) AS int) FROM unnest(CAST(:keys AS text[])) AS k(key) "
    f"WHERE NOT EXISTS (SELECT 1 FROM {Message.__tablename__} AS m WHERE m.dedupe_key = k.key)))"
)


def _take_group_postgresql(session: Session, lookup: dict[str, list[str]], may_open_keys: list[str], counts: dict[str, int]) -> list[Any]:
    """PostgreSQL: a group's first questions in one round trip — the audit lock, the
    chain's tail, the lookup, and the ids the group will use (audit ids among them, so
    after the lock).  Each would be a round trip of its own, and under load every wait
    for an answer also costs the committer its turn for a core behind the processes
    that keep the machine busy: they cost a group more than its INSERTs did."""
    queries = [
        *audit.taking_queries(postgresql=True),
        (_GROUP_LOOKUP_PG, lookup),
        ids.first_block(counts),
        (_FRESH_TICKET_IDS, {"keys": may_open_keys}),
    ]
    _lock, tail, found, block, tickets = read_batch(session.connection(), queries)
    audit.taken(session, tail)
    ids.provide(session, [*block, *tickets])
    return found


def _requesters_first_ticket(session: Session, ticket: Ticket) -> bool:
    """True when ``ticket`` (just opened and flushed) is its requester's only ticket.

    Then no outbox row can belong to any of the requester's tickets, so
    :func:`may_auto_reply`'s count is 0 and need not be run.  Only known inside a
    :func:`receive_emails` group; elsewhere ``False`` (the caller counts).  The group
    asked at its start, holding the audit lock (PostgreSQL) or ``BEGIN IMMEDIATE``
    (SQLite), which keeps other processes' tickets out until its commit.
    """
    group = session.info.get(_GROUP)
    if not isinstance(group, _GroupRequesters) or group.transaction is not session.get_transaction():
        return False
    if ticket.requester not in group.requesters:
        return False
    if ticket.requester in group.alone:
        group.alone.discard(ticket.requester)  # from now on this ticket exists: count for the next
        return True
    return False


def trusted_authserv_ids(settings: Settings, source: str) -> tuple[str, ...] | None:
    """Whose ``Authentication-Results`` to believe.

    Configured ids win.  Otherwise a mailbox read over IMAP believes the topmost header
    (its own server's), while mail that reached our SMTP intake directly believes none:
    there every such header was written by the sender and proves nothing.
    """
    ids = tuple(x.strip() for x in settings.trusted_authserv_ids.split(",") if x.strip())
    if ids:
        return ids
    return None if source.startswith("imap") else ()


#: most messages one :func:`receive_emails` transaction takes: it holds the write lock
#: (SQLite) or the audit lock (PostgreSQL) that other intake waits behind meanwhile
GROUP_MAX = 25
#: audit entries a new request usually causes (opened, challenge issued, queued): a
#: group fetches that many ids at once (PostgreSQL); more are fetched if needed
_AUDIT_PER_NEW = 3


def receive_emails(services: Services, raws: Sequence[bytes], *, sources: Sequence[str]) -> list[IntakeResult] | None:
    """Several messages through the pipeline in ONE transaction (group commit), for a
    channel that drains a backlog; ``None`` when they cannot all be taken that way.

    The results are returned only after the one commit, so a channel that acknowledges
    what it got back keeps exactly-once.  Failure isolation is the caller's fallback:
    on ``None`` nothing at all was committed, and the channel takes the messages one at
    a time with :func:`receive_email`, where a message that fails is shunted alone.
    That happens when any message does not parse or makes the pipeline fail (including
    losing a race with another process over the same delivery).  A database that cannot
    be reached raises :class:`~privbot.store.db.DatabaseUnavailable`, as receive_email does.
    Each message is handled exactly as :func:`intake` would one after the other (the
    later ones see what the earlier ones wrote: a repeated delivery is a duplicate).
    """
    from privbot.channels.parse import UnparseableMessage, parse_email
    from privbot.store.db import DatabaseUnavailable

    if not raws or len(raws) > GROUP_MAX:
        return None
    try:
        inbounds = [
            parse_email(raw, received_at=clock.now(), trusted_authserv_ids=trusted_authserv_ids(services.settings, source))
            for raw, source in zip(raws, sources, strict=True)
        ]
    except UnparseableMessage:
        return None
    # Classified before the transaction, all in one call (a scoring call's fixed cost is
    # then paid once per group, and the write lock is not held meanwhile): every message
    # that may open a ticket — a repeated delivery's answer is simply not used.
    may_open = [i for i, inbound in enumerate(inbounds) if _may_open(inbound)]
    classifications: list[Classification | None] = [None] * len(inbounds)
    try:
        classified = services.classifier.classify_many([(inbounds[i].text, inbounds[i].subject, str(inbounds[i].channel)) for i in may_open])
        for i, c in zip(may_open, classified, strict=True):
            classifications[i] = c
        with services.db.transaction() as session:
            # Every message of a group is recorded in the audit trail: the chain is taken
            # first (on PostgreSQL its lock then also keeps other processes' tickets out
            # of what the lookup finds, until the commit).  One query for the whole group
            # — which deliveries were recorded before, which requesters have tickets;
            # then nothing the group adds needs flushing before the commit, which writes
            # it all with one INSERT per table.
            keys = [dedupe_key(inbound) for inbound in inbounds]
            requesters = {inbound.sender[:320] for inbound in inbounds}
            lookup = {"keys": sorted(set(keys)), "requesters": sorted(requesters)}
            postgresql = session.get_bind().dialect.name == "postgresql"
            if postgresql:
                # What each new request writes (its ticket, message and the answer's copy,
                # a draft, an outbox row, a challenge, audit entries), fetched at once:
                # ids left unused are gaps, except tickets', counted exactly.
                counts = {"messages": len(inbounds) + len(may_open), "drafts": len(may_open), "outbox": len(may_open),
                          "challenges": len(may_open), "audit": _AUDIT_PER_NEW * len(may_open) + len(inbounds) - len(may_open)}
                found = _take_group_postgresql(session, lookup, sorted({keys[i] for i in may_open}), counts)
            else:  # SQLite: BEGIN IMMEDIATE is the lock; the tail and the lookup are local reads
                as_json = {name: json.dumps(values) for name, values in lookup.items()}
                tail, found = read_batch(session.connection(), [*audit.taking_queries(postgresql=False), (_GROUP_LOOKUP, as_json)])
                audit.taken(session, tail)
            seen: dict[str, int | None] = {}
            known_requesters: set[str] = set()
            for kind, value, ticket_id in found:
                if kind == "k":
                    seen[value] = ticket_id
                else:
                    known_requesters.add(value)
            session.info[_GROUP] = _GroupRequesters(session.get_transaction(), requesters, requesters - known_requesters)
            try:
                results = [_intake(services, session, inbound, key, c, seen) for inbound, key, c in zip(inbounds, keys, classifications, strict=True)]
            finally:
                session.info.pop(_GROUP, None)
            if postgresql:
                commit_with_inserts(session)  # one round trip for the rows and the commit
            return results
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # rolled back whole: the caller retries one by one
        log.info("group of %d messages fell back to one at a time (%s)", len(raws), type(exc).__name__)
        return None


def receive_email(services: Services, raw: bytes, *, source: str = "smtp", shunt_on_failure: bool = True) -> IntakeResult | None:
    """The mail channels' one entry point: bytes in, committed result out.

    Bytes that cannot be parsed, or that make the pipeline fail for a reason other than
    the database being unreachable, are kept in the shunt (and count as accepted: the
    sender must not retry a message that will fail the same way).  When the database is
    down the exception propagates, so the channel answers "try again later".
    """
    from privbot import shunt
    from privbot.channels.parse import UnparseableMessage, parse_email
    from privbot.store.db import DatabaseUnavailable

    try:
        inbound = parse_email(raw, received_at=clock.now(), trusted_authserv_ids=trusted_authserv_ids(services.settings, source))
        return intake(services, inbound)
    except DatabaseUnavailable:
        raise
    except UnparseableMessage as exc:
        if not shunt_on_failure:
            return None
        shunt.keep(services, raw, f"unparseable: {exc}", source=source)
        return IntakeResult("shunted", detail=str(exc))
    except Exception as exc:
        log.exception("pipeline failed on a message from %s", source)
        if not shunt_on_failure:
            return None
        shunt.keep(services, raw, f"{type(exc).__name__}: {exc}", source=source)
        return IntakeResult("shunted", detail=type(exc).__name__)
