"""The mail parser: what a requester's mail turns into, however it was encoded.

Messages are built here as raw bytes (so the exact charset and transfer encoding are
under test) or with ``EmailMessage``; assertions are about what a person would notice:
the words they wrote, who they are, whether it is an auto-reply.
"""

from __future__ import annotations

import base64
import email
import os
import quopri
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privbot.channels.parse import (
    MAX_TEXT_CHARS,
    UnparseableMessage,
    auto_reply_reason,
    clean_header_text,
    normalise_address,
    parse_email,
)
from privbot.domain import Channel


def raw_mail(
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    cte: str | None = None,
    subject: str = "Privacy request",
    sender: str = "Ann Example <ann@example.org>",
    extra: str = "",
) -> bytes:
    head = (
        f"From: {sender}\r\n"
        "To: privacy@company.test\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <m1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
    )
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    head += extra
    return head.encode("utf-8") + b"\r\n" + body


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data)


def ew(text: str, charset: str, enc: str = "B") -> str:
    """An RFC 2047 encoded word."""
    data = text.encode(charset)
    if enc == "B":
        return f"=?{charset}?B?{base64.b64encode(data).decode()}?="
    q = "".join(chr(b) if 33 <= b < 127 and chr(b) not in "=?_" else f"={b:02X}" for b in data)
    return f"=?{charset}?Q?{q}?="


def parse_msg(msg: EmailMessage) -> object:
    return parse_email(msg.as_bytes(policy=policy.SMTP))


def human(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Ann Example <ann@example.org>")
    msg["To"] = "privacy@company.test"
    msg["Subject"] = headers.pop("Subject", "Please delete my data")
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content("Please delete my account and all my data.\n\nAnn\n")
    return msg


# ------------------------------------------------------------------- charsets

def test_gbk_body_and_encoded_subject_are_decoded() -> None:
    body = "请删除我的个人数据，谢谢。".encode("gbk")
    raw = raw_mail(b64(body), content_type="text/plain; charset=gbk", cte="base64",
                   subject=ew("删除我的数据", "gbk"), sender=f"{ew('张三', 'gb2312')} <zhang@example.cn>")
    inbound = parse_email(raw)
    assert inbound.text == "请删除我的个人数据，谢谢。"
    assert inbound.subject == "删除我的数据"
    assert inbound.sender_name == "张三"
    assert inbound.sender == "zhang@example.cn"


def test_gb2312_label_decodes_characters_only_in_gb18030() -> None:
    # "镕" is not in GB2312 but mail clients labelled gb2312 send it (as GBK) anyway.
    body = "朱镕基 请删除我的账户".encode("gb18030")
    raw = raw_mail(body, content_type="text/plain; charset=gb2312", cte="8bit")
    assert parse_email(raw).text == "朱镕基 请删除我的账户"


def test_big5_body_is_decoded() -> None:
    body = "請刪除我的個人資料。".encode("big5")
    raw = raw_mail(body, content_type='text/plain; charset="big5"', cte="8bit",
                   subject=ew("個人資料", "big5", "Q"))
    inbound = parse_email(raw)
    assert inbound.text == "請刪除我的個人資料。"
    assert inbound.subject == "個人資料"


def test_iso_2022_jp_body_and_subject_are_decoded() -> None:
    body = "個人情報を削除してください。".encode("iso2022_jp")
    raw = raw_mail(body, content_type="text/plain; charset=ISO-2022-JP", cte="7bit",
                   subject=ew("退会の依頼", "iso2022_jp"))
    inbound = parse_email(raw)
    assert inbound.text == "個人情報を削除してください。"
    assert inbound.subject == "退会の依頼"


def test_shift_jis_body_is_decoded() -> None:
    body = "アカウントを削除してください".encode("shift_jis")
    raw = raw_mail(b64(body), content_type="text/plain; charset=Shift_JIS", cte="base64")
    assert parse_email(raw).text == "アカウントを削除してください"


def test_euc_kr_and_outlook_ks_c_5601_labels_are_decoded() -> None:
    body = "제 개인정보를 삭제해 주세요".encode("euc_kr")
    for label in ("euc-kr", "ks_c_5601-1987"):
        raw = raw_mail(b64(body), content_type=f"text/plain; charset={label}", cte="base64")
        assert parse_email(raw).text == "제 개인정보를 삭제해 주세요"


def test_latin1_quoted_printable_body_is_decoded() -> None:
    text = "Bitte löschen Sie meine Daten – danke, Müller"
    # Labelled iso-8859-1 but written by a Windows client: the dash is cp1252 0x96.
    raw = raw_mail(quopri.encodestring(text.encode("cp1252")), content_type="text/plain; charset=iso-8859-1",
                   cte="quoted-printable", subject=ew("Löschung", "iso-8859-1", "Q"))
    inbound = parse_email(raw)
    assert inbound.text == text
    assert inbound.subject == "Löschung"


def test_base64_utf8_body_is_decoded() -> None:
    text = "Supprimez mes données, s'il vous plaît. 🙏"
    raw = raw_mail(b64(text.encode()), cte="base64")
    assert parse_email(raw).text == text


def test_missing_charset_tries_utf8_then_falls_back() -> None:
    utf8 = raw_mail("Löschen bitte".encode(), content_type="text/plain", cte="8bit")
    assert parse_email(utf8).text == "Löschen bitte"
    latin = raw_mail("Löschen bitte".encode("latin-1"), content_type="text/plain", cte="8bit")
    assert parse_email(latin).text == "Löschen bitte"


def test_wrong_charset_label_degrades_instead_of_crashing() -> None:
    raw = raw_mail("délétez".encode("latin-1") + b" \xff\xfe please", content_type="text/plain; charset=utf-8",
                   cte="8bit")
    inbound = parse_email(raw)
    assert "please" in inbound.text and "\ufffd" in inbound.text


def test_unknown_charset_label_is_treated_as_missing() -> None:
    raw = raw_mail("données".encode(), content_type="text/plain; charset=x-no-such-charset", cte="8bit",
                   subject="=?x-no-such?Q?donn=C3=A9es?=")
    inbound = parse_email(raw)
    assert inbound.text == "données"
    assert inbound.subject == "données"


def test_raw_utf8_headers_are_decoded() -> None:
    # RFC 6532: modern clients put UTF-8 straight into headers.
    inbound = parse_email("From: José Núñez <jose@example.es>\r\nSubject: Löschung\r\n\r\nhello".encode())
    assert inbound.subject == "Löschung"
    assert inbound.sender_name == "José Núñez"
    assert inbound.sender == "jose@example.es"


def test_encoded_word_split_inside_a_multibyte_character_is_joined() -> None:
    data = "删除数据".encode()
    words = f"=?utf-8?B?{base64.b64encode(data[:4]).decode()}?= =?utf-8?B?{base64.b64encode(data[4:]).decode()}?="
    assert parse_email(raw_mail(b"x", subject=words)).subject == "删除数据"


def test_bad_base64_still_yields_text() -> None:
    good = base64.b64encode(b"Please erase my data").decode()
    raw = raw_mail((good[:-2] + "!!\r\n*").encode(), cte="base64")
    assert parse_email(raw).text.startswith("Please erase my")


# ---------------------------------------------------------------- structure

def test_multipart_alternative_prefers_plain_text() -> None:
    msg = human()
    msg.add_alternative("<p>HTML version <b>only</b></p>", subtype="html")
    inbound = parse_msg(msg)
    assert inbound.text.startswith("Please delete my account")
    assert "HTML version" not in inbound.full_text


def test_html_only_mail_becomes_readable_text() -> None:
    html = (
        "<html><head><title>Newsletter</title><meta charset='utf-8'></head><body>"
        "<p>Hello,</p><p>Please <b>delete</b> my data &amp; close my account.<br>Thanks&nbsp;a lot</p>"
        "<ul><li>email: ann@example.org</li><li>id: 42</li></ul></body></html>"
    )
    raw = raw_mail(html.encode(), content_type="text/html; charset=utf-8")
    text = parse_email(raw).text
    assert text == (
        "Hello,\n\nPlease delete my data & close my account.\nThanks a lot\n\n"
        "- email: ann@example.org\n- id: 42"
    )
    assert "Newsletter" not in text


def test_script_in_html_is_not_kept_as_text() -> None:
    html = "<div>Delete my data</div><script>alert('x'); var a = 1 < 2;</script><style>p{color:red}</style>"
    text = parse_email(raw_mail(html.encode(), content_type="text/html")).full_text
    assert text == "Delete my data"


def test_html_blockquote_is_treated_as_quote() -> None:
    html = ("<div>Yes, that is me.</div><div>On Mon, Privacy wrote:</div>"
            "<blockquote>Please confirm you asked to delete your data</blockquote>")
    inbound = parse_email(raw_mail(html.encode(), content_type="text/html"))
    assert inbound.text == "Yes, that is me."
    assert "> Please confirm" in inbound.full_text


def test_quoted_request_is_not_new_text() -> None:
    body = b"Thanks, never mind.\r\n\r\nOn Mon, 1 Jan 2024, Ann wrote:\r\n> Please delete my account.\r\n"
    inbound = parse_email(raw_mail(body))
    assert inbound.text == "Thanks, never mind."
    assert "Please delete my account." in inbound.full_text


def test_only_quotes_fall_back_to_full_text() -> None:
    body = b"> Please delete my account.\r\n"
    inbound = parse_email(raw_mail(body))
    assert inbound.text == inbound.full_text == "> Please delete my account."


def test_format_flowed_lines_are_joined() -> None:
    body = b"Please delete my \r\naccount and all \r\nmy data.\r\n"
    inbound = parse_email(raw_mail(body, content_type="text/plain; charset=utf-8; format=flowed"))
    assert inbound.text == "Please delete my account and all my data."


def test_attachments_are_not_read_as_text() -> None:
    msg = human()
    msg.add_attachment(b"%PDF-1.4 binary", maintype="application", subtype="pdf", filename="id.pdf")
    msg.add_attachment("secret log line", filename="log.txt")
    inbound = parse_msg(msg)
    assert inbound.text.startswith("Please delete my account")
    assert "secret log" not in inbound.full_text and "PDF" not in inbound.full_text


def test_forwarded_message_is_kept_as_text() -> None:
    inner = human(Subject="Delete my data")
    outer = EmailMessage()
    outer["From"] = "staff@company.test"
    outer["Subject"] = "Fwd: Delete my data"
    outer.set_content("See below.")
    outer.add_attachment(inner)
    inbound = parse_msg(outer)
    assert inbound.text == "See below."
    assert "Please delete my account" in inbound.full_text


def test_broken_boundary_still_yields_text() -> None:
    body = (b"--real-boundary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"Please erase my data.\r\n--real-boundary--\r\n")
    raw = raw_mail(body, content_type='multipart/mixed; boundary="declared-but-wrong"')
    assert parse_email(raw).text == "Please erase my data."
    no_boundary = raw_mail(body, content_type="multipart/alternative")
    assert parse_email(no_boundary).text == "Please erase my data."


def test_unterminated_multipart_still_yields_text() -> None:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nPlease erase my data.\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>x"
    raw = raw_mail(body, content_type='multipart/alternative; boundary="b"')
    assert parse_email(raw).text == "Please erase my data."


def test_missing_content_type_is_plain_text() -> None:
    raw = b"From: ann@example.org\r\nSubject: hi\r\n\r\nDelete my data"
    assert parse_email(raw).text == "Delete my data"


def test_deep_nesting_is_bounded() -> None:
    depth = 1500
    raw = b"From: ann@example.org\r\nSubject: deep\r\n"
    for i in range(depth):
        raw += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    raw += b"Content-Type: text/plain\r\n\r\nhello\r\n"
    for i in reversed(range(depth)):
        raw += b"--b%d--\r\n" % i
    inbound = parse_email(raw)
    assert inbound.sender == "ann@example.org"


def test_huge_text_is_capped() -> None:
    raw = raw_mail(b"delete my data " * 40_000)
    inbound = parse_email(raw)
    assert len(inbound.full_text) <= MAX_TEXT_CHARS
    assert inbound.raw == raw


# ------------------------------------------------------------------ headers

def test_reply_to_is_ignored_for_sender() -> None:
    msg = human(Reply_To="attacker@evil.test", Sender="other@evil.test")
    inbound = parse_msg(msg)
    assert inbound.sender == "ann@example.org"
    assert inbound.sender_name == "Ann Example"


def test_encoded_word_cannot_forge_the_address() -> None:
    raw = raw_mail(b"x", sender="=?utf-8?Q?victim=40bank.test?= <attacker@evil.test>")
    inbound = parse_email(raw)
    assert inbound.sender == "attacker@evil.test"
    assert inbound.sender_name == "victim@bank.test"


def test_sender_address_is_normalised() -> None:
    assert parse_email(raw_mail(b"x", sender="<Ann.Example+tag@Example.ORG>")).sender == "ann.example+tag@example.org"


def test_normalise_address_rules() -> None:
    assert normalise_address("  Ann@Example.ORG. ") == "ann@example.org"
    assert normalise_address("Ann <Ann@Example.org>") == "ann@example.org"
    assert normalise_address("mailto:ann@example.org") == "ann@example.org"
    assert normalise_address('Ann <"Ann.Lee"@Example.org>') == "ann.lee@example.org"  # quotes it needs not
    for bad in ('"ann lee"@example.org', '"ann@x"@example.org', '"".@example.org', '".ann"@example.org', "", "ann", "ann@", "@example.org", "a@b@c", "ann smith@example.org", "ann@exa mple.org",
                "ann@example..org", "ann\r\n@example.org"):
        assert normalise_address(bad) == "", bad


def test_crlf_in_subject_cannot_reach_a_header() -> None:
    cleaned = clean_header_text("Hello\r\nBcc: victim@example.org\x00\x1b[31m\u2028x")
    assert "\r" not in cleaned and "\n" not in cleaned and "\x00" not in cleaned and "\x1b" not in cleaned
    assert "\u2028" not in cleaned
    assert cleaned.startswith("Hello Bcc: victim@example.org")
    # An encoded word that decodes to a newline is neutralised too.
    assert "\n" not in clean_header_text("=?utf-8?Q?a=0D=0ABcc:_x@y?=")
    assert len(clean_header_text("x" * 5000)) <= 255


def test_message_ids_are_kept_in_angle_bracket_form() -> None:
    extra = ("In-Reply-To: <parent@company.test> (Privacy's message)\r\n"
             "References: <root@company.test>\r\n <parent@company.test>\r\n")
    raw = raw_mail(b"x", extra=extra).replace(b"Message-ID: <m1@example.org>", b"Message-ID:  < m1@example.org >")
    inbound = parse_email(raw)
    assert inbound.message_id == "<m1@example.org>"
    assert inbound.in_reply_to == "<parent@company.test>"
    assert inbound.references == ("<root@company.test>", "<parent@company.test>")


def test_missing_message_id_gives_empty_id() -> None:
    raw = raw_mail(b"x").replace(b"Message-ID: <m1@example.org>\r\n", b"")
    inbound = parse_email(raw)
    assert inbound.message_id == ""
    assert inbound.references == ()


def test_inbound_carries_channel_time_raw_and_language() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    raw = raw_mail(b"Bitte loeschen", extra="Content-Language: de-de, en\r\n")
    inbound = parse_email(raw, received_at=at, channel=Channel.EMAIL)
    assert inbound.received_at == at
    assert inbound.raw == raw
    assert inbound.language_hint == "de-DE"
    assert inbound.channel is Channel.EMAIL


# ------------------------------------------------------------ auto replies

def test_human_message_has_no_auto_reason() -> None:
    assert parse_msg(human()).auto_reason is None
    assert parse_msg(human(Auto_Submitted="no")).auto_reason is None


def test_out_of_office_is_recognised() -> None:
    exchange = human(Subject="Automatic reply: Your request", Auto_Submitted="auto-replied",
                     X_Auto_Response_Suppress="All")
    assert parse_msg(exchange).auto_reason == "out-of-office"
    for subject in ("Out of Office: Re: hello", "Abwesenheitsnotiz: Anfrage", "自动回复: 你好",
                    "Réponse automatique : demande", "Respuesta automática: hola", "自動応答: お問い合わせ",
                    "Auto: away"):
        assert parse_msg(human(Subject=subject)).auto_reason == "out-of-office", subject


def test_auto_reply_headers_are_recognised() -> None:
    assert parse_msg(human(Auto_Submitted="auto-replied")).auto_reason == "auto-reply"
    assert parse_msg(human(Auto_Submitted="auto-generated")).auto_reason == "auto-submitted"
    assert parse_msg(human(X_Autoreply="yes")).auto_reason == "auto-reply"
    assert parse_msg(human(X_Autorespond="yes")).auto_reason == "auto-reply"
    assert parse_msg(human(Precedence="auto_reply")).auto_reason == "auto-reply"
    assert parse_msg(human(X_Auto_Response_Suppress="OOF, DR")).auto_reason == "auto-reply"
    assert parse_msg(human(X_Auto_Response_Suppress="DR")).auto_reason is None


def test_list_and_bulk_mail_is_recognised() -> None:
    assert parse_msg(human(List_Id="<news.shop.test>")).auto_reason == "list"
    assert parse_msg(human(List_Unsubscribe="<mailto:unsub@shop.test>")).auto_reason == "list"
    assert parse_msg(human(Precedence="bulk")).auto_reason == "bulk"


def test_dsn_bounce_is_recognised() -> None:
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
           b"Subject: Undelivered Mail Returned to Sender\r\n"
           b'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
           b"--R\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
           b"--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
           b"Final-Recipient: rfc822; x@y\r\nAction: failed\r\nStatus: 5.1.1\r\n--R--\r\n")
    inbound = parse_email(raw)
    assert inbound.auto_reason == "bounce"
    assert "sorry" in inbound.text
    assert parse_msg(human(From="postmaster@example.org")).auto_reason == "bounce"
    assert parse_msg(human(X_Failed_Recipients="x@y.test")).auto_reason == "bounce"


def test_read_receipt_is_recognised() -> None:
    raw = (b"From: ann@example.org\r\nSubject: Read: hello\r\n"
           b'Content-Type: multipart/report; report-type=disposition-notification; boundary="R"\r\n\r\n'
           b"--R\r\nContent-Type: text/plain\r\n\r\nYour message was read.\r\n--R--\r\n")
    assert parse_email(raw).auto_reason == "read-receipt"


def test_null_return_path_is_a_bounce() -> None:
    assert parse_msg(human(Return_Path="<>")).auto_reason == "bounce"
    assert parse_msg(human(Return_Path="<ann@example.org>")).auto_reason is None


def test_auto_reply_reason_accepts_a_built_message() -> None:
    assert auto_reply_reason(human()) is None
    assert auto_reply_reason(human(Auto_Submitted="auto-replied; owner=x")) == "auto-reply"
    parsed = email.message_from_bytes(b"Subject: =?bad?Q?Out_of_Office?=\r\n\r\n", policy=policy.default)
    assert auto_reply_reason(parsed) == "out-of-office"  # type: ignore[arg-type]


# ----------------------------------------------------------- authentication

def _with_auth(results: str, sender: str = "ann@example.org", extra: str = "") -> bytes:
    return raw_mail(b"x", sender=sender, extra=f"Authentication-Results: {results}\r\n{extra}")


def test_dmarc_pass_marks_sender_authenticated() -> None:
    raw = _with_auth("mx.company.test; spf=pass smtp.mailfrom=bounce.esp.test; "
                     "dkim=pass header.d=example.org; dmarc=pass (p=reject) header.from=example.org")
    assert parse_email(raw).sender_authenticated is True


def test_dkim_or_spf_pass_must_match_the_from_domain() -> None:
    assert parse_email(_with_auth("mx; dkim=pass header.i=@example.org")).sender_authenticated
    assert parse_email(_with_auth("mx; spf=pass smtp.mailfrom=ann@example.org")).sender_authenticated
    # Microsoft 365 writes no authserv-id.
    assert parse_email(_with_auth("spf=pass (sender IP) smtp.mailfrom=example.org; dkim=none")).sender_authenticated
    assert not parse_email(_with_auth("mx; dkim=pass header.d=esp.test")).sender_authenticated
    assert not parse_email(_with_auth("mx; spf=pass smtp.mailfrom=esp.test")).sender_authenticated
    assert not parse_email(_with_auth("mx; dkim=fail header.d=example.org")).sender_authenticated
    assert not parse_email(_with_auth("mx; dmarc=pass")).sender_authenticated
    assert not parse_email(_with_auth("mx; dkim=pass header.d=sub.example.org.evil.test")).sender_authenticated


def test_spoofed_authentication_results_for_other_domain_does_not() -> None:
    # The sender wrote a passing header for the victim domain; the receiving server's
    # own header (on top) says the message failed.
    raw = _with_auth("mx.company.test; dmarc=fail header.from=bank.test", sender="ceo@bank.test",
                     extra="Authentication-Results: mx.company.test; dmarc=pass header.from=bank.test\r\n")
    assert parse_email(raw).sender_authenticated is False
    # A pass for the attacker's own domain says nothing about the From domain.
    raw = _with_auth("mx; dmarc=pass header.from=evil.test; dkim=pass header.d=evil.test", sender="ceo@bank.test")
    assert parse_email(raw).sender_authenticated is False
    # A comment cannot smuggle a result in.
    raw = _with_auth("mx; dmarc=fail (dmarc=pass header.from=bank.test) header.from=bank.test", sender="ceo@bank.test")
    assert parse_email(raw).sender_authenticated is False


def test_trusted_authserv_ids_limit_which_headers_count() -> None:
    raw = _with_auth("attacker.test; dmarc=pass header.from=example.org")
    assert parse_email(raw, trusted_authserv_ids=()).sender_authenticated is False
    assert parse_email(raw, trusted_authserv_ids=["mx.company.test"]).sender_authenticated is False
    assert parse_email(raw, trusted_authserv_ids=["attacker.test"]).sender_authenticated is True


def test_ambiguous_from_is_never_authenticated() -> None:
    raw = _with_auth("mx; dmarc=pass header.from=example.org", sender="ann@example.org, eve@evil.test")
    inbound = parse_email(raw)
    assert inbound.sender == "ann@example.org"
    assert inbound.sender_authenticated is False


# ------------------------------------------------------------- not mail at all

@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n\r\n", b"\x00\x01\x02\x03" * 100, bytes(range(256)) * 4, b"just some words, no headers",
     b"Subject: nothing\r\n\r\n"],
)
def test_garbage_bytes_raise_unparseable(raw: bytes) -> None:
    with pytest.raises(UnparseableMessage):
        parse_email(raw)


def test_headers_and_text_without_from_still_parse() -> None:
    inbound = parse_email(b"Subject: delete\r\n\r\nPlease delete my data")
    assert inbound.sender == ""
    assert inbound.text == "Please delete my data"


def test_from_with_empty_body_still_parses() -> None:
    inbound = parse_email(b"From: ann@example.org\r\nSubject: Delete my data\r\n\r\n")
    assert inbound.sender == "ann@example.org"
    assert inbound.subject == "Delete my data"
    assert inbound.text == ""


# ------------------------------------------------------------------- fuzzing

# PRIVBOT_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the suite fast.
_FUZZ = settings(max_examples=int(os.environ.get("PRIVBOT_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SEED = (
    b"From: =?utf-8?B?5byg5LiJ?= <zhang@example.cn>\r\nTo: privacy@company.test\r\n"
    b"Subject: =?gb2312?B?yb6z/c7StcTK/b7d?=\r\nMessage-ID: <a@b>\r\nReferences: <r@b>\r\n"
    b"Authentication-Results: mx; dmarc=pass header.from=example.cn\r\n"
    b'Content-Type: multipart/alternative; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=gbk\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"x+vJvrP9ztK1xLj2yMvK/b7doaM=\r\n"
    b"--XX\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"<p>Hello=20<b>world</b><blockquote>old</blockquote></p>\r\n--XX--\r\n"
)


def _check(raw: bytes) -> None:
    try:
        inbound = parse_email(raw)
    except UnparseableMessage:
        return
    for value in (inbound.text, inbound.full_text, inbound.subject, inbound.sender_name, inbound.message_id):
        value.encode("utf-8")  # storable: no lone surrogates
        assert "\x00" not in value
    assert "\n" not in inbound.subject and "\r" not in inbound.subject
    assert inbound.raw == raw


@_FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_unparseable(raw: bytes) -> None:
    _check(raw)


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_SEED)), st.integers(0, 40), st.binary(max_size=30)), max_size=6))
def test_mutated_mail_never_raises_anything_but_unparseable(edits: list[tuple[int, int, bytes]]) -> None:
    raw = _SEED
    for pos, cut, insert in edits:
        pos = min(pos, len(raw))
        raw = raw[:pos] + insert + raw[pos + cut :]
    _check(raw)


_HEADER_NAMES = st.sampled_from(["From", "Subject", "Content-Type", "Content-Transfer-Encoding", "Message-ID",
                                 "References", "Authentication-Results", "Auto-Submitted", "Return-Path",
                                 "Content-Language", "List-Id", "Precedence", "X-Auto-Response-Suppress"])
_HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["multipart/mixed", 'multipart/mixed; boundary="', "text/html; charset=x", "base64",
                     "=?utf-8?B?!!!?=", "=?gb2312?Q?=FF=FE?=", "<>", '"a\\', "(((((", "a@b@c", "=?", ";;;=;",
                     "text/plain; charset*=utf-8''%FF", "message/rfc822", "multipart/report; report-type="]),
)


@_FUZZ
@given(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8), st.binary(max_size=300))
def test_random_headers_never_raise_anything_but_unparseable(headers: list[tuple[str, str]], body: bytes) -> None:
    head = b"".join(f"{k}: {v}".encode("utf-8", "surrogateescape") + b"\r\n" for k, v in headers)
    _check(head + b"\r\n" + body)


# ------------------------------------------------------------- fast paths, same answers

_FROM_FORMS = [
    "ann@example.org", "<ann@example.org>", "Ann Example <ann@example.org>", "Ann<ann@example.org>",
    "  Ann  Example <ann@example.org> ", "A.B-c_d+tag@Sub.Example-Host.ORG", "O'Brien <o@b.org>",
    "a..b@x.org", ".a@x.org", "a.@x.org", "a@x..org", "a@b", "a@-b.org", "a@b.org.", "a@b@c.org",
    '"Ann, B" <a@b.org>', "a@b.org, c@d.org", "=?utf-8?q?v@x?= <a@b.org>", "Ann <a@b.org",
    "ann (comment) <a@b.org>", "<a@[1.2.3.4]>", "x <a@b.org> y", "<>", "Ann\t<a@b.org>", "a@b.org (Ann)",
    'Ann <"q"@b.org>', "Ünïcode <a@b.org>", "Ann <a@bü.org>",
]


@pytest.mark.parametrize("value", _FROM_FORMS)
def test_plain_from_shortcut_reads_the_address_the_header_registry_reads(value: str) -> None:
    from privbot.channels.parse import _PLAIN_FROM, _from_by_registry, _from_by_second_parser

    assert _from_by_second_parser(value) == _from_by_registry(value)
    if value in ("ann@example.org", "Ann Example <ann@example.org>", "A.B-c_d+tag@Sub.Example-Host.ORG"):
        assert _PLAIN_FROM.fullmatch(value)  # the shortcut is really taken for plain forms


def test_header_lookups_outside_a_parse_see_later_changes() -> None:
    msg = email.message_from_bytes(raw_mail(b"please delete my data"), policy=policy.default)
    assert auto_reply_reason(msg) is None
    msg["Auto-Submitted"] = "auto-replied"
    assert auto_reply_reason(msg) == "auto-reply"


def test_messages_sharing_header_values_are_parsed_independently() -> None:
    a = parse_email(raw_mail("Bitte löschen".encode("latin-1"), content_type="text/plain; charset=iso-8859-1"))
    b = parse_email(raw_mail("请删除".encode("gb2312"), content_type="text/plain; charset=gb2312"))
    c = parse_email(raw_mail("Bitte löschen".encode("latin-1"), content_type="text/plain; charset=iso-8859-1"))
    assert (a.text, b.text, c.text) == ("Bitte löschen", "请删除", "Bitte löschen")


@pytest.mark.parametrize("html", ["", "<p>Grüße, <b>Ann</b></p>"])
@pytest.mark.parametrize(
    "subject,name",
    [("Re: Privacy request", ""), ("[PRIV-ABC] Ihre Anfrage — Löschung " * 4, "Müller, Hans"),
     ("关于您的隐私请求", "隐私团队"), ("evil\r\nBcc: x@y.org", "a\r\nBcc: x@y.org"), ("", "")],
)
def test_outgoing_mail_reads_back_as_written(html: str, subject: str, name: str) -> None:
    from privbot import clock
    from privbot.channels import mail_out

    clock.freeze(datetime(2025, 4, 1, 10, 0, tzinfo=UTC))
    try:
        raw = mail_out.build_email(sender="privacy@example.com", to="Ann <ann@example.org>", subject=subject,
                                   text="Grüße\n" * 50, html=html, message_id="<m1@example.com>",
                                   in_reply_to="<a@x.org>", references=["<r@x.org>"], sender_name=name)
    finally:
        clock.unfreeze()
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert str(msg["Subject"]) == mail_out.header_safe(subject, 500)
    assert msg["From"].addresses[0].display_name == mail_out.header_safe(name)
    assert msg["From"].addresses[0].addr_spec == "privacy@example.com"
    assert (msg["Message-ID"], msg["In-Reply-To"], msg["References"]) == ("<m1@example.com>", "<a@x.org>", "<r@x.org> <a@x.org>")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Grüße\n" * 50
    if html:
        assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == html + "\n"
    assert b"\nBcc:" not in raw  # no injected header line
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only


_ASCII_HEADER = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
_BODY = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)


@given(subject=_ASCII_HEADER, text=_BODY, html=st.one_of(st.just(""), _BODY),
       refs=st.lists(st.from_regex(r"<[a-z0-9.]{1,40}@example\.org>", fullmatch=True), max_size=25))
@settings(max_examples=300, deadline=None)
def test_outgoing_mail_is_what_the_email_package_writes(subject: str, text: str, html: str, refs: list[str]) -> None:
    """The direct writer and ``policy.SMTP`` agree byte for byte wherever the writer
    takes a message on (plain ASCII headers); the rest it leaves to the email package."""
    import re as _re

    from privbot import clock
    from privbot.channels import mail_out

    clock.freeze(datetime(2025, 4, 1, 10, 0, tzinfo=UTC))
    try:
        headers = mail_out._headers("privacy@example.com", "ann@example.org", subject, "<m1@example.com>", "<a@x.org>", refs, "", True)
        direct = mail_out._build_direct(headers, text, html)
        plain = mail_out._build_with_email_package(headers, text, html)
    finally:
        clock.unfreeze()

    def same_boundary(b: bytes) -> bytes:
        m = _re.search(rb'boundary="([^"]+)"', b)
        return b.replace(m.group(1), b"B") if m else b

    if direct is not None:
        assert same_boundary(direct) == same_boundary(plain)
    else:  # only what the writer cannot fold like the email package does
        assert "  " in subject or subject != subject.strip() or "=?" in subject


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.lists(st.sampled_from(list("aemilrdnpostMAILERDAEMONPOST-_.@<>,;: \t()\"\\=?é") + ["mailer-daemon", "postmaster", "Mailer-Daemon", "=?utf-8?q?"]), max_size=30).map("".join),
    st.builds(lambda name, local, host: f"{name} <{local}@{host}>",
              st.sampled_from(["", "Mail Delivery System", '"Postmaster"', "(x)"]),
              st.sampled_from(["mailer-daemon", "MAILER-DAEMON", "postmaster", "ann", "mailer\\-daemon", '"postmaster"', "mailer(x)-daemon"]),
              st.sampled_from(["example.org", "mx.example.org"])),
))
def test_a_from_the_quick_check_passes_never_names_a_mailer_daemon(value: str) -> None:
    """The bounce check parses the From only when the quick test says it might name a
    mailer-daemon or postmaster; whenever it says no, the parse must find none."""
    from email.utils import getaddresses

    from privbot.channels.parse import _may_name_a_mailer_daemon

    locals_ = {(addr.rpartition("@")[0] if "@" in addr else addr).strip().lower() for _n, addr in getaddresses([value])}
    if locals_ & {"mailer-daemon", "postmaster"}:
        assert _may_name_a_mailer_daemon(value)


_CT_TYPES = st.sampled_from(["text/plain", "TEXT/HTML", "text/Plain", "multipart/alternative", "multipart/report", "message/rfc822", "text", "text/plain/x", "text/*", ""])
_CT_NAMES = st.sampled_from(["charset", "Charset", "format", "delsp", "report-type", "boundary", "name*", "charset*0", "x"])
_CT_VALUES = st.lists(st.sampled_from(list("aZ9-_.;=\"\\() é\t") + ["utf-8", "flowed", "yes", "=?utf-8?q?x?="]), max_size=6).map("".join)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_CT_TYPES, st.lists(st.tuples(_CT_NAMES, _CT_VALUES, st.booleans(), st.sampled_from(["", " ", "  ", "\t"])), max_size=4), st.booleans())
def test_a_content_type_read_by_the_shortcut_reads_as_the_email_package_reads_it(ctype: str, params: list[tuple[str, str, bool, str]], trailing: bool) -> None:
    """The parser reads simple Content-Type headers with one regular expression
    (parse._simple_content_type); the type and every parameter must come out exactly as
    through the email package, and anything it cannot read so must go to the package."""
    from privbot.channels import parse as p

    value = ctype + "".join(f";{space}{name}{space}={space}" + (f'"{val}"' if quoted else val) for name, val, quoted, space in params)
    value += ";" if trailing else ""
    msg = p._parse_bytes(b"Content-Type: " + value.encode("utf-8") + b"\r\nFrom: a@example.org\r\n\r\nbody\r\n")
    token = p._HEADER_INDEX.set({})
    try:
        assert p._content_type(msg) == p._content_type_by_email(msg)
        for name in ("charset", "format", "delsp", "report-type", "boundary", "x"):
            assert p._param(msg, "content-type", name) == p._param_by_email(msg, "content-type", name)
    finally:
        p._HEADER_INDEX.reset(token)
