"""Hostile and broken input, as the privacy mailbox receives it every day.

Real corpora go through the real SMTP intake and a real Dovecot: CPython's own e-mail
test messages and the bounce samples of flufl.bounce.  Hypothesis writes MIME no corpus
has.  What must hold for all of it: the server never
crashes or hangs, every message ends as a ticket, an auto-reply record or in the shunt
(kept for a re-run), nothing automatic is ever answered, nothing a sender wrote becomes an
outgoing header or runs as a template, and a flood from one address gets at most the
configured number of automatic answers.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import func, select

from privbot import cli, outbox
from privbot.app import Services
from privbot.intake import receive_email
from privbot.scheduler import transports_for
from privbot.store.models import Message, OutboxItem, Shunted, Ticket
from tests.support import make_mail, outbox_messages, send

DATA = Path(__file__).resolve().parent / "data"
BOUNCES = sorted((DATA / "bounces").glob("*.txt"))


def cpython_corpus() -> list[Path]:
    try:
        import test

        folder = Path(test.__file__).parent / "test_email" / "data"
    except ImportError:
        return []
    return sorted(folder.glob("msg_*.txt")) if folder.is_dir() else []


CORPUS = cpython_corpus()


# ------------------------------------------------------------------ helpers


def counts(services: Services) -> tuple[int, int]:
    """(messages received, messages kept in the shunt)."""
    with services.db.transaction() as s:
        return (
            s.scalar(select(func.count(Message.id)).where(Message.direction == "in")) or 0,
            s.scalar(select(func.count(Shunted.id))) or 0,
        )


def on_the_wire(raw: bytes) -> bytes:
    """Files on disk end lines with LF; SMTP carries CRLF (and a sender's MTA converts)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message_id_of(raw: bytes) -> str:
    return str(email.message_from_bytes(raw).get("Message-ID", "") or "").strip()


def send_all(services: Services, port: int, files: list[Path], *, envelope_from: str) -> None:
    """Send every file over one SMTP connection; each must be accepted and end up recorded."""
    seen_ids: set[str] = set()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        for path in files:
            raw = on_the_wire(path.read_bytes())
            before = counts(services)
            refused = smtp.sendmail(envelope_from, ["privacy@example.com"], raw)  # raises on any non-250
            assert refused == {}, path.name
            after = counts(services)
            mid = message_id_of(raw)
            recorded = (after[0] - before[0]) + (after[1] - before[1])
            # One new row per message, unless it repeats an earlier Message-ID (a duplicate).
            assert recorded == 1 or (recorded == 0 and mid and mid in seen_ids), f"{path.name} was lost"
            if mid:
                seen_ids.add(mid)


def answers_to_automatic_mail(services: Services) -> list[str]:
    """Outgoing messages that answer an auto-reply or bounce (there must be none)."""
    with services.db.transaction() as s:
        automatic = set(s.scalars(select(Message.message_id).where(Message.kind == "auto_reply", Message.message_id != "")))
        answered = s.execute(select(Message.in_reply_to, Message.recipient).where(Message.direction == "out")).all()
    return [f"{to} (re {irt})" for irt, to in answered if irt in automatic]


def deliver(services: Services) -> list[email.message.EmailMessage]:
    outbox.deliver_due(services.db, transports_for(services), limit=10_000)
    return outbox_messages(services.settings.data_dir)


# ------------------------------------------------------------------ real corpora over SMTP


@pytest.mark.skipif(not CORPUS, reason="CPython's test.test_email data is not installed with this interpreter")
def test_cpython_email_corpus_through_smtp_is_accepted_recorded_and_never_answered_when_automatic(
    services: Services, smtp_port: int
) -> None:
    send_all(services, smtp_port, CORPUS, envelope_from="corpus@example.net")
    assert answers_to_automatic_mail(services) == []
    with services.db.transaction() as s:
        unreadable = s.scalar(select(func.count(Shunted.id)).where(Shunted.status == "pending"))
        kept = list(s.scalars(select(Shunted)))
    assert unreadable >= 1  # msg_19 has neither headers nor From: it is kept, not dropped
    assert all(row.raw for row in kept)
    # Every reply privbot then sends is a well-formed message to one person.
    for reply in deliver(services):
        assert reply["To"] and "\n" not in str(reply["Subject"])


@pytest.mark.skipif(len(BOUNCES) < 100, reason="tests/data/bounces is missing (vendored from flufl.bounce)")
def test_real_bounces_through_smtp_are_recorded_and_never_answered(services: Services, smtp_port: int) -> None:
    # A bounce arrives with the empty envelope sender, as RFC 5321 requires.
    send_all(services, smtp_port, BOUNCES, envelope_from="")
    assert deliver(services) == []
    with services.db.transaction() as s:
        assert s.scalar(select(func.count(OutboxItem.id))) == 0
        kinds = dict(s.execute(select(Message.kind, func.count(Message.id)).group_by(Message.kind)).all())
    assert kinds.get("auto_reply", 0) >= len(BOUNCES) - 5  # a few samples share a Message-ID


def test_bounces_with_ordinary_envelope_are_still_not_answered(services: Services) -> None:
    # The same samples read from a mailbox or relayed without their envelope: the headers and
    # report structure alone must stop an answer (or at worst leave it to staff, unanswered).
    for path in BOUNCES:
        receive_email(services, path.read_bytes(), source="test")
    with services.db.transaction() as s:
        answered = list(s.scalars(select(OutboxItem.recipient)))
    assert len(answered) <= 2, answered  # tolerated: samples whose only clue was the envelope


# ------------------------------------------------------------------ generated MIME

CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "gb2312", "shift_jis", "koi8-r", "x-unknown", "utf-7", "bogus-charset", ""]
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"]
TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth < 6 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["b1", "=_x", "", "a" * 80, "--", "same"]))
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report", "digest"]))
        children = draw(st.lists(mime_part(depth + 1), min_size=0, max_size=3))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + child + b"\r\n" for child in children)
        if draw(st.booleans()):  # often the closing boundary is lost
            body += b"--" + boundary.encode() + b"--\r\n"
        return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode() + body
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    ctype = draw(st.sampled_from(["text/plain", "text/html", "message/rfc822", "application/octet-stream", "text/x-nonsense"]))
    text = draw(TEXTS)
    codec = charset if charset and charset not in ("x-unknown", "bogus-charset") else "utf-8"
    try:
        payload = text.encode(codec, "replace")
    except LookupError:
        payload = text.encode("utf-8", "replace")
    if cte == "base64" and draw(st.booleans()):
        import base64

        payload = base64.b64encode(payload)[: draw(st.integers(0, 300))]  # often truncated
    if draw(st.booleans()):
        payload += draw(st.binary(max_size=40))
    return f"Content-Type: {ctype}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode() + payload


@st.composite
def hostile_message(draw: st.DrawFn) -> bytes:
    subject = draw(st.one_of(TEXTS, st.just("x" * 20_000), st.just("=?utf-8?b?" + "QUJD" * 3000 + "?=")))
    name = draw(st.one_of(TEXTS, st.just("Eve\r\nBcc: victim@example.org"), st.just("=?utf-8?q?Eve=0D=0ABcc:_victim@example.org?=")))
    sender = draw(st.sampled_from(["eve@example.org", "", "<>", "not an address", "a@b@c", "eve@[127.0.0.1]", "ÉVE@exämple.org"]))
    headers = [
        f"From: {name!s} <{sender}>".encode("utf-8", "surrogateescape"),
        b"To: privacy@example.com",
        b"Subject: " + subject.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b" "),
        b"MIME-Version: 1.0",
    ]
    headers += [b"X-Filler-%d: %s" % (i, b"y" * 50) for i in range(draw(st.sampled_from([0, 0, 3, 2000])))]
    if draw(st.booleans()):
        headers.append(b"Message-ID: <" + draw(st.sampled_from([b"", b"a b", b"x" * 2000, b"\xff\xfe"])) + b"@x>")
    return b"\r\n".join(headers) + b"\r\n" + draw(mime_part())


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=hostile_message())
def test_generated_mime_never_crashes_and_every_message_is_kept(services: Services, raw: bytes) -> None:
    before = counts(services)
    t0 = time.perf_counter()
    result = receive_email(services, raw, source="hypothesis")
    assert time.perf_counter() - t0 < 10
    assert result is not None
    assert result.action in {"opened", "triage", "threaded", "duplicate", "auto_reply", "clarified", "verified", "shunted"}
    after = counts(services)
    assert result.action == "duplicate" or sum(after) == sum(before) + 1
    with services.db.transaction() as s:
        payloads = list(s.scalars(select(OutboxItem.payload).where(OutboxItem.channel == "email")))
    for payload in payloads:
        assert_no_injected_header(payload)


# ------------------------------------------------------------------ headers and templates

EXPECTED_HEADERS = {"from", "to", "subject", "date", "message-id", "in-reply-to", "references", "auto-submitted", "mime-version", "content-type", "content-transfer-encoding"}


def assert_no_injected_header(payload: bytes) -> None:
    msg = email.message_from_bytes(payload, policy=email.policy.default)
    assert {k.lower() for k in msg.keys()} <= EXPECTED_HEADERS, msg.keys()
    assert msg.get_all("To") and len(msg.get_all("To")) == 1
    head = payload.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
    assert b"\r" not in head.replace(b"\r\n", b"")  # no bare CR left in any header


@pytest.mark.parametrize(
    "from_header, subject_header",
    [
        # Encoded words that decode to CR LF + a header.
        ("=?utf-8?q?Alice=0D=0ABcc=3A_victim=40example=2Eorg?= <alice@example.org>", "=?utf-8?q?Help=0D=0ABcc=3A_victim=40example.org?="),
        ("=?utf-8?b?QWxpY2UNCkJjYzogdmljdGltQGV4YW1wbGUub3Jn?= <alice@example.org>", "=?utf-8?b?SGVscA0KQmNjOiB2aWN0aW1AZXhhbXBsZS5vcmc=?="),
        # A folded header whose continuation looks like a header of its own.
        ('"Alice\r\n Bcc: victim@example.org" <alice@example.org>', "Help\r\n Bcc: victim@example.org"),
    ],
    ids=["quoted-printable-words", "base64-words", "folding"],
)
def test_crlf_in_name_or_subject_never_reaches_an_outgoing_header(
    services: Services, smtp_port: int, from_header: str, subject_header: str
) -> None:
    raw = (
        f"From: {from_header}\r\nTo: privacy@example.com\r\nSubject: {subject_header}\r\n"
        f"Message-ID: <inject-{abs(hash(from_header))}@example.org>\r\n\r\n"
        "Please delete all the personal information you hold about me.\r\n"
    ).encode()
    send(smtp_port, raw)
    [ack] = deliver(services)
    payload = ack.as_bytes()
    assert_no_injected_header(payload)
    assert ack["To"] == "alice@example.org"
    assert "victim" not in str(ack["To"]) + str(ack.get("Cc", "")) + str(ack.get("Bcc", ""))


def test_template_syntax_in_a_message_is_shown_as_text(services: Services, smtp_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "{{ 6*7*1001 }} {% for x in range(3) %}loop{% endfor %}"
    body = "Please delete all the personal information you hold about me. {{ 6*7*1001 }} {% for x in range(3) %}loop{% endfor %} {{ config }}"
    msg = make_mail(body)
    del msg["From"]
    msg["From"] = f'"{name}" <alice@example.org>'
    send(smtp_port, msg)
    [ack] = deliver(services)
    text = ack.get_body(("plain",)).get_content()
    assert "{{ 6*7*1001 }}" in text  # the name, greeted literally
    assert "42042" not in text and "looploop" not in text

    config = tmp_path / "privbot.toml"
    config.write_text(f'data_dir = "{services.settings.data_dir}"\ndatabase_url = "{services.settings.db_url}"\nprivacy_address = "privacy@example.com"\n')
    with services.db.transaction() as s:
        ref = s.scalars(select(Ticket)).one().ref
    assert cli.main(["--config", str(config), "show", ref, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    request = next(m for m in shown["messages"] if m["direction"] == "in")
    assert "{{ 6*7*1001 }}" in request["text"] and "{% for x in range(3) %}" in request["text"]
    assert "42042" not in json.dumps(shown)


# ------------------------------------------------------------------ size and depth


def nested(depth: int) -> bytes:
    head = b"From: deep@example.org\r\nTo: privacy@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    leaf = b"Content-Type: text/plain\r\n\r\nPlease delete all the personal information you hold about me.\r\n"
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + opening + leaf + closing


def test_a_thousand_nested_multiparts_are_handled_in_bounded_time(services: Services, smtp_port: int) -> None:
    t0 = time.perf_counter()
    send(smtp_port, nested(1000), sender="deep@example.org")
    assert time.perf_counter() - t0 < 15
    assert sum(counts(services)) == 1  # a ticket or the shunt, never nothing


def folded(name: bytes, size: int, unit: bytes) -> bytes:
    """A header of ``size`` bytes folded into legal 70-byte lines (SMTP allows 998)."""
    return name + b": " + b"\r\n ".join([unit * 70] * (size // 70)) + b"\r\n"


def test_huge_headers_are_handled_in_bounded_time(services: Services, smtp_port: int) -> None:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(20_000))
    raw = (
        b"From: big@example.org\r\nTo: privacy@example.com\r\n"
        + folded(b"Subject", 100_000, b"s")
        + many
        + folded(b"X-Long", 1_000_000, b"w")
        + b"\r\nPlease delete my data.\r\n"
    )
    assert len(raw) < services.settings.smtp_max_size
    t0 = time.perf_counter()
    send(smtp_port, raw, sender="big@example.org")
    assert time.perf_counter() - t0 < 20
    assert sum(counts(services)) == 1
    for reply in deliver(services):
        assert len(str(reply["Subject"])) < 1000


def test_oversized_message_and_overlong_line_are_refused_cleanly(services: Services, smtp_port: int) -> None:
    lines = (b"z" * 70 + b"\r\n") * (services.settings.smtp_max_size // 72 + 100)
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.ehlo()
        smtp.mail("big@example.org")
        smtp.rcpt("privacy@example.com")
        code, _ = smtp.data(b"From: big@example.org\r\n\r\n" + lines)
        assert code == 552  # over PRIVBOT_SMTP_MAX_SIZE
        smtp.rset()
        smtp.mail("big@example.org")
        smtp.rcpt("privacy@example.com")
        code, _ = smtp.data(b"From: big@example.org\r\nSubject: " + b"y" * 5000 + b"\r\n\r\nhello\r\n")
        assert code == 500  # a line longer than RFC 5321 allows
        # The connection stays usable for the next, normal message.
        smtp.rset()
        assert smtp.sendmail("alice@example.org", ["privacy@example.com"], make_mail().as_bytes()) == {}
    assert counts(services) == (1, 0)


# ------------------------------------------------------------------ bursts


def test_burst_of_500_from_one_address_gets_at_most_the_configured_answers(services: Services, smtp_port: int) -> None:
    cap = services.settings.max_auto_replies_per_day
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
        for i in range(500):
            msg = make_mail(f"Please delete all the personal information you hold about me. ({i})", sender="flood@example.org")
            smtp.send_message(msg, from_addr="flood@example.org", to_addrs=["privacy@example.com"])
    with services.db.transaction() as s:
        received = s.scalar(select(func.count(Message.id)).where(Message.direction == "in", Message.sender == "flood@example.org"))
        queued = s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.recipient == "flood@example.org"))
    assert received == 500  # every message recorded
    assert queued == cap
    assert len(deliver(services)) == cap


def test_parallel_burst_from_one_address_still_gets_at_most_the_configured_answers(services: Services, smtp_port: int) -> None:
    # Eight connections at once: the cap must hold when transactions overlap.
    cap = services.settings.max_auto_replies_per_day

    def one_connection(worker: int) -> None:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
            for i in range(10):
                msg = make_mail(f"Please send me a copy of all my personal data ({worker}/{i}).", sender="flood@example.org")
                smtp.send_message(msg, from_addr="flood@example.org", to_addrs=["privacy@example.com"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_connection, range(8)))
    with services.db.transaction() as s:
        queued = s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.recipient == "flood@example.org"))
        received = s.scalar(select(func.count(Message.id)).where(Message.direction == "in"))
    assert received == 80
    assert queued == cap


def test_burst_from_one_chat_gets_at_most_the_configured_answers(services: Services) -> None:
    # What the Telegram channel hands to intake(): sender "telegram:<chat>", answers to the chat id.
    from privbot.domain import Channel, Inbound
    from privbot.intake import intake

    cap = services.settings.max_auto_replies_per_day
    for i in range(cap + 15):
        intake(services, Inbound(
            channel=Channel.TELEGRAM, sender="telegram:4242", chat_id=4242, message_id=f"tg:4242:{i}",
            text="Please delete all the personal information you hold about me.",
        ))
    with services.db.transaction() as s:
        to_chat = s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.channel == "telegram", OutboxItem.recipient == "4242"))
        received = s.scalar(select(func.count(Message.id)).where(Message.direction == "in"))
    assert received == cap + 15
    assert to_chat == cap


# ------------------------------------------------------------------ the same corpora over IMAP


@pytest.mark.skipif(not CORPUS or len(BOUNCES) < 100, reason="CPython's email corpus or the vendored bounces are missing")
def test_corpora_through_imap_are_all_filed_recorded_and_automatic_mail_never_answered(services: Services, imap_account) -> None:  # type: ignore[no-untyped-def]
    import threading

    from privbot.channels.imap import ImapWatcher

    # In a mailbox, the delivery agent has written the envelope sender as Return-Path:
    # "<>" for the bounces, as Dovecot's LDA or Postfix's local(8) would.
    mails = [on_the_wire(p.read_bytes()) for p in CORPUS] + [b"Return-Path: <>\r\n" + on_the_wire(p.read_bytes()) for p in BOUNCES]
    ids = [message_id_of(raw) for raw in mails]
    distinct = len({i for i in ids if i}) + sum(1 for i in ids if not i)
    imap_account.deliver_many(mails)

    s = services.settings
    s.imap_host, s.imap_port, s.imap_user, s.imap_password = imap_account.host, imap_account.port, imap_account.user, imap_account.password
    s.imap_ssl, s.imap_batch = "plain", 50
    watcher = ImapWatcher(services)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        assert watcher.idle_ready.wait(60), "the watcher did not drain the mailbox within 60 s"
    finally:
        watcher.stop()
        thread.join(15)
    assert imap_account.count("INBOX") == 0
    filed_ok, filed_failed = imap_account.count("Processed"), imap_account.count("Failed")
    assert filed_ok + filed_failed == len(mails)
    received, shunted = counts(services)
    assert shunted == filed_failed >= 1  # what could not be read is kept, and shown in Failed
    assert received + shunted == distinct
    assert answers_to_automatic_mail(services) == []
    with services.db.transaction() as session:
        bounce_senders = set(session.scalars(select(Message.sender).where(Message.auto_reason == "bounce")))
        answered = set(session.scalars(select(OutboxItem.recipient)))
    assert not (answered & bounce_senders - {""})
