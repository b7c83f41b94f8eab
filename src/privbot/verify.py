"""Identity verification: proving the requester controls the account's mailbox.

Why this module exists: privbot must not hand a copy of someone's data, or delete it, on
the word of whoever typed their address into ``From``.  Each right has a *policy*
(:data:`DEFAULT_POLICY`, overridable with ``PRIVBOT_VERIFY_POLICY``):

* ``mailbox`` — control of the mailbox is enough: the receiving server vouched for the
  sender (``Inbound.sender_authenticated``) or the requester returned a code;
* ``code`` — the requester must return a one-time code mailed to the address;
* ``second_approval`` — the answer also needs a second member of staff (the console
  enforces it; it is recorded here so it can be shown).

No enumeration: known and unknown addresses get word for word the same first answer,
and the same work is done for both (a code is issued either way).  Only once the mailbox
is proven does privbot look the address up and draft either the substantive answers
(``answer_<intent>`` with the account's details) or "we hold no account for this
address" (``no_account``) — always for staff approval.

Codes are 8 random digits, stored only as a salted HMAC-SHA256 under a server key (a
stolen table without the key gives no code), valid ``PRIVBOT_VERIFICATION_CODE_HOURS`` (72), locked after
``PRIVBOT_VERIFICATION_MAX_ATTEMPTS`` (5) wrong tries, with staff told.  Attempts are
counted by a conditional UPDATE, so two processes handling two replies at once can never
allow a sixth try.  Every attempt goes into the audit trail (never the code itself).

Public API (used by the mail hooks below, the Telegram bot and the console):
:func:`issue_challenge`, :func:`check_code`, :func:`mark_verified`, :func:`policy_for`,
:func:`lookup_account`, plus :func:`submit_code` / :func:`complete_verification` which
run the whole "code given → verified → answers drafted" step.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from privbot import audit, clock, replies
from privbot.accounts import ConnectorUnavailable, lookup_account
from privbot.config import ConfigError, Settings
from privbot.domain import PRIVACY_INTENTS, Inbound, Status
from privbot.logs import mask
from privbot.store import ids
from privbot.store.bulk import add_new
from privbot.store.models import Account, Challenge, Draft, Message, OutboxItem, Ticket

if TYPE_CHECKING:
    from privbot.app import Services

__all__ = [
    "DEFAULT_POLICY",
    "check_code",
    "complete_verification",
    "find_codes",
    "issue_challenge",
    "lookup_account",
    "mark_verified",
    "on_new_ticket",
    "on_reply",
    "parse_policy",
    "policy_for",
    "submit_code",
    "sweep",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- policy

NEEDS = frozenset({"mailbox", "code", "second_approval"})

#: What each right needs by default.  Correction needs a code: the data being corrected
#: (a new phone number, a changed address) is never what proves who is asking.
DEFAULT_POLICY: dict[str, frozenset[str]] = {
    "access": frozenset({"code"}),
    "correction": frozenset({"code"}),
    "deletion": frozenset({"code", "second_approval"}),
    "withdrawal": frozenset({"mailbox"}),
    "cancellation": frozenset({"code", "second_approval"}),
}


def parse_policy(text: str) -> dict[str, frozenset[str]]:
    """``"access=code, withdrawal=mailbox, deletion=code+second_approval"`` → mapping.

    ``none`` means no proof at all (only for rights that reveal and change nothing).
    Raises :class:`ConfigError` naming the bad entry.
    """
    out: dict[str, frozenset[str]] = {}
    for entry in re.split(r"[,;\s]+", text.strip()):
        if not entry:
            continue
        right, eq, needs_text = entry.partition("=")
        right = right.strip().lower()
        if not eq or right not in DEFAULT_POLICY:
            raise ConfigError(
                f"PRIVBOT_VERIFY_POLICY: {entry!r}: expected RIGHT=NEED+NEED with RIGHT one of {', '.join(DEFAULT_POLICY)}"
            )
        needs = {n.strip().lower() for n in needs_text.split("+") if n.strip()}
        if needs == {"none"}:
            needs = set()
        bad = needs - NEEDS
        if bad or not needs_text.strip():
            raise ConfigError(f"PRIVBOT_VERIFY_POLICY: {entry!r}: needs are mailbox, code, second_approval or none")
        out[right] = frozenset(needs)
    return out


def policy_for(settings: Settings, intent: str) -> set[str]:
    """What one right needs, e.g. ``{"code"}``, ``{"mailbox"}``, ``{"code", "second_approval"}``.

    Anything that is not one of the five rights gets the strictest ordinary need, a code.
    """
    policy = {**DEFAULT_POLICY, **(parse_policy(settings.verify_policy) if settings.verify_policy else {})}
    return set(policy.get(str(intent), frozenset({"code"})))


def ticket_needs(settings: Settings, ticket: Ticket) -> set[str]:
    """The union of the needs of every right asked on the ticket: the strictest wins."""
    needs: set[str] = set()
    for intent in ticket.intents or [ticket.intent]:
        if intent in {str(i) for i in PRIVACY_INTENTS}:
            needs |= policy_for(settings, intent)
    return needs


def _mailbox_is_enough(needs: set[str]) -> bool:
    return "code" not in needs and "mailbox" in needs


# ---------------------------------------------------------------------------- codes

CODE_DIGITS = 8
#: a code in a reply: 8 digits, possibly written as "1234 5678" or "1234-5678"; never
#: part of a longer number or of a ticket reference
_CODE_RE = re.compile(r"(?<![\w-])(\d{4})[ \-]?(\d{4})(?![\w-])")
#: one message is one attempt; only its first few code-like numbers are tried, so a
#: message listing thousands of guesses is no better than one guess
MAX_CANDIDATES_PER_MESSAGE = 3


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def server_key(settings: Settings) -> bytes:
    """The secret that keys code hashes: ``PRIVBOT_VERIFY_SECRET``, else a random key
    created once in ``<data dir>/verify.key`` (mode 0600).

    Keyed HMAC rather than a slow password hash: a stolen ``challenges`` table without the
    key gives no code, and hashing costs microseconds instead of the ~25 ms of Argon2 that
    would cap intake at a few dozen requests a second.  Processes on several hosts that
    share one database must share the key (set ``PRIVBOT_VERIFY_SECRET`` everywhere).
    """
    if settings.verify_secret:
        return settings.verify_secret.encode()
    path = settings.data_dir / "verify.key"
    with _KEY_LOCK:
        cached = _KEYS.get(str(path))
        if cached is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                cached = bytes.fromhex(path.read_text().strip())
            else:
                cached = secrets.token_bytes(32)
                with os.fdopen(fd, "w") as fh:
                    fh.write(cached.hex() + "\n")
            _KEYS[str(path)] = cached
        return cached


_KEYS: dict[str, bytes] = {}
_KEY_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)  # one key per deployment; a test run makes a few
def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"privbot-verify-key-id\0" + key).hexdigest()[:8]


def _mac(key: bytes, salt: str, code: str) -> str:
    # hmac.digest is the one-shot C HMAC (hmac.new builds two hash objects in Python).
    return hmac.digest(key, f"{salt}\0{_digits(code)}".encode(), "sha256").hex()


def hash_code(settings: Settings, code: str) -> str:
    """``hmac-sha256$<key id>$<salt>$<mac>``: salted, so equal codes never look equal."""
    key = server_key(settings)
    salt = secrets.token_hex(8)
    return f"hmac-sha256${_key_id(key)}${salt}${_mac(key, salt, code)}"


def _digits(code: str) -> str:
    return _NOT_DIGIT.sub("", code or "")


_NOT_DIGIT = re.compile(r"\D")


def _matches(settings: Settings, code_hash: str, code: str) -> bool:
    scheme, _, rest = code_hash.partition("$")
    key_id, salt, mac = (rest.split("$") + ["", "", ""])[:3]
    key = server_key(settings)
    if scheme != "hmac-sha256" or not mac:
        return False
    if key_id != _key_id(key):
        # Another process issued this code with another key: no code can ever match.
        log.error("verification key differs from the one that issued this code: set PRIVBOT_VERIFY_SECRET alike everywhere")
        return False
    return hmac.compare_digest(_mac(key, salt, code), mac)


def find_codes(text: str) -> list[str]:
    """Code-like numbers in a reply's new text, first ones first (at most a few)."""
    found: list[str] = []
    for m in _CODE_RE.finditer(text or ""):
        code = m.group(1) + m.group(2)
        if code not in found:
            found.append(code)
        if len(found) == MAX_CANDIDATES_PER_MESSAGE:
            break
    return found


def issue_challenge(
    session: Session, settings: Settings, address: str, *, ticket_id: int | None = None, new_ticket: bool = False
) -> tuple[Challenge, str]:
    """Store a new challenge for ``address`` and return it with its plain code.

    The caller sends the code (only to ``address``) and never stores or logs it.  Any
    open challenge of the same ticket is superseded, so only the newest code works.
    Do not issue a new challenge for a ticket whose challenge is ``locked``: that would
    hand a guesser a fresh set of tries; staff decide after a lock.  ``new_ticket``: the
    ticket was opened in this transaction, so it has no challenge to supersede.
    """
    now = clock.now()
    if ticket_id is not None and not new_ticket:
        session.execute(
            update(Challenge)
            .where(Challenge.ticket_id == ticket_id, Challenge.status == "open")
            .values(status="superseded")
            .execution_options(synchronize_session="fetch")
        )
    code = new_code()
    challenge = Challenge.new_row(
        ticket_id=ticket_id,
        address=address[:320],
        code_hash=hash_code(settings, code),
        created_at=now,
        expires_at=now + timedelta(hours=settings.verification_code_hours),
        attempts=0,
        status="open",
    )
    ids.assign(session, challenge)
    add_new(session, challenge)
    audit.record(session, "challenge_issued", ticket_id=ticket_id, challenge=challenge.id, expires_at=challenge.expires_at.isoformat())
    return challenge, code


def check_code(session: Session, settings: Settings, challenge: Challenge, code: str) -> str:
    """Try one code: ``"ok"`` | ``"wrong"`` | ``"locked"`` | ``"expired"``.

    Counts the attempt and audits it.  The attempt that reaches the limit returns
    ``"locked"``; so does every later one.  An expired code is refused whether it was
    right or not (and costs no attempt).
    """
    return _attempt(session, settings, challenge, [code])


def _attempt(session: Session, settings: Settings, challenge: Challenge, candidates: list[str], *, via: str = "") -> str:
    now = clock.now()
    if challenge in session.new:  # issued in this transaction and not written yet (store.ids)
        session.flush()
    session.refresh(challenge)
    result: str
    if challenge.status == "verified":
        result = "ok" if any(_matches(settings, challenge.code_hash, c) for c in candidates) else "wrong"
    elif challenge.status == "locked":
        result = "locked"
    elif challenge.status in ("expired", "superseded") or now >= challenge.expires_at:
        if challenge.status == "open":
            challenge.status = "expired"
        result = "expired"
    else:
        # Claim the attempt before checking it: the conditional UPDATE makes the limit
        # hold even when two replies are checked at once by two processes.
        claimed = session.execute(
            update(Challenge)
            .where(Challenge.id == challenge.id, Challenge.status == "open", Challenge.attempts < settings.verification_max_attempts)
            .values(attempts=Challenge.attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        session.refresh(challenge)
        if not claimed:
            result = "locked" if challenge.status in ("open", "locked") else ("ok" if challenge.status == "verified" else "expired")
            if challenge.status == "open":
                challenge.status = "locked"
        elif any(_matches(settings, challenge.code_hash, c) for c in candidates):
            challenge.status = "verified"
            challenge.verified_at = now
            result = "ok"
        elif challenge.attempts >= settings.verification_max_attempts:
            challenge.status = "locked"
            result = "locked"
        else:
            result = "wrong"
    session.flush()
    audit.record(
        session,
        "verification_attempt",
        ticket_id=challenge.ticket_id,
        challenge=challenge.id,
        result=result,
        attempts=challenge.attempts,
        max_attempts=settings.verification_max_attempts,
        **({"via": via} if via else {}),
    )
    return result


def mark_verified(session: Session, ticket: Ticket, how: str, actor: str = "privbot") -> None:
    """Record that the requester proved who they are (``how``: mailbox, code, staff...)."""
    now = clock.now()
    ticket.verified = True
    ticket.verified_at = now
    if ticket.status in (Status.RECEIVED, Status.AWAITING_VERIFICATION):
        ticket.status = str(Status.VERIFIED)
    ticket.updated_at = now
    session.flush()
    audit.record(session, "verified", actor=actor, ticket_id=ticket.id, how=how)


def verification_link(settings: Settings, ticket: Ticket, code: str) -> str:
    """The link offered next to the code when ``PRIVBOT_PUBLIC_URL`` is set.

    The page behind it must ask for a click (a POST) before it calls :func:`submit_code`:
    mail scanners open links by themselves, and a GET must not verify anything.
    """
    if not settings.public_url:
        return ""
    # The page opens in the acknowledgement's language: a person who wrote in Chinese
    # should not confirm on an English page.
    lang = f"&lang={quote(ticket.language)}" if ticket.language else ""
    return f"{settings.public_url.rstrip('/')}/verify/{quote(ticket.ref)}?code={code}{lang}"


# ---------------------------------------------------------------------------- the verified step


def complete_verification(services: Services, session: Session, ticket: Ticket, how: str, actor: str = "privbot") -> None:
    """Mark the ticket verified and draft the substantive answers for staff approval."""
    mark_verified(session, ticket, how, actor)
    draft_answers(services, session, ticket)


def account_context(account: Account) -> dict[str, str]:
    return {"email": account.email, "name": account.name or "", "phone": account.phone or "", "account_id": account.account_id or ""}


def draft_answers(services: Services, session: Session, ticket: Ticket) -> bool:
    """After verification: one draft per requested right (or "no account"), for approval.

    The account is looked up only now, by the proven address, so the first answer could
    not depend on it.  Returns False when the company's database could not be asked; the
    ticket then stays ``verified`` and the sweep tries again.
    """
    settings = services.settings
    try:
        account = lookup_account(session, settings, ticket.requester) if "@" in ticket.requester else None
    except ConnectorUnavailable as exc:
        audit.record(session, "account_lookup_failed", ticket_id=ticket.id, error=str(exc))
        return False
    rights = [i for i in (ticket.intents or [ticket.intent]) if i in {str(p) for p in PRIVACY_INTENTS}]
    if account is None:
        drafts = [replies.create_draft(session, settings, services.renderer, ticket, "answer", template="no_account", needs_approval=True)]
    else:
        ticket.account_id = (account.account_id or account.email)[:200]
        drafts = []
        for right in rights:
            d = replies.create_draft(
                session, settings, services.renderer, ticket, "answer", template=f"answer_{right}",
                needs_approval=True, account=account_context(account),
            )
            d.intent = right
            drafts.append(d)
    second = sorted(r for r in rights if "second_approval" in policy_for(settings, r))
    ticket.status = str(Status.AWAITING_APPROVAL)
    ticket.updated_at = clock.now()
    session.flush()
    audit.record(
        session, "answers_drafted", ticket_id=ticket.id, account_found=account is not None,
        drafts=[d.id for d in drafts], rights=rights, second_approval=second,
    )
    return True


def submit_code(services: Services, session: Session, ticket: Ticket, code_text: str, *, via: str = "email") -> str:
    """A requester gave ``code_text`` for ``ticket`` (a reply, the link, the chat).

    Returns ``"verified"``, ``"code_wrong"``, ``"code_locked"`` (just now or before),
    ``"code_expired"`` or ``"no_challenge"``.  Sends the requester what they need (a
    "wrong code" note, a fresh code after expiry, the lock notice) and tells staff on
    a lock; the caller only reports the result.
    """
    challenge = current_challenge(session, ticket.id)
    if challenge is None:
        return "no_challenge"
    if ticket.verified:
        return "verified"
    was_locked = challenge.status == "locked"
    candidates = find_codes(code_text) or ([_digits(code_text)] if _digits(code_text) else [])
    result = _attempt(session, services.settings, challenge, candidates, via=via)
    if result == "ok":
        complete_verification(services, session, ticket, "code")
        return "verified"
    if result == "locked":
        if not was_locked:
            _locked(services, session, ticket, challenge)
        return "code_locked"
    if result == "expired":
        _send(services, session, ticket, "code_expired", **_fresh_code_context(services, session, ticket))
        return "code_expired"
    remaining = max(services.settings.verification_max_attempts - challenge.attempts, 0)
    _send(services, session, ticket, "code_wrong", remaining=remaining)
    return "code_wrong"


CODE_PLACEHOLDER = "[one-time code]"


def code_scrubber(context: dict[str, Any]) -> Callable[[str], str] | None:
    """What replaces the code (and the link that embeds it) in the records, if the
    message ``context`` carries one; hand it to :func:`replies.enqueue` as ``scrub``."""
    code = str(context.get("code") or "")
    if not code:
        return None
    secrets_ = [s for s in (str(context.get("public_url") or ""), code) if s]

    def scrub(text: str) -> str:
        for s in secrets_:
            text = text.replace(s, CODE_PLACEHOLDER)
        return text

    return scrub


def forget_code(session: Session, draft: Draft, context: dict[str, Any]) -> None:
    """Keep the plain code only in the outgoing mail, not in the records staff read.

    The draft and the thread copy of a message that carried a code get the code (and
    the link that embeds it) replaced, so ``privbot show``, the console and a copy of
    the database reveal no usable code; only the outbox payload carries it to the mail
    server.  (Cheaper, when the draft is not yet queued: ``enqueue(scrub=code_scrubber(context))``,
    which writes the records without the code in the first place.)
    """
    code = str(context.get("code") or "")
    scrub = code_scrubber(context)
    if scrub is None:
        return
    draft.text, draft.html = scrub(draft.text), scrub(draft.html)
    # enqueue() has flushed the thread copy, so no autoflush is needed to find it; and no
    # flush of our own: the scrubbed words reach the database with the commit, before
    # anyone else can read them.
    with session.no_autoflush:
        written = session.scalars(
            select(Message).where(Message.ticket_id == draft.ticket_id, Message.direction == "out", Message.kind == draft.kind)
        ).all()
    for m in written:
        if code in (m.body or ""):
            m.body = scrub(m.body)


def current_challenge(session: Session, ticket_id: int) -> Challenge | None:
    return session.scalar(
        select(Challenge)
        .where(Challenge.ticket_id == ticket_id, Challenge.status != "superseded")
        .order_by(Challenge.id.desc())
        .limit(1)
    )


def _fresh_code_context(services: Services, session: Session, ticket: Ticket) -> dict[str, Any]:
    challenge, code = issue_challenge(session, services.settings, ticket.requester, ticket_id=ticket.id)
    return {
        "code": code,
        "code_hours": services.settings.verification_code_hours,
        "public_url": verification_link(services.settings, ticket, code),
    }


#: message kinds are at most 20 characters (``messages.kind``); templates may be longer
_KIND = {"verification_reminder": "verify_reminder"}


def _send(services: Services, session: Session, ticket: Ticket, template: str, **context: Any) -> None:
    """An automatic message to the requester about verification.

    These bypass the daily automatic-answer limit: each is caused by one message from
    the requester and bounded by the attempt limit (or by the code lifetime).
    """
    kind = _KIND.get(template, template)
    draft = replies.create_draft(
        session, services.settings, services.renderer, ticket, kind, template=template, needs_approval=False, **context
    )
    replies.enqueue(session, services.settings, ticket, draft, scrub=code_scrubber(context))


def _locked(services: Services, session: Session, ticket: Ticket, challenge: Challenge) -> None:
    audit.record(session, "verification_locked", ticket_id=ticket.id, challenge=challenge.id, attempts=challenge.attempts)
    log.warning("%s: verification locked after %d wrong codes", ticket.ref, challenge.attempts)
    _send(services, session, ticket, "code_locked")
    notify_staff(services, session, ticket, "staff_verification_locked", attempts=challenge.attempts)


def notify_staff(services: Services, session: Session, ticket: Ticket, template: str, **context: Any) -> OutboxItem | None:
    """Mail ``PRIVBOT_STAFF_ADDRESS`` (when set) through the outbox; always audited."""
    from privbot.channels.mail_out import build_email, new_message_id

    settings = services.settings
    audit.record(session, "staff_notified", ticket_id=ticket.id, about=template, mailed=bool(settings.staff_address))
    if not settings.staff_address:
        return None
    rendered = services.renderer.render(template, settings.staff_language, **replies.base_context(settings, ticket), **context)
    now = clock.now()
    message_id = new_message_id(settings.privacy_address)
    subject = replies.with_ref(rendered.subject, ticket.ref)
    item = OutboxItem.new_row(
        ticket_id=ticket.id,
        channel="email",
        recipient=settings.staff_address,
        message_id=message_id,
        subject=subject,
        payload=build_email(
            sender=settings.privacy_address, to=settings.staff_address, subject=subject, text=rendered.text,
            html=rendered.html, message_id=message_id, auto_submitted=True,
        ),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(item)
    session.flush()
    return item


# ---------------------------------------------------------------------------- intake hooks


def on_new_ticket(services: Services, session: Session, ticket: Ticket, inbound: Inbound, *, new: bool = False) -> dict[str, Any]:
    """Decide the ticket's verification state; return extra context for the acknowledgement.

    ``new``: the ticket was opened in the caller's transaction (nothing to supersede).

    The acknowledgement's words depend only on the policy and on what the message itself
    proved, never on whether the address has an account.
    """
    settings = services.settings
    needs = ticket_needs(settings, ticket)
    if ticket.verified:
        return {}
    if inbound.chat_id is not None:
        # The chat channel opens a ticket only once the address is proven there (a code
        # typed in the chat, or a chat bound to it by an earlier code): no second code.
        from privbot.chat import proof_for

        how = proof_for(session, ticket, inbound)
        if how:
            complete_verification(services, session, ticket, how)
            return {}
    if not needs - {"second_approval"}:
        complete_verification(services, session, ticket, "policy: no proof needed")
        return {}
    if _mailbox_is_enough(needs) and inbound.sender_authenticated and "@" in ticket.requester:
        complete_verification(services, session, ticket, "mailbox: sender authenticated by the receiving server")
        return {}
    ticket.status = str(Status.AWAITING_VERIFICATION)
    if "@" not in ticket.requester:
        # A chat has no mailbox to send a code to; the chat channel asks for an address
        # and calls issue_challenge() itself.
        audit.record(session, "verification_required", ticket_id=ticket.id, needs=sorted(needs))
        return {}
    _challenge, code = issue_challenge(session, settings, ticket.requester, ticket_id=ticket.id, new_ticket=new)
    return {"code": code, "code_hours": settings.verification_code_hours, "public_url": verification_link(settings, ticket, code)}


def on_reply(services: Services, session: Session, ticket: Ticket, inbound: Inbound, message: Message) -> str | None:
    """Handle a reply on a ticket waiting for verification; return an action name if handled.

    Only a reply that carries something code-like is an attempt: "what code?" or an
    auto-reply that slipped through the parser costs the requester nothing.
    """
    if ticket.status != Status.AWAITING_VERIFICATION or ticket.verified:
        return None
    needs = ticket_needs(services.settings, ticket)
    if _mailbox_is_enough(needs) and inbound.sender_authenticated and "@" in ticket.requester:
        complete_verification(services, session, ticket, "mailbox: sender authenticated by the receiving server")
        return "verified"
    challenge = current_challenge(session, ticket.id)
    if challenge is None:
        return None
    codes = find_codes(inbound.text)
    if not codes:
        return None
    if challenge.status == "locked":
        audit.record(session, "verification_attempt", ticket_id=ticket.id, challenge=challenge.id, result="locked", message=message.id)
        return "code_locked"
    log.info("%s: code attempt from %s", ticket.ref, mask(inbound.sender))
    return submit_code(services, session, ticket, " ".join(codes), via="email")


# ---------------------------------------------------------------------------- sweeps


def sweep(services: Services) -> str:
    """Close long-unverified tickets, remind the slow ones, expire old codes, retry drafts."""
    closed = close_unverified(services)
    reminded = remind_unverified(services)
    expired = expire_codes(services)
    redrafted = retry_drafts(services)
    line = f"verification: {reminded} reminded, {closed} closed unverified, {expired} codes expired"
    return line + (f", {redrafted} answers drafted" if redrafted else "")


def expire_codes(services: Services) -> int:
    with services.db.transaction() as session:
        n = session.execute(
            update(Challenge)
            .where(Challenge.status == "open", Challenge.expires_at <= clock.now())
            .values(status="expired")
            .execution_options(synchronize_session=False)
        ).rowcount
    return int(n or 0)


def close_unverified(services: Services) -> int:
    settings = services.settings
    cutoff = clock.now() - timedelta(days=settings.verification_close_days)
    with services.db.transaction() as session:
        ids = list(session.scalars(select(Ticket.id).where(Ticket.status == Status.AWAITING_VERIFICATION, Ticket.received_at <= cutoff)))
    done = 0
    for ticket_id in ids:
        with services.db.transaction() as session:
            now = clock.now()
            # Claim: only the process whose UPDATE changes the row sends the notice.
            claimed = session.execute(
                update(Ticket)
                .where(Ticket.id == ticket_id, Ticket.status == Status.AWAITING_VERIFICATION)
                .values(status=str(Status.CLOSED), closed_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if not claimed:
                continue
            session.execute(
                update(Challenge)
                .where(Challenge.ticket_id == ticket_id, Challenge.status == "open")
                .values(status="expired")
                .execution_options(synchronize_session=False)
            )
            ticket = session.get(Ticket, ticket_id)
            assert ticket is not None
            session.refresh(ticket)
            audit.record(session, "closed_unverified", ticket_id=ticket_id, days=settings.verification_close_days)
            _send(services, session, ticket, "closed_unverified", close_days=settings.verification_close_days)
            done += 1
    return done


def remind_unverified(services: Services) -> int:
    """One reminder per ticket, with a fresh code (the first has expired by then)."""
    settings = services.settings
    cutoff = clock.now() - timedelta(days=settings.verification_reminder_days)
    with services.db.transaction() as session:
        reminded = select(Challenge.ticket_id).where(Challenge.reminded_at.is_not(None), Challenge.ticket_id.is_not(None))
        locked = select(Challenge.ticket_id).where(Challenge.status == "locked", Challenge.ticket_id.is_not(None))
        ids = list(
            session.scalars(
                select(Ticket.id).where(
                    Ticket.status == Status.AWAITING_VERIFICATION,
                    Ticket.received_at <= cutoff,
                    Ticket.requester.contains("@"),
                    Ticket.id.not_in(reminded),
                    Ticket.id.not_in(locked),
                )
            )
        )
    done = 0
    for ticket_id in ids:
        with services.db.transaction() as session:
            latest = current_challenge(session, ticket_id)
            if latest is None:
                continue
            now = clock.now()
            claimed = session.execute(
                update(Challenge)
                .where(Challenge.id == latest.id, Challenge.reminded_at.is_(None), Challenge.status.in_(("open", "expired")))
                .values(reminded_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            ticket = session.get(Ticket, ticket_id)
            if not claimed or ticket is None or ticket.status != Status.AWAITING_VERIFICATION:
                continue
            context = _fresh_code_context(services, session, ticket)
            fresh = current_challenge(session, ticket_id)
            if fresh is not None:
                fresh.reminded_at = now  # the reminder's own code: never reminded about again
            audit.record(session, "verification_reminder", ticket_id=ticket_id)
            _send(services, session, ticket, "verification_reminder", close_days=settings.verification_close_days, **context)
            done += 1
    return done


def retry_drafts(services: Services) -> int:
    """Verified tickets whose answers could not be drafted (account connector down)."""
    with services.db.transaction() as session:
        ids = list(session.scalars(select(Ticket.id).where(Ticket.status == Status.VERIFIED, Ticket.verified.is_(True))))
    done = 0
    for ticket_id in ids:
        with services.db.transaction() as session:
            ticket = session.scalar(select(Ticket).where(Ticket.id == ticket_id, Ticket.status == Status.VERIFIED).with_for_update(skip_locked=True))
            if ticket is not None and draft_answers(services, session, ticket):
                done += 1
    return done
