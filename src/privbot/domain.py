"""Plain values shared by every stage of privbot.

Channels produce an :class:`Inbound`; the pipeline hands values, never sessions or
sockets, from stage to stage.  Nothing in this module does I/O, so every other module
may import it without pulling in a database, a network library or a template engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Intent(StrEnum):
    ACCESS = "access"
    CORRECTION = "correction"
    DELETION = "deletion"
    WITHDRAWAL = "withdrawal"
    CANCELLATION = "cancellation"
    OTHER = "other"


#: The five rights a privacy policy grants; ``other`` is everything else.
PRIVACY_INTENTS: tuple[Intent, ...] = (
    Intent.ACCESS,
    Intent.CORRECTION,
    Intent.DELETION,
    Intent.WITHDRAWAL,
    Intent.CANCELLATION,
)


class Status(StrEnum):
    RECEIVED = "received"
    AWAITING_CLARIFICATION = "awaiting_clarification"
    AWAITING_VERIFICATION = "awaiting_verification"
    VERIFIED = "verified"
    AWAITING_APPROVAL = "awaiting_approval"
    ANSWERED = "answered"
    CLOSED = "closed"
    REJECTED = "rejected"
    WITHDRAWN_BY_REQUESTER = "withdrawn_by_requester"
    TRIAGE = "triage"


#: States in which a ticket still owes the requester an answer.
OPEN_STATUSES: frozenset[Status] = frozenset(
    {
        Status.RECEIVED,
        Status.AWAITING_CLARIFICATION,
        Status.AWAITING_VERIFICATION,
        Status.VERIFIED,
        Status.AWAITING_APPROVAL,
    }
)


class Channel(StrEnum):
    EMAIL = "email"
    TELEGRAM = "telegram"


@dataclass(frozen=True)
class Inbound:
    """One message as a channel received it, before privbot decided anything.

    ``text`` is the new text the person wrote (quotes, signatures and disclaimers
    removed); ``full_text`` is everything, kept for the record.  ``auto_reason`` is set
    by the channel when the message announces itself as automatic (out-of-office,
    bounce, list mail): such messages are recorded and never answered.
    """

    channel: Channel
    sender: str  # normalised address for mail, "telegram:<chat id>" for chat
    text: str
    subject: str = ""
    full_text: str = ""
    sender_name: str = ""
    message_id: str = ""
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    raw: bytes | None = None
    auto_reason: str | None = None
    #: The receiving server's ``Authentication-Results`` said SPF/DKIM/DMARC passed
    #: for the sender's domain (used by the mailbox-control verification policy).
    sender_authenticated: bool = False
    chat_id: int | None = None
    language_hint: str = ""
    received_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def body_for_record(self) -> str:
        return self.full_text or self.text


@dataclass(frozen=True)
class Classification:
    """What the classifier made of a message's new text."""

    intent: Intent
    intents: tuple[Intent, ...]  # primary first, then secondary ones
    confidence: float
    language: str  # ISO 639-1 code, e.g. "en", "zh"
    cues: tuple[str, ...] = ()  # words / rules that decided, shown to staff

    @property
    def cue_kinds(self) -> list[str]:
        """The cues without the requester's words they quote: ``deletion: "erase
        everything on alice@…"`` → ``deletion:``, ``access: clause "…"`` → ``access:
        clause``, ``model: access 0.91`` as it is.  What the audit trail keeps — it is never
        purged, and a quoted phrase can hold a name or an address; the ticket keeps the
        whole cues until its personal data is purged."""
        return [cue.split('"', 1)[0].rstrip() for cue in self.cues]

    def to_json(self) -> dict[str, object]:
        return {
            "intent": str(self.intent),
            "intents": [str(i) for i in self.intents],
            "confidence": round(self.confidence, 4),
            "language": self.language,
        }


@dataclass(frozen=True)
class IntakeResult:
    """What ``intake()`` did with one Inbound; channels use it to acknowledge."""

    action: str  # opened | triage | threaded | duplicate | auto_reply | clarified | verified
    ticket_ref: str | None = None
    status: Status | None = None
    detail: str = ""


REF_PREFIX = "PRIV-"
REF_RE = re.compile(r"\[?\bPRIV-(\d{6,})\b\]?")


def format_ref(ticket_id: int) -> str:
    return f"{REF_PREFIX}{ticket_id:06d}"


def parse_ref(text: str) -> int | None:
    """The ticket id named by the first ``PRIV-000042`` in ``text``, if any."""
    if not text or REF_PREFIX not in text:  # the pattern's literal part: most texts stop here
        return None
    m = REF_RE.search(text)
    return int(m.group(1)) if m else None
