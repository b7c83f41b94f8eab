"""The tables privbot keeps.

Deadlines are columns (``due_at``, ``next_attempt_at``) that the sweeps scan; work is
claimed by conditional UPDATEs on ``status`` columns, so several privbot processes can
share one PostgreSQL.  Times are stored in UTC and always come back timezone-aware.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from privbot.domain import Intent, Status, format_ref


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}

    @classmethod
    def new_row(cls, **values: Any) -> Self:
        """A new object with its column values put straight into place.

        For the rows the intake writes several of per message (:mod:`privbot.store.bulk`
        writes them): the declarative constructor's bookkeeping per attribute — history,
        events — cost more than the INSERT, and a new row has no history to keep.  Only
        columns may be given (a relationship set this way would not reach its other side);
        the object is then added to a session like any other, and later changes to it
        are tracked as usual."""
        columns = _COLUMNS.get(cls)
        if columns is None:
            columns = _COLUMNS[cls] = frozenset(prop.key for prop in cls.__mapper__.column_attrs)
        unknown = values.keys() - columns
        if unknown:
            raise TypeError(f"{cls.__name__} has no column {sorted(unknown)[0]!r}")
        obj = cls.__mapper__.class_manager.new_instance()
        obj.__dict__.update(values)
        return obj


_COLUMNS: dict[type, frozenset[str]] = {}


def _only(condition: str) -> dict[str, Any]:
    """A partial index's condition, the same on both backends."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        #: the deadline sweep's scan: open statuses by due date
        Index("ix_tickets_status_due", "status", "due_at"),
        # Only the rows that have a value are ever looked up (a chat's tickets; tickets
        # whose clock is paused): the others, most of them, stay out of the index.
        Index("ix_tickets_chat_id_set", "chat_id", **_only("chat_id IS NOT NULL")),
        Index("ix_tickets_paused", "clock_paused_at", **_only("clock_paused_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    intent: Mapped[str] = mapped_column(String(20))
    intents: Mapped[list[str]] = mapped_column(JSON, default=list)
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    cues: Mapped[list[str]] = mapped_column(JSON, default=list)
    language: Mapped[str] = mapped_column(String(8), default="en")
    status: Mapped[str] = mapped_column(String(32))  # indexed by ix_tickets_status_due (status first)
    channel: Mapped[str] = mapped_column(String(16))
    requester: Mapped[str] = mapped_column(String(320), index=True)
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    #: Telegram chat ids exceed 32 bits (user ids up to 52 bits, groups negative)
    chat_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    legal_clock: Mapped[str] = mapped_column(String(16), default="default")
    extended: Mapped[bool] = mapped_column(Boolean, default=False)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    account_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: when the legal clock stopped (UK: waiting for identity or clarification); see deadlines
    clock_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: total seconds the clock has stood still, which also moves the end of the first period
    paused_seconds: Mapped[int] = mapped_column(Integer, default=0)
    #: personal data removed by the retention sweep
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    messages: Mapped[list[Message]] = relationship(back_populates="ticket", order_by="Message.id")
    drafts: Mapped[list[Draft]] = relationship(back_populates="ticket", order_by="Draft.id")

    @property
    def ref(self) -> str:
        return format_ref(self.id)

    @property
    def intent_enum(self) -> Intent:
        return Intent(self.intent)

    @property
    def status_enum(self) -> Status:
        return Status(self.status)


class Message(Base):
    """Every message in or out, on a ticket or not (auto-replies are kept too)."""

    __tablename__ = "messages"
    #: threading looks up privbot's own messages by Message-ID, never a requester's
    #: (a repeated delivery is found by dedupe_key): only outgoing ids are indexed
    __table_args__ = (
        Index("ix_messages_out_message_id", "message_id", **_only("direction = 'out'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True, index=True)
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    kind: Mapped[str] = mapped_column(String(20))  # request | reply | auto_reply | ack | answer | ...
    channel: Mapped[str] = mapped_column(String(16))
    #: unique key of an inbound delivery: its Message-ID, or a hash of its bytes
    dedupe_key: Mapped[str | None] = mapped_column(String(300), unique=True, nullable=True)
    message_id: Mapped[str] = mapped_column(String(300), default="")
    in_reply_to: Mapped[str] = mapped_column(String(300), default="")
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    sender: Mapped[str] = mapped_column(String(320), default="")
    recipient: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    new_text: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    auto_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    ticket: Mapped[Ticket | None] = relationship(back_populates="messages")


class Draft(Base):
    """A reply being prepared: an acknowledgement, an answer, a notice."""

    __tablename__ = "drafts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # acknowledgement | answer | clarification | extension | ...
    intent: Mapped[str | None] = mapped_column(String(20), nullable=True)
    language: Mapped[str] = mapped_column(String(8), default="en")
    subject: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    #: pending (waits for staff) | approved | sent | denied | superseded
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    needs_approval: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    edited_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    denial_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: first of two approvals, for rights whose answer needs a second person
    reviewed_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    ticket: Mapped[Ticket] = relationship(back_populates="drafts")


class OutboxItem(Base):
    """Something to send, written in the same transaction as what caused it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True, index=True)
    draft_id: Mapped[int | None] = mapped_column(ForeignKey("drafts.id"), nullable=True)
    channel: Mapped[str] = mapped_column(String(16))  # email | telegram
    recipient: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(300), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    #: the complete RFC 5322 message for email; UTF-8 text for chat
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    #: pending | sending | sent | failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    draft: Mapped[Draft | None] = relationship()  # no schema change


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEntry(Base):
    """Append-only, hash-chained record of everything done to a ticket."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: unique: two entries linking to one predecessor would be a fork in the chain
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: not indexed: it hashes prev_hash with the rest, so it is unique when prev_hash is
    hash: Mapped[str] = mapped_column(String(64))

    def canonical(self) -> str:
        return json.dumps(
            [self.ticket_id, self.at.isoformat(), self.actor, self.action, self.detail, self.prev_hash],
            sort_keys=True,
            ensure_ascii=False,
            default=str,
        )


class Shunted(Base):
    """A message that could not be processed, kept whole for a person to re-run."""

    __tablename__ = "shunt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(200), default="")  # e.g. "smtp", "imap:INBOX/123"
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | reprocessed | discarded
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Account(Base):
    """A known customer account, for identity verification."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(64), default="")
    account_id: Mapped[str] = mapped_column(String(200), default="")


class Challenge(Base):
    """A one-time code sent to prove control of a mailbox."""

    __tablename__ = "challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True, index=True)
    address: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: open | verified | locked | expired
    status: Mapped[str] = mapped_column(String(16), default="open")
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Staff(Base):
    __tablename__ = "staff"
    __table_args__ = (UniqueConstraint("email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # agent | approver | admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsoleSession(Base):
    """One staff login, so that logging out ends it on the server too.

    The cookie is signed but cannot be recalled; it names this row by a random token
    whose SHA-256 is all that is kept here, and a session counts only while its row is
    not ended (logout) and younger than the cookie's lifetime."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LoginFailure(Base):
    """A failed console login, counted against the address tried and the client that
    tried it (each key kept as an HMAC under the console's secret): the login throttle,
    the same for every node on one database and kept across restarts.  Rows older than
    the throttle's window are deleted at the next failure."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Lease(Base):
    """Who is doing a job that only one process should do at a time (watching one IMAP
    mailbox, long-polling one Telegram bot), and until when.  Held by renewing it; free once expired or released; taken
    by a conditional UPDATE (:mod:`privbot.leases`)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(400), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TelegramChat(Base):
    """One Telegram chat's conversation with the bot, kept here (not in memory) so a
    restart resumes mid-conversation: the step, the pending request, the language, the
    proven address the chat is bound to, and its flood-control window."""

    __tablename__ = "telegram_chats"

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    language: Mapped[str] = mapped_column(String(8), default="en")
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bound_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    bound_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    flood_window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    flood_count: Mapped[int] = mapped_column(Integer, default=0)
    flood_noticed: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TelegramUpdate(Base):
    """Every Telegram update handled, committed with the state change it caused.

    The poll offset is the highest ``update_id`` here plus one, so an update is only
    acknowledged to Telegram after this row exists; an update delivered again (crash
    before the acknowledgement) is recognised here and only its stored replies are
    sent again (``replied`` false), never its effects repeated."""

    __tablename__ = "telegram_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    chat_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    replies: Mapped[list[Any]] = mapped_column(JSON, default=list)
    replied: Mapped[bool] = mapped_column(Boolean, default=False)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Reminder(Base):
    """One reminder or escalation about one deadline of one ticket.

    The unique key is the claim: the process whose INSERT succeeds sends the mail (in
    the same transaction); every other process's INSERT conflicts and sends nothing.
    ``due_at`` is part of the key, so a deadline that moves (extension, UK clock stop)
    earns its own reminders."""

    __tablename__ = "reminders"
    __table_args__ = (UniqueConstraint("ticket_id", "kind", "due_at", name="uq_reminders_ticket_kind_due"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    #: due-7d | due-3d | due-1d (any configured offset) | overdue | confirm-receipt
    kind: Mapped[str] = mapped_column(String(32))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeadlineEvent(Base):
    """The deadline history of a ticket: every change of ``due_at``, why and by whom."""

    __tablename__ = "deadline_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(320))
    #: extended | paused | resumed
    kind: Mapped[str] = mapped_column(String(16))
    old_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    new_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
