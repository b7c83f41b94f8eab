"""The Telegram conversation, without Telegram.

A chat user picks (or writes) a request, names the account's email address, proves it
with a one-time code mailed there, and gets a ticket opened through the same
``intake()`` as mail.  This module is that conversation as plain code: a
:class:`ChatEvent` in, the :class:`Reply` values to show out.  The PTB adapter in
``channels/telegram.py`` only translates Telegram updates into events and replies into
Bot API calls, so the conversation is tested and reasoned about without a network.

Why the state lives in the database (``telegram_chats``) and not in PTB's in-memory
ConversationHandler: a restart in the middle of a conversation must resume it.  Why
every handled update is recorded (``telegram_updates``) in the same transaction as the
state it changed: the poll offset is derived from those rows, so an update is
acknowledged to Telegram only after its effects are committed, and an update delivered
again is recognised and never acted on twice (only its stored replies are re-sent).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from privbot import audit, clock, strings, verify
from privbot.channels.mail_out import build_email, new_message_id
from privbot.domain import PRIVACY_INTENTS, Channel, Classification, Inbound, Intent, format_ref
from privbot.logs import mask
from privbot.store.models import Challenge, OutboxItem, TelegramChat, TelegramUpdate, Ticket

if TYPE_CHECKING:
    from privbot.app import Services

log = logging.getLogger(__name__)

#: the buttons /start offers, in this order
BUTTON_INTENTS: tuple[Intent, ...] = (*PRIVACY_INTENTS, Intent.OTHER)
#: rights whose effect cannot be undone: a bound chat still proves the address afresh
FRESH_CODE_INTENTS = frozenset({Intent.DELETION, Intent.CANCELLATION})
#: one-time codes one address may be sent per day from the chat (the bot must not
#: become a way to flood a stranger's mailbox)
MAX_CODES_PER_ADDRESS_PER_DAY = 5
#: wrong codes before a challenge locks, when verify.py does not say otherwise
DEFAULT_MAX_ATTEMPTS = 5
FLOOD_WINDOW = timedelta(minutes=1)
LANGUAGE_FALLBACK = strings.FALLBACK


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ChatEvent:
    """One thing a user did in a private chat, as the adapter understood it."""

    update_id: int
    chat_id: int
    #: the user's message, or the bot's message whose button was pressed
    message_id: int
    kind: str  # text | command | button | other
    text: str = ""
    command: str = ""  # start | status | cancel | help | (anything else: unknown)
    button: str = ""  # callback data, e.g. "intent:deletion"
    language_code: str = ""
    name: str = ""


@dataclass(frozen=True)
class Reply:
    """One thing the bot shows: a new message (with buttons), or an edit of an old one."""

    text: str
    buttons: tuple[tuple[str, str], ...] = ()  # (label, callback data)
    edit_message_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "buttons": [list(b) for b in self.buttons], "edit_message_id": self.edit_message_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reply:
        return cls(data["text"], tuple((str(a), str(b)) for a, b in data.get("buttons") or ()), data.get("edit_message_id"))


@dataclass
class Handled:
    """What handling one event decided; ``replied`` true means the replies already
    reached the user before (a re-delivered update): nothing to send."""

    update_id: int
    outcome: str
    replies: list[Reply] = field(default_factory=list)
    replied: bool = False
    ticket_ref: str | None = None


# --------------------------------------------------------------------------- strings


class Strings:
    """The bot's words in one language: ``templates/telegram/<lang>.toml``, English
    filling any key a translation lacks.  Values are sandboxed Jinja templates; text a
    user typed is only ever passed in as a value."""

    def __init__(self, services: Services, lang: str) -> None:
        self.lang = lang
        self._env = services.renderer.env
        self._data = strings.load(services.settings.templates_dir, "telegram", lang)

    def section(self, name: str) -> dict[str, str]:
        return self._data.get(name, {})

    def say(self, key: str, **values: Any) -> str:
        source = self._data["text"][key]
        return self._env.from_string(source).render(lang=self.lang, **values).strip()

    def greeting(self, name: str) -> str:
        return self._env.from_string(self._data["greeting"]).render(lang=self.lang, name=name).strip()

    def intent(self, intent: str) -> str:
        return self.section("intents").get(intent, intent)

    def state(self, status: str) -> str:
        return self.section("states").get(status, status)

    def date(self, value: datetime) -> str:
        return self._env.filters["date"](value, self.lang)

    def buttons(self) -> tuple[tuple[str, str], ...]:
        labels = self.section("buttons")
        return tuple((labels.get(str(i), str(i)), f"intent:{i}") for i in BUTTON_INTENTS)


def available_languages(templates_dir: Path) -> list[str]:
    return strings.available(templates_dir, "telegram")


def pick_language(templates_dir: Path, *candidates: str) -> str:
    """The first candidate the bot speaks: ``zh-hans`` and ``zh-CN`` count as ``zh``."""
    return strings.pick(templates_dir, "telegram", *candidates)


# ------------------------------------------------------------------- verification API


def _max_attempts(services: Services) -> int:
    return int(getattr(services.settings, "verification_max_attempts", DEFAULT_MAX_ATTEMPTS))


def proof_for(session: Session, ticket: Ticket, inbound: Inbound) -> str | None:
    """How the requester of a chat ticket already proved the address, if they did.

    ``verify.on_new_ticket`` asks this so that a chat ticket whose code was typed in the
    chat (or whose chat was bound to the address by an earlier code) is not sent a
    second challenge.  The claim in ``inbound.extra`` is checked against the database:
    a verified challenge for exactly this address, or a chat bound to it."""
    if inbound.channel != Channel.TELEGRAM or inbound.chat_id is None:
        return None
    how = inbound.extra.get("verified_by", "")
    if how == "telegram_code":
        challenge_id = inbound.extra.get("challenge_id", "")
        challenge = session.get(Challenge, int(challenge_id)) if challenge_id.isdigit() else None
        if challenge is not None and challenge.status == "verified" and challenge.address == ticket.requester:
            return "code typed in the Telegram chat"
    if how == "telegram_bound_chat":
        chat = session.get(TelegramChat, inbound.chat_id)
        if chat is not None and chat.bound_email == ticket.requester:
            return "Telegram chat bound to the address by an earlier code"
    return None


# ---------------------------------------------------------------------- conversation


class Conversation:
    """The chat's steps: ``idle`` → (``await_email``) → ``await_code`` → ``opening`` → ``idle``.

    State keys: ``step``; the request (``intent`` or a stored classification,
    ``text``, ``request_message_id``, ``received_at``); ``email``; ``challenge_id``.
    """

    def __init__(self, services: Services) -> None:
        self.services = services

    # -- entry points used by the adapter -------------------------------------------

    def handle(self, event: ChatEvent) -> Handled:
        """Handle one event to completion (committed) and say what to show."""
        with self.services.db.transaction() as session:
            seen = session.get(TelegramUpdate, event.update_id)
            if seen is not None:
                return Handled(event.update_id, "duplicate", [Reply.from_json(r) for r in seen.replies], seen.replied)
            chat = self._chat(session, event)
            flood = self._flood(session, chat)
            if flood is not None:
                return self._finish(session, event, chat, flood)
            if chat.state.get("step") != "opening":
                decided = self._decide(session, event, chat)
                if decided.outcome != "opening":
                    return self._finish(session, event, chat, decided)
                # replies decided before the opening (e.g. "You chose: ...") are shown with it
                chat.state = {**chat.state, "before": [r.to_json() for r in decided.replies]}
        # The code checked out (or the chat is bound): open the ticket through intake(),
        # which commits on its own; the state says "opening" until the ticket is bound
        # to the chat, so a crash in between resumes here and intake's dedupe (by the
        # request's message id) keeps it one ticket.
        return self._open(event)

    def mark_replied(self, update_id: int) -> None:
        with self.services.db.transaction() as session:
            row = session.get(TelegramUpdate, update_id)
            if row is not None:
                row.replied = True

    def next_offset(self) -> int | None:
        """Where polling resumes: at the first committed update whose replies may not
        have reached the user (Telegram delivers it again, and only its replies are
        re-sent), else just after the newest committed update."""
        with self.services.db.transaction() as session:
            unreplied = session.scalar(select(func.min(TelegramUpdate.update_id)).where(TelegramUpdate.replied.is_(False)))
            if unreplied is not None:
                return int(unreplied)
            last = session.scalar(select(func.max(TelegramUpdate.update_id)))
        return None if last is None else int(last) + 1

    # -- the steps ------------------------------------------------------------------

    def _decide(self, session: Session, event: ChatEvent, chat: TelegramChat) -> Handled:
        state = dict(chat.state or {})
        step = state.get("step", "idle")
        if event.kind == "command":
            return self._command(session, event, chat, state)
        if event.kind == "button":
            return self._button(session, event, chat, state)
        if event.kind != "text" or not event.text.strip():
            return self._handled(event, "non_text", self._strings(chat).say("non_text"))
        if step == "await_email":
            return self._address(session, event, chat, state)
        if step == "await_code":
            return self._code(session, event, chat, state)
        return self._free_text(session, event, chat, state)

    def _command(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any]) -> Handled:
        s = self._strings(chat)
        if event.command == "start":
            chat.state = {"step": "idle"}
            return Handled(event.update_id, "start", [Reply(s.greeting(event.name), s.buttons())])
        if event.command == "cancel":
            busy = state.get("step", "idle") != "idle"
            chat.state = {"step": "idle"}
            return self._handled(event, "cancelled", s.say("cancelled" if busy else "nothing_to_cancel"))
        if event.command == "status":
            return self._handled(event, "status", self._status(session, chat, s))
        if event.command == "forget":
            # The user takes back what the chat proved: it no longer acts for the address
            # (its tickets stay, and their answers still reach the chat and the mailbox).
            bound = chat.bound_email
            chat.bound_email, chat.bound_at = None, None
            chat.state = {"step": "idle"}
            if not bound:
                return self._handled(event, "nothing_to_forget", s.say("nothing_to_forget"))
            audit.record(session, "telegram_chat_unbound")  # no chat id, no address: the trail names nobody
            return self._handled(event, "forgotten", s.say("forgotten", masked=mask(bound)))
        return self._handled(event, "help", s.say("help", privacy_address=self.services.settings.privacy_address))

    def _button(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any]) -> Handled:
        kind, _, value = event.button.partition(":")
        s = self._strings(chat)
        if kind != "intent" or value not in {str(i) for i in BUTTON_INTENTS}:
            return self._handled(event, "unknown_button", s.say("unclear"))
        if state.get("step") in ("await_email", "await_code") and state.get("intent"):
            # a second press on an old keyboard while the first choice is in progress
            return self._handled(event, "busy", s.say("need_code" if state["step"] == "await_code" else "ask_email"))
        intent = Intent(value)
        # Keep the text the user already wrote (an unclear request) as the request's words.
        text = state.get("text") or s.section("buttons").get(value, value)
        state = {
            "step": "idle",
            "intent": str(intent),
            "text": text,
            "request_message_id": state.get("request_message_id") or f"b{event.update_id}",
            "received_at": state.get("received_at") or clock.now().isoformat(),
        }
        chosen = Reply(s.say("chosen", intent=s.intent(value)), edit_message_id=event.message_id)
        handled = self._proceed(session, event, chat, state)
        handled.replies.insert(0, chosen)
        return handled

    def _free_text(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any]) -> Handled:
        c = self.services.classifier.classify(event.text, "", str(Channel.TELEGRAM))
        chat.language = pick_language(self.services.settings.templates_dir, c.language, event.language_code, chat.language)
        s = self._strings(chat)
        request = {
            "text": event.text[:4000],
            "request_message_id": str(event.message_id),
            "received_at": clock.now().isoformat(),
        }
        if c.intent == Intent.OTHER or c.confidence < self.services.settings.clarify_below:
            chat.state = {"step": "idle", **request}
            return Handled(event.update_id, "unclear", [Reply(s.say("unclear"), s.buttons())])
        state = {"step": "idle", "classification": {**c.to_json(), "cues": list(c.cues)[:10]}, **request}
        return self._proceed(session, event, chat, state)

    def _proceed(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any]) -> Handled:
        """The request is known: ask for the address, send a code, or open it now."""
        s = self._strings(chat)
        intent = Intent(state.get("intent") or state["classification"]["intent"])
        if not chat.bound_email:
            chat.state = {**state, "step": "await_email"}
            return self._handled(event, "ask_email", s.say("ask_email"))
        if intent in FRESH_CODE_INTENTS:
            return self._send_code(session, event, chat, state, chat.bound_email)
        chat.state = {**state, "step": "opening", "email": chat.bound_email, "how": "telegram_bound_chat"}
        return Handled(event.update_id, "opening")

    def _address(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any]) -> Handled:
        from privbot.channels.parse import normalise_address

        s = self._strings(chat)
        try:
            checked = validate_email(
                event.text.strip(), check_deliverability=self.services.settings.check_deliverability, test_environment=False
            )
        except EmailNotValidError:
            return self._handled(event, "bad_email", s.say("bad_email"))
        return self._send_code(session, event, chat, state, normalise_address(checked.normalized))

    def _send_code(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any], address: str) -> Handled:
        s = self._strings(chat)
        since = clock.now() - timedelta(days=1)
        sent = session.scalar(select(func.count(Challenge.id)).where(Challenge.address == address, Challenge.created_at >= since))
        if (sent or 0) >= MAX_CODES_PER_ADDRESS_PER_DAY:
            chat.state = {"step": "idle"}
            audit.record(session, "telegram_code_refused", chat_id=chat.chat_id, address=mask(address), why="daily limit")
            return self._handled(event, "too_many_codes", s.say("too_many_codes", privacy_address=self.services.settings.privacy_address))
        challenge, code = verify.issue_challenge(session, self.services.settings, address)
        minutes = max(1, int((challenge.expires_at - challenge.created_at).total_seconds() // 60))
        self._mail_code(session, chat, address, code, minutes)
        chat.state = {**state, "step": "await_code", "email": address, "challenge_id": challenge.id, "how": "telegram_code"}
        audit.record(session, "telegram_code_sent", chat_id=chat.chat_id, challenge=challenge.id, address=mask(address))
        return self._handled(event, "code_sent", s.say("code_sent", masked=mask(address), minutes=minutes))

    def _mail_code(self, session: Session, chat: TelegramChat, address: str, code: str, minutes: int) -> None:
        """The code goes by mail only (never into the chat): whoever reads it controls the mailbox."""
        settings = self.services.settings
        rendered = self.services.renderer.render(
            "telegram_code", chat.language, code=code, minutes=minutes, privacy_address=settings.privacy_address
        )
        message_id = new_message_id(settings.privacy_address)
        now = clock.now()
        session.add(
            OutboxItem(
                channel=str(Channel.EMAIL),
                recipient=address,
                message_id=message_id,
                subject=rendered.subject,
                payload=build_email(
                    sender=settings.privacy_address, to=address, subject=rendered.subject, text=rendered.text, message_id=message_id
                ),
                next_attempt_at=now,
                created_at=now,
            )
        )

    def _code(self, session: Session, event: ChatEvent, chat: TelegramChat, state: dict[str, Any]) -> Handled:
        s = self._strings(chat)
        typed = "".join(event.text.split())
        challenge = session.get(Challenge, state.get("challenge_id"))
        if challenge is None:
            chat.state = {"step": "idle"}
            return self._handled(event, "expired", s.say("expired"))
        result = verify.check_code(session, self.services.settings, challenge, typed)
        if result == "ok":
            chat.state = {**state, "step": "opening"}
            return Handled(event.update_id, "opening")
        if result == "wrong" and challenge.status != "locked" and challenge.attempts < _max_attempts(self.services):
            return self._handled(event, "wrong_code", s.say("wrong_code", left=_max_attempts(self.services) - challenge.attempts))
        chat.state = {"step": "idle"}
        outcome = "expired" if result == "expired" else "locked"
        audit.record(session, f"telegram_code_{outcome}", chat_id=chat.chat_id, challenge=challenge.id)
        return self._handled(event, outcome, s.say(outcome))

    def _open(self, event: ChatEvent) -> Handled:
        from privbot.intake import intake

        with self.services.db.transaction() as session:
            chat = session.get(TelegramChat, event.chat_id)
            assert chat is not None
            state = dict(chat.state)
            lang = chat.language
        if "classification" in state:
            c = state["classification"]
            classification = Classification(
                Intent(c["intent"]), tuple(Intent(i) for i in c["intents"]), float(c["confidence"]), c["language"], tuple(c.get("cues", ()))
            )
        else:
            intent = Intent(state["intent"])
            classification = Classification(intent, (intent,), 1.0, lang, ("chosen with a button",))
        inbound = Inbound(
            channel=Channel.TELEGRAM,
            sender=state["email"],
            text=state["text"],
            message_id=f"tg:{event.chat_id}:{state['request_message_id']}",
            chat_id=event.chat_id,
            language_hint=lang,
            received_at=datetime.fromisoformat(state["received_at"]),
            # verify.on_new_ticket: this requester has just proven the address (by a
            # code typed in the chat, or earlier, binding the chat): no second challenge.
            extra={"verified_by": state.get("how", "telegram_code"), "challenge_id": str(state.get("challenge_id", ""))},
        )
        result = intake(self.services, inbound, classification=classification)
        with self.services.db.transaction() as session:
            chat = session.get(TelegramChat, event.chat_id)
            assert chat is not None
            s = self._strings(chat)
            ref_id = int(result.ticket_ref.split("-")[1]) if result.ticket_ref else None
            ticket = session.get(Ticket, ref_id) if ref_id else None
            if ticket is None:  # cannot happen with a privacy or "other" classification
                chat.state = {"step": "idle"}
                return self._finish(session, event, chat, self._handled(event, "failed", s.say("unclear")))
            if not ticket.verified:  # verify.on_new_ticket normally did this inside intake()
                verify.complete_verification(self.services, session, ticket, state.get("how", "telegram_code"))
            if chat.bound_email != state["email"]:
                chat.bound_email, chat.bound_at = state["email"], clock.now()
                audit.record(session, "telegram_chat_bound", ticket_id=ticket.id, chat_id=chat.chat_id, address=mask(state["email"]))
            chat.state = {"step": "idle"}
            text = s.say("opened", intent=s.intent(ticket.intent), ref=ticket.ref, due=s.date(ticket.due_at), email=mask(state["email"]))
            handled = self._handled(event, "opened", text)
            handled.replies[:0] = [Reply.from_json(r) for r in state.get("before", [])]
            handled.ticket_ref = ticket.ref
            return self._finish(session, event, chat, handled)

    def _status(self, session: Session, chat: TelegramChat, s: Strings) -> str:
        who = [Ticket.chat_id == chat.chat_id]
        if chat.bound_email:  # the chat proved this address: its mailed requests are its own too
            who.append(Ticket.requester == chat.bound_email)
        tickets = session.scalars(select(Ticket).where(or_(*who)).order_by(Ticket.id)).all()
        if not tickets:
            return s.say("status_none")
        lines = [s.say("status_header")]
        for t in tickets:
            lines.append(s.say("status_line", ref=t.ref, intent=s.intent(t.intent), state=s.state(t.status), due=s.date(t.due_at)))
        return "\n".join(lines)

    # -- bookkeeping ----------------------------------------------------------------

    def _chat(self, session: Session, event: ChatEvent) -> TelegramChat:
        query = select(TelegramChat).where(TelegramChat.chat_id == event.chat_id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()  # one chat's updates never interleave
        chat = session.scalar(query)
        if chat is None:
            chat = TelegramChat(
                chat_id=event.chat_id,
                language=pick_language(self.services.settings.templates_dir, event.language_code),
                state={"step": "idle"},
                flood_count=0,
                flood_noticed=False,
                updated_at=clock.now(),
            )
            session.add(chat)
            session.flush()
        elif event.kind == "command" and event.command == "start" and event.language_code:
            chat.language = pick_language(self.services.settings.templates_dir, event.language_code, chat.language)
        return chat

    def _flood(self, session: Session, chat: TelegramChat) -> Handled | None:
        """At most N events per chat per minute; past that one notice, then silence."""
        now = clock.now()
        if chat.flood_window_start is None or now - chat.flood_window_start >= FLOOD_WINDOW:
            chat.flood_window_start, chat.flood_count, chat.flood_noticed = now, 0, False
        chat.flood_count += 1
        if chat.flood_count <= self.services.settings.telegram_flood_per_minute:
            return None
        if chat.flood_noticed:
            return Handled(0, "flood_ignored")
        chat.flood_noticed = True
        audit.record(session, "telegram_flood", chat_id=chat.chat_id, limit=self.services.settings.telegram_flood_per_minute)
        return Handled(0, "flood_notice", [Reply(self._strings(chat).say("flood"))])

    def _finish(self, session: Session, event: ChatEvent, chat: TelegramChat, handled: Handled) -> Handled:
        handled.update_id = event.update_id
        chat.updated_at = clock.now()
        session.add(
            TelegramUpdate(
                update_id=event.update_id,
                chat_id=event.chat_id,
                outcome=handled.outcome[:32],
                replies=[r.to_json() for r in handled.replies],
                replied=not handled.replies,
                processed_at=clock.now(),
            )
        )
        session.flush()
        log.info("telegram update %s: %s", event.update_id, handled.outcome)
        return handled

    def _strings(self, chat: TelegramChat) -> Strings:
        return Strings(self.services, chat.language or LANGUAGE_FALLBACK)

    @staticmethod
    def _handled(event: ChatEvent, outcome: str, text: str) -> Handled:
        return Handled(event.update_id, outcome, [Reply(text)])


#: handled updates are kept this long (re-deliveries come within Telegram's 24 hours)
KEEP_UPDATES = timedelta(days=30)
#: a conversation left half-way (address or code never given) is forgotten after this
STALE_CONVERSATION = timedelta(days=7)


def prune(services: Services) -> str:
    """The hourly sweep: forget old handled updates (but never the newest, which the
    poll offset is derived from) and conversations abandoned half-way."""
    from sqlalchemy import delete

    now = clock.now()
    with services.db.transaction() as session:
        newest = session.scalar(select(func.max(TelegramUpdate.update_id)))
        if newest is None:
            return "telegram: nothing to prune"
        forgotten = session.execute(
            delete(TelegramUpdate).where(
                TelegramUpdate.processed_at < now - KEEP_UPDATES, TelegramUpdate.replied.is_(True), TelegramUpdate.update_id < newest
            )
        ).rowcount
        stale = 0
        for chat in session.scalars(select(TelegramChat).where(TelegramChat.updated_at < now - STALE_CONVERSATION)):
            if (chat.state or {}).get("step", "idle") not in ("idle", "opening"):
                chat.state = {"step": "idle"}
                stale += 1
    return f"telegram: {forgotten or 0} old updates forgotten, {stale} abandoned conversations reset"


def event_as_dict(event: ChatEvent) -> dict[str, Any]:
    """For logs and debugging: the event without its text."""
    data = asdict(event)
    data.pop("text", None)
    return data


__all__ = ["ChatEvent", "Conversation", "Handled", "Reply", "Strings", "format_ref", "pick_language"]
