"""Drafting replies from templates, approving them, and putting them in the outbox.

Templates live in ``templates/<name>/<lang>.subject|.txt|.html`` where a privacy officer
edits them.  They run in Jinja2's sandbox with StrictUndefined; HTML is autoescaped.
Text from a message is only ever a *value* handed to a template, never template source,
so ``{{ 7*7 }}`` written by a requester stays those characters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from collections.abc import Callable
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateNotFound, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.orm import Session

from privbot import audit, clock
from privbot.channels.mail_out import build_email, header_safe, new_message_id
from privbot.config import Settings
from privbot.domain import Channel, Status
from privbot.store import ids
from privbot.store.bulk import add_new
from privbot.store.models import Draft, Message, OutboxItem, Ticket

DEFAULT_LANGUAGE = "en"
#: how often a template's file, and a template folder, are looked at again for an
#: officer's edits (an edit takes effect within this many seconds)
RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    language: str


class Renderer:
    def __init__(self, templates_dir: Path) -> None:
        self.dir = templates_dir
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        self.env.filters["date"] = _format_date
        #: name -> (when the folder was last looked at, its mtime, languages)
        self._languages: dict[str, tuple[float, int, list[str]]] = {}
        #: template path -> (when it was last checked, the template or None when missing)
        self._templates: dict[str, tuple[float, Template | None]] = {}

    def languages(self, name: str) -> list[str]:
        """The languages ``name`` has a text template in.  Remembered until the folder
        changes (adding or removing a file changes its mtime), so an officer's new
        language is picked up without listing the folder for every message."""
        now = time.monotonic()
        cached = self._languages.get(name)
        if cached is not None and now - cached[0] < RECHECK_SECONDS:
            return list(cached[2])
        folder = self.dir / name
        try:
            mtime = folder.stat().st_mtime_ns
        except OSError:
            self._languages.pop(name, None)
            return []
        if cached is None or cached[1] != mtime:
            found = sorted(p.name.split(".")[0] for p in folder.glob("*.txt")) if folder.is_dir() else []
        else:
            found = cached[2]
        self._languages[name] = (now, mtime, found)
        return list(found)

    def _template(self, path: str) -> Template | None:
        """The compiled template at ``path`` (None if there is none).  Jinja checks a
        template's file for changes on every lookup — three ``stat`` calls for every
        reply drafted; here it is asked at most once every :data:`RECHECK_SECONDS`."""
        now = time.monotonic()
        cached = self._templates.get(path)
        if cached is not None and now - cached[0] < RECHECK_SECONDS:
            return cached[1]
        try:
            template: Template | None = self.env.get_template(path)
        except TemplateNotFound:
            template = None
        self._templates[path] = (now, template)
        return template

    def pick_language(self, name: str, wanted: str) -> str:
        available = self.languages(name)
        if wanted in available:
            return wanted
        if DEFAULT_LANGUAGE in available:
            return DEFAULT_LANGUAGE
        if not available:
            raise TemplateNotFound(f"{name}/*.txt")
        return available[0]

    def render(self, name: str, language: str, **context: Any) -> Rendered:
        lang = self.pick_language(name, language)
        ctx = {"lang": lang, **context}
        subject = header_safe(self._required(f"{name}/{lang}.subject").render(ctx), 500)
        text = self._required(f"{name}/{lang}.txt").render(ctx)
        html_template = self._template(f"{name}/{lang}.html")
        html = html_template.render(ctx) if html_template is not None else ""
        return Rendered(subject, text, html, lang)

    def _required(self, path: str) -> Template:
        template = self._template(path)
        if template is None:
            raise TemplateNotFound(path)
        return template


def _format_date(value: datetime, lang: str = "en") -> str:
    if lang in ("zh", "ja"):
        return f"{value.year}年{value.month}月{value.day}日"
    return value.strftime("%d %B %Y") if lang == "en" else value.strftime("%Y-%m-%d")


def with_ref(subject: str, ref: str) -> str:
    """Every reply carries ``[PRIV-000042]`` in its subject so answers thread back."""
    tag = f"[{ref}]"
    return subject if tag in subject else f"{tag} {subject}".strip()


def base_context(settings: Settings, ticket: Ticket) -> dict[str, Any]:
    return {
        "ref": ticket.ref,
        "intent": ticket.intent,
        "intents": list(ticket.intents or [ticket.intent]),
        "due_at": ticket.due_at,
        "received_at": ticket.received_at,
        "requester_name": ticket.requester_name,
        "privacy_address": settings.privacy_address,
        "channel": ticket.channel,
    }


def create_draft(
    session: Session,
    settings: Settings,
    renderer: Renderer,
    ticket: Ticket,
    kind: str,
    *,
    template: str | None = None,
    needs_approval: bool = True,
    **context: Any,
) -> Draft:
    rendered = renderer.render(template or kind, ticket.language, **base_context(settings, ticket), **context)
    draft = Draft.new_row(
        ticket_id=ticket.id,
        kind=kind,
        intent=ticket.intent,
        language=rendered.language,
        subject=with_ref(rendered.subject, ticket.ref),
        text=rendered.text,
        html=rendered.html,
        status="pending" if needs_approval else "approved",
        needs_approval=needs_approval,
        created_at=clock.now(),
    )
    ids.assign(session, draft)
    add_new(session, draft)
    if needs_approval:  # an automatic message is audited once, when enqueue() queues it
        audit.record(session, "draft_created", ticket_id=ticket.id, draft_id=draft.id, kind=kind)
    # else enqueue() follows at once and audits it
    return draft


def last_inbound(session: Session, ticket: Ticket) -> Message | None:
    return session.scalar(
        select(Message)
        .where(Message.ticket_id == ticket.id, Message.direction == "in", Message.auto_reason.is_(None))
        .order_by(Message.id.desc())
        .limit(1)
    )


def enqueue(
    session: Session,
    settings: Settings,
    ticket: Ticket,
    draft: Draft,
    *,
    answering: Message | None = None,
    scrub: Callable[[str], str] | None = None,
) -> list[OutboxItem]:
    """Write the draft to the outbox (and the thread) in the caller's transaction.

    Email answers go to the ticket's requester — the ``From`` of the request, never
    ``Reply-To`` — threaded onto the last message they sent.  Chat tickets get the
    answer in the chat and, where the address is verified, by mail too.

    ``scrub`` (see :func:`privbot.verify.code_scrubber`): only the outbox payloads keep
    the words it removes; the draft and the thread copies get them scrubbed.
    """
    record = scrub or (lambda text: text)
    items: list[OutboxItem] = []
    now = clock.now()
    if answering is None or answering.direction != "in" or answering.auto_reason is not None:
        # The pipeline passes the message it is answering (the ticket's newest, so the
        # query would find that same one); everyone else asks the database.
        answering = last_inbound(session, ticket)
    if ticket.chat_id is not None:
        items.append(
            OutboxItem.new_row(
                ticket_id=ticket.id,
                draft_id=ids.assign(session, draft),
                channel=Channel.TELEGRAM,
                recipient=str(ticket.chat_id),
                subject=draft.subject,
                payload=draft.text.encode("utf-8"),
                next_attempt_at=now,
                created_at=now,
            )
        )
    if "@" in ticket.requester and (ticket.channel == Channel.EMAIL or ticket.verified):
        message_id = new_message_id(settings.privacy_address)
        refs = list(answering.references or []) if answering else []
        if answering and answering.message_id:
            refs.append(answering.message_id)
        payload = build_email(
            sender=settings.privacy_address,
            to=ticket.requester,
            subject=draft.subject,
            text=draft.text,
            html=draft.html,
            message_id=message_id,
            in_reply_to=answering.message_id if answering else "",
            references=refs,
        )
        items.append(
            OutboxItem.new_row(
                ticket_id=ticket.id,
                draft_id=ids.assign(session, draft),
                channel=Channel.EMAIL,
                recipient=ticket.requester,
                message_id=message_id,
                subject=draft.subject,
                payload=payload,
                next_attempt_at=now,
                created_at=now,
            )
        )
        add_new(
            session,
            Message.new_row(
                ticket_id=ticket.id,
                direction="out",
                kind=draft.kind,
                channel=Channel.EMAIL,
                message_id=message_id,
                in_reply_to=answering.message_id if answering else "",
                references=refs,
                sender=settings.privacy_address,
                recipient=ticket.requester,
                subject=draft.subject,
                body=record(draft.text),
                created_at=now,
            )
        )
    elif ticket.chat_id is not None:
        add_new(
            session,
            Message.new_row(
                ticket_id=ticket.id,
                direction="out",
                kind=draft.kind,
                channel=Channel.TELEGRAM,
                sender=settings.privacy_address,
                recipient=str(ticket.chat_id),
                subject=draft.subject,
                body=record(draft.text),
                created_at=now,
            )
        )
    for item in items:
        ids.assign(session, item)
        add_new(session, item)
    draft.status = "sent"
    if scrub is not None:
        draft.text, draft.html = scrub(draft.text), scrub(draft.html)
    audit.record(session, "queued", ticket_id=ticket.id, draft_id=draft.id, kind=draft.kind, outbox=[i.id for i in items])
    return items


class ApprovalError(Exception):
    """The draft cannot be approved (wrong state, or four-eyes rule)."""


def four_eyes_rights(settings: Settings) -> frozenset[str]:
    """Rights whose answers need two people (deletion and cancellation by default).

    The verification policy (``second_approval``) is the one place this is decided, so
    ``PRIVBOT_VERIFY_POLICY`` changes the console's rule too.
    """
    from privbot.domain import PRIVACY_INTENTS
    from privbot.verify import policy_for  # verify drafts through this module

    return frozenset(str(r) for r in PRIVACY_INTENTS if "second_approval" in policy_for(settings, str(r)))


def approve(session: Session, settings: Settings, ticket: Ticket, staff_email: str, *, draft_id: int | None = None) -> Draft:
    """Approve the ticket's pending draft (the newest, or ``draft_id``) and send it (via the outbox).

    For a right that needs a second person (deletion and cancellation by default) an
    unedited draft's first approval is only recorded: the draft stays ``pending`` until a
    different member of staff approves it.  Callers check ``draft.status``.
    """
    query = select(Draft).where(Draft.ticket_id == ticket.id, Draft.status == "pending")
    if draft_id is not None:
        query = query.where(Draft.id == draft_id)
    draft = session.scalar(query.order_by(Draft.id.desc()).limit(1))
    if draft is None:
        raise ApprovalError(f"{ticket.ref} has no draft waiting for approval")
    # A multi-right ticket has one answer per right: the draft's own right counts too.
    four_eyes = four_eyes_rights(settings)
    right = next((r for r in (draft.intent, ticket.intent) if r in four_eyes), None)
    if right and draft.edited_by and draft.edited_by == staff_email:
        raise ApprovalError(f"{ticket.ref}: a {right} answer needs a second person; {staff_email} edited this draft")
    now = clock.now()
    if right:
        # Four eyes: whoever edited the text, or gave the first approval, is one pair;
        # the approver must be another.  A draft nobody edited needs two approvals.
        if {e for e in (draft.edited_by, draft.reviewed_by) if e} - {staff_email}:
            pass  # a second person already looked: this approval sends it
        elif draft.reviewed_by == staff_email:
            raise ApprovalError(f"{ticket.ref}: {staff_email} already gave the first approval; a second person must approve this {right} answer")
        else:
            draft.reviewed_by, draft.reviewed_at = staff_email, now
            ticket.updated_at = now
            audit.record(session, "first_approval", actor=staff_email, ticket_id=ticket.id, draft_id=draft.id)
            return draft  # still pending: the caller tells staff a second approver is needed
    draft.status = "approved"
    draft.approved_by = staff_email
    draft.approved_at = now
    audit.record(session, "approved", actor=staff_email, ticket_id=ticket.id, draft_id=draft.id)
    enqueue(session, settings, ticket, draft)
    # A ticket asking for several rights has one answer draft per right: it is answered
    # when the last of them is approved.
    others_pending = session.scalar(
        select(Draft.id).where(Draft.ticket_id == ticket.id, Draft.kind == "answer", Draft.status == "pending").limit(1)
    )
    if draft.kind == "answer" and others_pending is None:
        ticket.status = Status.ANSWERED
        ticket.answered_at = now
    ticket.updated_at = now
    return draft


class DraftError(Exception):
    """The draft cannot be changed (it was already sent, approved or replaced)."""


def edit_draft(session: Session, draft: Draft, staff_email: str, subject: str, text: str) -> Draft:
    """Staff rewrite a pending draft; the editor is remembered for the four-eyes rule.

    The HTML part rendered from the template no longer matches the edited words, so it
    is dropped: the requester receives exactly the text that was approved.
    """
    if draft.status != "pending":
        raise DraftError(f"draft #{draft.id} is {draft.status}; only a pending draft can be edited")
    ticket = session.get(Ticket, draft.ticket_id)
    draft.subject = with_ref(header_safe(subject, 500), ticket.ref if ticket else "")
    draft.text = text.replace("\r\n", "\n")
    draft.html = ""
    draft.edited_by = staff_email
    draft.edited_at = clock.now()
    # A first approval was of the old words; the editor is now the first pair of eyes.
    draft.reviewed_by, draft.reviewed_at = None, None
    session.flush()
    audit.record(session, "draft_edited", actor=staff_email, ticket_id=draft.ticket_id, draft_id=draft.id)
    return draft


def deny(
    session: Session, settings: Settings, renderer: Renderer, ticket: Ticket, staff_email: str, reason: str
) -> Draft:
    """Refuse the request: the reason goes to the requester in a ``denial`` notice.

    Pending answers are marked denied (never sent), the notice is queued at once (the
    person denying is the approver), and the ticket becomes ``rejected``.
    """
    reason = reason.strip()
    if not reason:
        raise DraftError("a denial needs a reason: the requester is told why")
    now = clock.now()
    for pending in session.scalars(select(Draft).where(Draft.ticket_id == ticket.id, Draft.status == "pending")):
        pending.status = "denied"
        pending.denial_reason = reason
    # needs_approval: a person decided it, so it is not an automatic reply (rate limits)
    notice = create_draft(session, settings, renderer, ticket, "denial", needs_approval=True, reason=reason)
    notice.status = "approved"
    notice.denial_reason = reason
    notice.approved_by = staff_email
    notice.approved_at = now
    audit.record(session, "denied", actor=staff_email, ticket_id=ticket.id, draft_id=notice.id, reason=reason[:2000])
    enqueue(session, settings, ticket, notice)
    ticket.status = str(Status.REJECTED)
    ticket.closed_at = now
    ticket.updated_at = now
    return notice
