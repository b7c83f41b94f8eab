"""Identity verification as a requester meets it: codes by mail, replies, locks, expiry.

Requests go through the real SMTP intake (smtplib → aiosmtpd → intake) and answers come
out of the real outbox into the Maildir, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import threading
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from privbot import clock, outbox, replies, verify
from privbot.accounts import import_rows
from privbot.app import Services
from privbot.config import ConfigError, load_settings
from privbot.domain import Channel, Classification, Inbound, Intent, Status
from privbot.intake import intake
from privbot.scheduler import run_once, transports_for
from privbot.store.models import AuditEntry, Challenge, Draft, OutboxItem, Ticket
from tests.support import make_mail, outbox_messages, reply_to, send

ALICE = {"email": "alice@example.org", "name": "Alice Liddell", "phone": "+65 5550 1234", "account_id": "WL-1001"}


class Mailbox:
    """What the outbox delivered since the last look (the Maildir accumulates)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.seen: set[str] = set()
        self.pending: list[EmailMessage] = []

    def _pull(self) -> None:
        outbox.deliver_due(self.services.db, transports_for(self.services))
        fresh = [m for m in outbox_messages(self.services.settings.data_dir) if m["Message-ID"] not in self.seen]
        self.seen |= {m["Message-ID"] for m in fresh}
        self.pending.extend(fresh)

    def new(self) -> list[EmailMessage]:
        self._pull()
        out, self.pending = self.pending, []
        return out

    def one(self, to: str = "alice@example.org") -> EmailMessage:
        self._pull()
        mine = [m for m in self.pending if m["To"] == to]
        self.pending = [m for m in self.pending if m["To"] != to]
        assert len(mine) == 1, [m["Subject"] for m in mine]
        return mine[0]


def body(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def code_in(msg: EmailMessage) -> str:
    m = re.search(r"^\s+(\d{8})\s*$", body(msg), re.M)
    assert m, body(msg)
    return m.group(1)


def add_account(services: Services, **row: str) -> None:
    with services.db.transaction() as s:
        import_rows(s, [(2, {**ALICE, **row})])


def ticket_of(services: Services, requester: str = "alice@example.org") -> Ticket:
    with services.db.transaction() as s:
        return s.scalars(select(Ticket).where(Ticket.requester == requester)).one()


def drafts_of(services: Services, ticket_id: int, kind: str = "answer") -> list[Draft]:
    with services.db.transaction() as s:
        return list(s.scalars(select(Draft).where(Draft.ticket_id == ticket_id, Draft.kind == kind).order_by(Draft.id)))


def challenges_of(services: Services, ticket_id: int) -> list[Challenge]:
    with services.db.transaction() as s:
        return list(s.scalars(select(Challenge).where(Challenge.ticket_id == ticket_id).order_by(Challenge.id)))


def audit_actions(services: Services, ticket_id: int) -> list[AuditEntry]:
    with services.db.transaction() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.ticket_id == ticket_id).order_by(AuditEntry.id)))


DELETE = "Please delete all the personal information you hold about me."


# ---------------------------------------------------------------------------- the flows a requester sees


def test_deletion_request_from_a_known_address_is_verified_by_the_code_and_drafts_the_answer(services: Services, smtp_port: int) -> None:
    add_account(services)
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    code = code_in(ack)
    assert "72 hours" in body(ack)
    ticket = ticket_of(services)
    assert ticket.status == Status.AWAITING_VERIFICATION and not ticket.verified

    send(smtp_port, reply_to(ack, f"Here is the code: {code}\n\nAlice"))

    ticket = ticket_of(services)
    assert ticket.status == Status.AWAITING_APPROVAL
    assert ticket.verified and ticket.verified_at is not None
    assert ticket.account_id == "WL-1001"
    [answer] = drafts_of(services, ticket.id)
    assert answer.status == "pending" and answer.needs_approval and answer.intent == "deletion"
    assert "Alice Liddell" in answer.text and "WL-1001" in answer.text and "deleted" in answer.text
    assert box.new() == []  # nothing reaches the requester before staff approve
    actions = [a.action for a in audit_actions(services, ticket.id)]
    assert actions.index("challenge_issued") < actions.index("verification_attempt") < actions.index("verified") < actions.index("answers_drafted")
    [attempt] = [a for a in audit_actions(services, ticket.id) if a.action == "verification_attempt"]
    assert attempt.detail["result"] == "ok" and attempt.detail["attempts"] == 1


def test_unknown_address_gets_word_for_word_the_same_first_answer(services: Services, smtp_port: int) -> None:
    add_account(services)
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE, sender="alice@example.org"), sender="alice@example.org")
    send(smtp_port, make_mail(DELETE, sender="nobody@example.net"), sender="nobody@example.net")
    known, unknown = box.one("alice@example.org"), box.one("nobody@example.net")

    def words(msg: EmailMessage) -> tuple[str, str]:
        ref = re.search(r"PRIV-\d+", msg["Subject"]).group(0)  # type: ignore[union-attr]
        text = body(msg).replace(ref, "<REF>").replace(code_in(msg), "<CODE>")
        return msg["Subject"].replace(ref, "<REF>"), text

    assert words(known) == words(unknown)
    assert sorted(known.keys()) == sorted(unknown.keys())
    assert code_in(known) != code_in(unknown)
    # the same work was done for both: a challenge each, the same state
    for who in ("alice@example.org", "nobody@example.net"):
        t = ticket_of(services, who)
        assert t.status == Status.AWAITING_VERIFICATION and len(challenges_of(services, t.id)) == 1


def test_unknown_address_that_proves_its_mailbox_gets_a_no_account_answer_for_staff(services: Services, smtp_port: int) -> None:
    add_account(services)
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE, sender="nobody@example.net"), sender="nobody@example.net")
    ack = box.one("nobody@example.net")
    send(smtp_port, reply_to(ack, code_in(ack), sender="nobody@example.net"), sender="nobody@example.net")

    ticket = ticket_of(services, "nobody@example.net")
    assert ticket.status == Status.AWAITING_APPROVAL and ticket.verified and ticket.account_id is None
    [answer] = drafts_of(services, ticket.id)
    assert "we hold no account for this e-mail address" in answer.text
    assert answer.status == "pending" and "Alice" not in answer.text


def test_five_wrong_codes_lock_the_challenge_tell_the_requester_and_notify_staff(services: Services, smtp_port: int) -> None:
    services.settings.staff_address = "dpo@example.com"
    add_account(services)
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    good = code_in(ack)
    wrong = f"{(int(good) + 1) % 10**8:08d}"

    for n in range(1, 5):
        send(smtp_port, reply_to(ack, f"My code is {wrong}"))
        note = box.one()
        assert "does not match" in body(note)
        assert (f"{5 - n} more tries" if n < 4 else "one more try") in body(note)
    send(smtp_port, reply_to(ack, f"My code is {wrong}"))

    mail = box.new()
    [to_requester] = [m for m in mail if m["To"] == "alice@example.org"]
    [to_staff] = [m for m in mail if m["To"] == "dpo@example.com"]
    assert "stopped accepting codes" in body(to_requester)
    ticket = ticket_of(services)
    assert ticket.ref in to_staff["Subject"] and "5 wrong attempts" in body(to_staff)
    assert good not in body(to_staff) and wrong not in body(to_staff)
    [challenge] = challenges_of(services, ticket.id)
    assert challenge.status == "locked" and challenge.attempts == 5

    # The right code after the lock proves nothing, and nobody is mailed again.
    send(smtp_port, reply_to(ack, f"Sorry, it is {good}"))
    ticket = ticket_of(services)
    assert not ticket.verified and ticket.status == Status.AWAITING_VERIFICATION
    assert box.new() == []
    actions = [a.action for a in audit_actions(services, ticket.id)]
    assert actions.count("verification_attempt") == 6
    assert "verification_locked" in actions and "staff_notified" in actions


def test_expired_code_is_refused_with_a_clear_reply_and_a_fresh_code(services: Services, smtp_port: int, frozen_clock: object) -> None:
    add_account(services)
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    old = code_in(ack)

    clock.fast_forward(hours=72, minutes=1)
    send(smtp_port, reply_to(ack, f"code {old}"))
    refusal = box.one()
    assert "has expired" in body(refusal)
    fresh = code_in(refusal)
    assert fresh != old
    assert ticket_of(services).status == Status.AWAITING_VERIFICATION

    send(smtp_port, reply_to(refusal, f"code {old}"))  # the old code stays dead
    assert "does not match" in body(box.one())
    send(smtp_port, reply_to(refusal, f"code {fresh}"))
    assert ticket_of(services).status == Status.AWAITING_APPROVAL


def test_auto_reply_to_a_challenge_is_not_a_failed_attempt(services: Services, smtp_port: int) -> None:
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    ooo = reply_to(ack, "I am out of the office until 12345678. Call 1234-5678.")
    ooo["Auto-Submitted"] = "auto-replied"
    send(smtp_port, ooo)
    send(smtp_port, reply_to(ack, "Which code do you mean? I cannot find it."))  # a question, no code

    ticket = ticket_of(services)
    [challenge] = challenges_of(services, ticket.id)
    assert challenge.attempts == 0 and challenge.status == "open"
    assert box.new() == []
    send(smtp_port, reply_to(ack, code_in(ack)))
    assert ticket_of(services).verified


def test_code_written_with_a_space_or_a_dash_is_accepted(services: Services, smtp_port: int) -> None:
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    code = code_in(ack)
    send(smtp_port, reply_to(ack, f"Re [{ticket_of(services).ref}]: code is {code[:4]} {code[4:]}"))
    assert ticket_of(services).verified


def test_reminder_after_three_days_carries_a_fresh_code_and_is_sent_once(services: Services, smtp_port: int, frozen_clock: object) -> None:
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    clock.fast_forward(days=2)
    verify.sweep(services)
    assert box.new() == []  # too early

    clock.fast_forward(days=1, minutes=5)
    # two privbot processes sweeping at the same moment send one reminder between them
    threads = [threading.Thread(target=verify.sweep, args=(services,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verify.sweep(services)
    reminder = box.one()
    assert "still waiting" in body(reminder)
    fresh = code_in(reminder)
    assert fresh != code_in(ack)
    clock.fast_forward(days=3, minutes=5)
    verify.sweep(services)
    assert box.new() == []  # one reminder per request, not one every three days

    send(smtp_port, reply_to(reminder, fresh))
    # the reminder's code was issued three days ago, valid 72 h: expired by now
    assert "has expired" in body(box.one())


def test_unverified_request_closes_after_fourteen_days_with_a_notice(services: Services, smtp_port: int, frozen_clock: object) -> None:
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    clock.fast_forward(days=14, minutes=1)
    lines = run_once(services)
    assert any("1 closed unverified" in line for line in lines)
    [notice] = [m for m in box.new() if m["To"] == "alice@example.org"]
    assert "closed your request" in body(notice)
    ticket = ticket_of(services)
    assert ticket.status == Status.CLOSED and ticket.closed_at is not None
    assert {c.status for c in challenges_of(services, ticket.id)} <= {"expired", "superseded"}

    send(smtp_port, reply_to(ack, code_in(ack)))  # too late: the request is closed
    assert not ticket_of(services).verified


# ---------------------------------------------------------------------------- policies


def _inbound(text: str, sender: str = "alice@example.org", **kw: object) -> Inbound:
    return Inbound(channel=Channel.EMAIL, sender=sender, text=text, message_id=f"<{abs(hash((text, sender, str(kw))))}@example.org>", **kw)  # type: ignore[arg-type]


def _c(*intents: Intent) -> Classification:
    return Classification(intent=intents[0], intents=tuple(intents), confidence=0.95, language="en")


def test_withdrawal_from_a_server_authenticated_sender_needs_no_code_known_or_not(services: Services) -> None:
    add_account(services)
    box = Mailbox(services)
    for sender in ("alice@example.org", "nobody@example.net"):
        intake(services, _inbound("Unsubscribe me from all marketing.", sender, sender_authenticated=True), classification=_c(Intent.WITHDRAWAL))
    known, unknown = box.one("alice@example.org"), box.one("nobody@example.net")
    assert not re.search(r"\d{8}", body(known)) and "one-time code" not in body(known)
    strip = lambda m: re.sub(r"PRIV-\d+", "", body(m))  # noqa: E731
    assert strip(known) == strip(unknown)

    alice, nobody = ticket_of(services, "alice@example.org"), ticket_of(services, "nobody@example.net")
    assert alice.verified and alice.status == Status.AWAITING_APPROVAL
    [a] = drafts_of(services, alice.id)
    assert a.intent == "withdrawal" and "withdrawal of your consent" in a.text and "WL-1001" in a.text
    [n] = drafts_of(services, nobody.id)
    assert "no account" in n.text


def test_withdrawal_without_authentication_results_gets_a_code(services: Services) -> None:
    box = Mailbox(services)
    intake(services, _inbound("Unsubscribe me from all marketing."), classification=_c(Intent.WITHDRAWAL))
    assert code_in(box.one())
    assert ticket_of(services).status == Status.AWAITING_VERIFICATION


def test_access_request_needs_a_code_even_from_an_authenticated_sender(services: Services) -> None:
    box = Mailbox(services)
    intake(services, _inbound("Send me a copy of my data.", sender_authenticated=True), classification=_c(Intent.ACCESS))
    assert code_in(box.one())
    assert not ticket_of(services).verified


def test_configured_policy_overrides_a_right_and_bad_policies_are_refused(services: Services) -> None:
    services.settings.verify_policy = "withdrawal=code"
    box = Mailbox(services)
    intake(services, _inbound("Unsubscribe me.", sender_authenticated=True), classification=_c(Intent.WITHDRAWAL))
    assert code_in(box.one())
    assert verify.policy_for(services.settings, "deletion") == {"code", "second_approval"}
    assert verify.policy_for(services.settings, "withdrawal") == {"code"}
    for bad in ("access=password", "refund=code", "access", "access="):
        with pytest.raises(ConfigError, match="PRIVBOT_VERIFY_POLICY"):
            load_settings(environ={"PRIVBOT_VERIFY_POLICY": bad})


def test_correction_is_never_verified_with_the_data_being_corrected(services: Services) -> None:
    add_account(services)
    box = Mailbox(services)
    # Someone writes from a new address claiming to be Alice and asking to switch to it.
    text = "Please correct my email address: it was alice@example.org and my phone is +65 5550 1234; it is now al@example.net."
    intake(services, _inbound(text, "al@example.net", sender_authenticated=True), classification=_c(Intent.CORRECTION))
    ack = box.one("al@example.net")  # the code goes to the asking mailbox, never to the account on file
    with services.db.transaction() as s:
        t = s.scalars(select(Ticket)).one()
        ref = t.ref
    intake(services, Inbound(channel=Channel.EMAIL, sender="al@example.net", subject=f"Re: [{ref}]", text=code_in(ack), message_id="<r1@example.net>"))
    t = ticket_of(services, "al@example.net")
    assert t.verified and t.account_id is None
    [answer] = drafts_of(services, t.id)
    assert "no account" in answer.text and "WL-1001" not in answer.text and "Alice" not in answer.text


def test_several_rights_get_one_answer_each_and_the_ticket_is_answered_when_all_are_approved(services: Services) -> None:
    add_account(services)
    box = Mailbox(services)
    intake(services, _inbound("Close my account and erase everything."), classification=_c(Intent.CANCELLATION, Intent.DELETION))
    ack = box.one()
    t = ticket_of(services)
    intake(services, Inbound(channel=Channel.EMAIL, sender="alice@example.org", subject=f"Re: [{t.ref}]", text=code_in(ack), message_id="<r2@example.org>"))
    drafts = drafts_of(services, t.id)
    assert [d.intent for d in drafts] == ["cancellation", "deletion"]
    second = [a for a in audit_actions(services, t.id) if a.action == "answers_drafted"][0].detail["second_approval"]
    assert second == ["cancellation", "deletion"]
    # Deletion and cancellation answers need two people: a first approval, then another's.
    for approver in ("ann@example.com", "bob@example.com"):
        with services.db.transaction() as s:
            replies.approve(s, services.settings, s.get(Ticket, t.id), approver)  # type: ignore[arg-type]
    assert ticket_of(services).status == Status.AWAITING_APPROVAL
    assert len(box.new()) == 1
    with services.db.transaction() as s:
        replies.approve(s, services.settings, s.get(Ticket, t.id), "ann@example.com")  # type: ignore[arg-type]
    assert ticket_of(services).status == Status.AWAITING_APPROVAL and box.new() == []
    with services.db.transaction() as s:
        with pytest.raises(replies.ApprovalError, match="second person"):
            replies.approve(s, services.settings, s.get(Ticket, t.id), "ann@example.com")  # type: ignore[arg-type]
    with services.db.transaction() as s:
        replies.approve(s, services.settings, s.get(Ticket, t.id), "bob@example.com")  # type: ignore[arg-type]
    assert ticket_of(services).status == Status.ANSWERED
    assert len(box.new()) == 1


def test_public_url_adds_a_confirmation_link_next_to_the_code(services: Services) -> None:
    services.settings.public_url = "https://privacy.example.com/"
    box = Mailbox(services)
    intake(services, _inbound(DELETE), classification=_c(Intent.DELETION))
    ack = box.one()
    t = ticket_of(services)
    assert f"https://privacy.example.com/verify/{t.ref}?code={code_in(ack)}" in body(ack)


def test_chat_ticket_waits_for_verification_without_a_mailed_code(services: Services) -> None:
    intake(services, Inbound(channel=Channel.TELEGRAM, sender="telegram:42", chat_id=42, text=DELETE, message_id="tg:1"), classification=_c(Intent.DELETION))
    t = ticket_of(services, "telegram:42")
    assert t.status == Status.AWAITING_VERIFICATION and challenges_of(services, t.id) == []


# ---------------------------------------------------------------------------- the API other channels call


def test_codes_are_stored_hashed_and_never_written_to_the_audit_trail(services: Services) -> None:
    with services.db.transaction() as s:
        challenge, code = verify.issue_challenge(s, services.settings, "bob@example.org")
        assert len(code) == 8 and code.isdigit()
        assert code not in challenge.code_hash and challenge.code_hash.startswith("hmac-sha256$")
        assert verify.check_code(s, services.settings, challenge, "00000000" if code != "00000000" else "11111111") == "wrong"
        assert verify.check_code(s, services.settings, challenge, code) == "ok"
        trail = json.dumps([a.detail for a in s.scalars(select(AuditEntry))])
    assert code not in trail


def test_the_code_key_is_kept_private_in_the_data_dir_and_a_shared_secret_works_across_hosts(services: Services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import stat

    from privbot.app import build_services
    from tests.conftest import make_settings

    with services.db.transaction() as s:
        _c1, code1 = verify.issue_challenge(s, services.settings, "bob@example.org")
    key_file = services.settings.data_dir / "verify.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # a second process on another host (own data dir) with no shared secret cannot check it ...
    other = build_services(make_settings(tmp_path / "host2", services.settings.database_url), migrate=False)
    with other.db.transaction() as s:
        c1 = s.get(Challenge, _c1.id)
        assert verify.check_code(s, other.settings, c1, code1) == "wrong"  # type: ignore[arg-type]
    # ... while hosts configured with the same PRIVBOT_VERIFY_SECRET share codes
    services.settings.verify_secret = other.settings.verify_secret = "s3cret-shared-by-all-hosts"
    with services.db.transaction() as s:
        c2, code2 = verify.issue_challenge(s, services.settings, "bob@example.org")
    with other.db.transaction() as s:
        assert verify.check_code(s, other.settings, s.get(Challenge, c2.id), code2) == "ok"  # type: ignore[arg-type]
    other.db.dispose()


def test_the_code_reaches_only_the_mailbox_not_the_records_staff_read(services: Services, smtp_port: int, frozen_clock: object) -> None:
    from privbot.store.models import Message

    services.settings.public_url = "https://privacy.example.com"
    box = Mailbox(services)
    send(smtp_port, make_mail(DELETE))
    ack = box.one()
    clock.fast_forward(hours=73)
    send(smtp_port, reply_to(ack, code_in(ack)))  # expired: a fresh code by mail
    codes = [code_in(ack), code_in(box.one())]
    with services.db.transaction() as s:
        records = json.dumps(
            [[d.text, d.html] for d in s.scalars(select(Draft))]
            + [[m.body, m.new_text] for m in s.scalars(select(Message).where(Message.direction == "out"))]
            + [a.detail for a in s.scalars(select(AuditEntry))]
        )
        ack_draft = s.scalars(select(Draft).where(Draft.kind == "acknowledgement")).one()
    for code in codes:
        assert code not in records
    assert "[one-time code]" in ack_draft.text


def test_check_code_counts_attempts_locks_at_the_limit_and_refuses_expired_codes(services: Services, frozen_clock: object) -> None:
    with services.db.transaction() as s:
        challenge, code = verify.issue_challenge(s, services.settings, "bob@example.org")
        results = [verify.check_code(s, services.settings, challenge, "99999999" if code != "99999999" else "88888888") for _ in range(6)]
        assert results == ["wrong"] * 4 + ["locked"] * 2
        assert verify.check_code(s, services.settings, challenge, code) == "locked"
        assert challenge.attempts == 5
        other, code2 = verify.issue_challenge(s, services.settings, "carol@example.org")
    clock.fast_forward(hours=72)
    with services.db.transaction() as s:
        other = s.get(Challenge, other.id)  # type: ignore[assignment]
        assert verify.check_code(s, services.settings, other, code2) == "expired"
        assert other.status == "expired" and other.attempts == 0


def test_ten_simultaneous_guesses_never_get_more_than_five_tries(services: Services) -> None:
    with services.db.transaction() as s:
        challenge, code = verify.issue_challenge(s, services.settings, "bob@example.org")
        cid = challenge.id
    wrong = "12345678" if code != "12345678" else "87654321"
    results: list[str] = []
    barrier = threading.Barrier(10)

    def guess() -> None:
        barrier.wait()
        with services.db.transaction() as s:
            c = s.get(Challenge, cid)
            assert c is not None
            results.append(verify.check_code(s, services.settings, c, wrong))

    threads = [threading.Thread(target=guess) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["locked"] * 6 + ["wrong"] * 4
    with services.db.transaction() as s:
        c = s.get(Challenge, cid)
        assert c is not None and c.attempts == 5 and c.status == "locked"


def test_mark_verified_records_who_and_how(services: Services) -> None:
    intake(services, _inbound(DELETE), classification=_c(Intent.DELETION))
    with services.db.transaction() as s:
        t = s.scalars(select(Ticket)).one()
        verify.mark_verified(s, t, "staff: passport checked", actor="ann@example.com")
    t = ticket_of(services)
    assert t.verified and t.status == Status.VERIFIED
    [entry] = [a for a in audit_actions(services, t.id) if a.action == "verified"]
    assert entry.actor == "ann@example.com" and entry.detail["how"] == "staff: passport checked"
    with services.db.transaction() as s:
        assert s.scalar(select(OutboxItem.id).where(OutboxItem.recipient == "ann@example.com")) is None


# ---------------------------------------------------------------------------- templates

LANGS = ["en", "zh", "es", "de", "fr", "pt", "ja"]
_BASE = {
    "ref": "PRIV-000042", "intent": "deletion", "intents": ["deletion"], "requester_name": "Ana",
    "privacy_address": "privacy@example.com", "channel": "email",
}
_ACCOUNT = {"email": "ana@example.org", "name": "Ana Lima", "phone": "+351 555 0100", "account_id": "WL-77"}
TEMPLATE_CONTEXT: dict[str, dict[str, object]] = {
    "code_wrong": {"remaining": 3},
    "code_expired": {"code": "48291370", "code_hours": 72, "public_url": ""},
    "code_locked": {},
    "verification_reminder": {"code": "48291370", "code_hours": 72, "public_url": "", "close_days": 14},
    "closed_unverified": {"close_days": 14},
    "no_account": {},
    **{f"answer_{r}": {"account": _ACCOUNT} for r in ("access", "correction", "deletion", "withdrawal", "cancellation")},
}


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", sorted(TEMPLATE_CONTEXT))
def test_every_verification_message_exists_in_every_language_with_its_details(kind: str, lang: str) -> None:
    from datetime import UTC, datetime

    from privbot.config import Settings

    renderer = replies.Renderer(Settings().templates_dir)
    assert lang in renderer.languages(kind)
    ctx = {**_BASE, "due_at": datetime(2026, 4, 1, tzinfo=UTC), "received_at": datetime(2026, 3, 2, tzinfo=UTC), **TEMPLATE_CONTEXT[kind]}
    out = renderer.render(kind, lang, **ctx)
    assert out.language == lang and out.subject.strip()
    assert "PRIV-000042" in out.text and "privacy@example.com" in out.text
    if "code" in ctx:
        assert "48291370" in out.text and "72" in out.text
    if "account" in ctx:
        assert "WL-77" in out.text  # staff see which account the answer is about
    if kind == "code_wrong":
        assert "3" in out.text
