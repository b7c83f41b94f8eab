"""The spine end to end over real sockets: smtplib → aiosmtpd → intake() → outbox."""

from __future__ import annotations

import smtplib
from datetime import timedelta
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from privbot import outbox
from privbot.app import Services
from privbot.scheduler import transports_for
from privbot.store.models import AuditEntry, Message, OutboxItem, Shunted, Ticket
from tests.support import break_classifier_on, make_mail, outbox_messages, reply_to, send


def tickets(services: Services) -> list[Ticket]:
    with services.db.transaction() as s:
        return list(s.scalars(select(Ticket).order_by(Ticket.id)))


def deliver(services: Services) -> list[EmailMessage]:
    outbox.deliver_due(services.db, transports_for(services))
    return outbox_messages(services.settings.data_dir)


def test_deletion_request_opens_ticket_due_in_30_days_and_is_acknowledged(services: Services, smtp_port: int) -> None:
    request = make_mail("Please delete all the personal information you hold about me.")
    send(smtp_port, request)

    [ticket] = tickets(services)
    assert ticket.intent == "deletion"
    assert ticket.requester == "alice@example.org"
    assert ticket.due_at - ticket.received_at == timedelta(days=30)
    [ack] = deliver(services)
    assert f"[{ticket.ref}]" in ack["Subject"]
    assert ack["In-Reply-To"] == request["Message-ID"]
    assert request["Message-ID"] in ack["References"]
    assert ack["To"] == "alice@example.org"
    assert ack["From"] == "privacy@example.com"
    assert ack["Message-ID"] and ack["Message-ID"] != request["Message-ID"]
    assert ack["Auto-Submitted"] == "auto-replied"


def test_a_sender_who_quotes_an_address_that_needs_no_quotes_is_answered(services: Services, smtp_port: int) -> None:
    raw = (b'From: Sean <"O\'Brien"@example.org>\r\nTo: privacy@example.com\r\nSubject: my data\r\n'
           b"Message-ID: <quoted-1@example.org>\r\n\r\nPlease delete all the personal information you hold about me.\r\n")
    send(smtp_port, raw, sender="o'brien@example.org")
    [ticket] = tickets(services)
    assert ticket.requester == "o'brien@example.org"
    [ack] = deliver(services)
    assert ack["To"] == "o'brien@example.org" and f"[{ticket.ref}]" in ack["Subject"]
    # A quoted local part that does need its quotes is still no address privbot answers.
    send(smtp_port, raw.replace(b'"O\'Brien"', b'"O Brien"').replace(b"quoted-1", b"quoted-2"), sender="x@example.org")
    assert tickets(services)[-1].requester == ""


def test_duplicate_delivery_opens_no_second_ticket(services: Services, smtp_port: int) -> None:
    request = make_mail()
    send(smtp_port, request)
    send(smtp_port, request)
    assert len(tickets(services)) == 1
    assert len(deliver(services)) == 1


def test_message_without_message_id_is_deduplicated_by_its_bytes(services: Services, smtp_port: int) -> None:
    raw = b"From: bob@example.org\r\nTo: privacy@example.com\r\nSubject: data\r\n\r\nPlease send me a copy of all my personal data.\r\n"
    send(smtp_port, raw, sender="bob@example.org")
    send(smtp_port, raw, sender="bob@example.org")
    assert len(tickets(services)) == 1


def test_reply_to_acknowledgement_lands_on_same_ticket(services: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail())
    [ack] = deliver(services)
    send(smtp_port, reply_to(ack, "Also, my old address is 12 Main St."))
    [ticket] = tickets(services)
    with services.db.transaction() as s:
        kinds = [m.kind for m in s.scalars(select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id))]
    assert kinds == ["request", "acknowledgement", "reply"]


def test_reference_in_subject_threads_only_for_the_same_requester(services: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail())
    [ticket] = tickets(services)
    send(smtp_port, make_mail("Here is more detail about my request.", subject=f"Re: [{ticket.ref}] request"))
    assert len(tickets(services)) == 1
    # A stranger quoting Alice's reference does not get onto Alice's ticket.
    send(smtp_port, make_mail("Please delete my data too.", sender="mallory@example.net", subject=f"[{ticket.ref}]"), sender="mallory@example.net")
    all_tickets = tickets(services)
    assert len(all_tickets) == 2
    assert all_tickets[1].requester == "mallory@example.net"


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"Precedence": "bulk"},
        {"X-Autoreply": "yes"},
        {"X-Auto-Response-Suppress": "All"},
        {"List-Id": "<news.example.org>"},
    ],
    ids=lambda h: next(iter(h)),
)
def test_auto_reply_gets_no_ticket_and_no_answer(services: Services, smtp_port: int, headers: dict[str, str]) -> None:
    send(smtp_port, make_mail("I am out of the office until Monday. Please delete my data.", subject="Out of office", headers=headers))
    assert tickets(services) == []
    assert deliver(services) == []
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Message.id)).where(Message.kind == "auto_reply")) == 1


def test_bounce_from_mailer_daemon_gets_no_answer(services: Services, smtp_port: int) -> None:
    bounce = make_mail(
        "Delivery to the following recipient failed permanently:\n\n  alice@example.org\n\n> Please delete my data",
        sender="MAILER-DAEMON@mx.example.org",
        subject="Delivery Status Notification (Failure)",
    )
    send(smtp_port, bounce, sender="")
    assert tickets(services) == []
    assert deliver(services) == []


def test_out_of_office_reply_on_a_ticket_is_recorded_but_not_answered(services: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail())
    [ack] = deliver(services)
    ooo = reply_to(ack, "I am away until next week.")
    ooo["Auto-Submitted"] = "auto-replied"
    send(smtp_port, ooo)
    assert len(deliver(services)) == 1  # still only the acknowledgement
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(OutboxItem.id))) == 1


def test_support_question_becomes_triage_without_automatic_answer(services: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail("My invoice shows the wrong VAT number, who can help with billing?", subject="Invoice"))
    [ticket] = tickets(services)
    assert ticket.status == "triage"
    assert deliver(services) == []


def test_other_recipient_is_refused_at_rcpt(services: Services, smtp_port: int) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.org")
        code, _ = smtp.rcpt("sales@example.com")
    assert code == 550
    assert tickets(services) == []


def test_oversized_message_is_refused_with_552(services: Services, smtp_port: int) -> None:
    big = make_mail(("x" * 70 + "\n") * (services.settings.smtp_max_size // 70 + 200))
    # A client that announces SIZE is refused at MAIL FROM ...
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(smtp_port, big)
    assert refused.value.smtp_code == 552
    # ... and one that does not is refused after DATA.
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.org")
        smtp.rcpt("privacy@example.com")
        code, _ = smtp.data(b"From: alice@example.org\r\nSubject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * (services.settings.smtp_max_size // 70 + 200))
    assert code == 552
    assert tickets(services) == []


def test_database_unreachable_answers_451_so_the_sender_retries(services: Services, smtp_port: int) -> None:
    from privbot.store.db import Database

    services.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(smtp_port, make_mail())
    assert err.value.smtp_code == 451


def test_unparseable_bytes_are_kept_for_rerun(services: Services, smtp_port: int) -> None:
    send(smtp_port, b"\x00\x01\x02 not a mail at all \xff\xfe")
    with services.db.transaction() as s:
        kept = list(s.scalars(select(Shunted)))
    assert len(kept) == 1
    assert b"\x00\x01\x02 not a mail at all" in kept[0].raw
    assert tickets(services) == []


def test_a_message_shunted_by_a_fault_is_answered_once_reprocessed_and_only_once(
    services: Services, smtp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privbot import shunt

    break_classifier_on(services, monkeypatch)
    send(smtp_port, make_mail("Please delete my account, explode", message_id="<kept-1@example.org>"))  # 250: kept
    assert tickets(services) == []
    [kept] = shunt.pending(services)
    monkeypatch.undo()  # the fault is mended; a person re-runs what was kept

    result = shunt.reprocess(services, kept.id)
    assert result is not None and result.action == "opened" and result.ticket_ref
    assert shunt.pending(services) == []
    assert shunt.reprocess(services, kept.id) is None  # resolved: a second run does nothing
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(Ticket.id))) == 1
        assert s.scalar(select(func.count(OutboxItem.id))) == 1  # one acknowledgement
        row = s.get(Shunted, kept.id)
        assert row is not None and row.status == "reprocessed" and row.resolved_at is not None
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "reprocessed")).one()
        assert entry.detail == {"shunt": kept.id, "ticket": result.ticket_ref, "outcome": "opened"}


def test_a_shunted_messages_error_text_stays_with_it_and_out_of_the_audit_trail_and_log(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    from privbot import shunt

    kept = shunt.keep(services, b"raw bytes", "ValueError: bad header from carol@example.org", source="smtp")
    with services.db.transaction() as s:
        assert "carol@example.org" in s.get(Shunted, kept).error  # for the person who re-runs it
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "shunted")).one()
        assert entry.detail["error"] == "ValueError"
    assert "carol" not in caplog.text and "ValueError" in caplog.text


def test_forged_authentication_results_sent_straight_to_smtp_prove_nothing(services: Services, smtp_port: int) -> None:
    forged = make_mail(
        "Please stop sending me marketing emails.",
        sender="victim@example.org",
        headers={"Authentication-Results": "mx.example.com; dmarc=pass header.from=example.org; dkim=pass header.d=example.org"},
    )
    send(smtp_port, forged, sender="victim@example.org")
    from privbot.channels.parse import parse_email
    from privbot.intake import trusted_authserv_ids

    assert trusted_authserv_ids(services.settings, "smtp") == ()
    assert not parse_email(forged.as_bytes(), trusted_authserv_ids=()).sender_authenticated
    assert trusted_authserv_ids(services.settings, "imap:INBOX/1") is None


def test_empty_envelope_sender_marks_a_bounce(services: Services, smtp_port: int) -> None:
    bounce = make_mail("Your message could not be delivered.\n\n> Please delete my data", sender="postbox@mx.example.net", subject="Undeliverable: data")
    send(smtp_port, bounce, sender="")
    assert tickets(services) == []
    assert deliver(services) == []


def test_chinese_request_is_acknowledged_in_chinese(services: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail("您好，请删除贵公司保存的关于我的全部个人信息。谢谢。", subject="个人信息删除请求"))
    [ticket] = tickets(services)
    assert ticket.language == "zh" and ticket.intent == "deletion"
    [ack] = deliver(services)
    assert "我们已收到" in ack["Subject"] and f"[{ticket.ref}]" in ack["Subject"]


def test_a_request_for_two_rights_is_acknowledged_not_questioned(services: Services, smtp_port: int) -> None:
    send(smtp_port, make_mail("Please delete my account and all my data", subject=""))
    [ticket] = tickets(services)
    assert {"cancellation", "deletion"} <= set(ticket.intents)
    assert ticket.status != "awaiting_clarification"
    [ack] = deliver(services)
    assert "What would you like" not in ack["Subject"]


_LOCAL = st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\"-]{1,80}", fullmatch=True)
_DOMAIN = st.from_regex(r"[A-Za-z0-9.\[\]-]{1,30}", fullmatch=True)
_PARAMS = st.sampled_from(["", " ", " SIZE=1000", "  BODY=8BITMIME SIZE=5 ", " SMTPUTF8"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arg=st.one_of(
    st.builds(lambda sp, local, domain, params: f"{sp}<{local}@{domain}>{params}", st.sampled_from(["", " "]), _LOCAL, _DOMAIN, _PARAMS),
    st.text(max_size=60),
), limit=st.sampled_from([0, 64]))
def test_a_mail_path_is_read_exactly_as_aiosmtpd_reads_it(arg: str, limit: int) -> None:
    """privbot reads plain ``<local@domain>`` paths itself (faster than the email package's
    parser aiosmtpd uses); for every path, plain or not, it must come to the same address
    and the same parameters — or refuse it as aiosmtpd would."""
    from aiosmtpd.smtp import SMTP

    from privbot.channels.smtp_in import PrivacySMTP

    def outcome(server: SMTP) -> object:
        server.local_part_limit = limit
        try:
            return server._getaddr(arg)
        except Exception as exc:  # the email package trips over some paths ("<0@[>"): so must we
            return type(exc)

    assert outcome(PrivacySMTP.__new__(PrivacySMTP)) == outcome(SMTP.__new__(SMTP))


def test_a_follow_up_to_ones_own_unanswered_request_joins_its_ticket(services: Services, smtp_port: int) -> None:
    request = make_mail("Please send me a copy of all the personal data you hold about me.")
    send(smtp_port, request)
    # Two weeks later, no answer read: the requester replies to their own sent mail.
    chaser = make_mail("It's been two weeks and nobody has replied to the message below. Please answer it.",
                       subject="Re: Privacy request")
    chaser["In-Reply-To"] = request["Message-ID"]
    chaser["References"] = request["Message-ID"]
    send(smtp_port, chaser)
    [ticket] = tickets(services)
    with services.db.transaction() as s:
        kinds = [m.kind for m in s.scalars(select(Message).where(Message.ticket_id == ticket.id, Message.direction == "in").order_by(Message.id))]
    assert ticket.intent == "access" and kinds == ["request", "reply"]
    # Someone else replying to Alice's mail (a forward, a colleague) opens a ticket of their own.
    stranger = make_mail("Same for me please, send me everything you hold.", sender="mallory@example.net", subject="Re: Privacy request")
    stranger["In-Reply-To"] = request["Message-ID"]
    send(smtp_port, stranger, sender="mallory@example.net")
    assert [t.requester for t in tickets(services)] == ["alice@example.org", "mallory@example.net"]
