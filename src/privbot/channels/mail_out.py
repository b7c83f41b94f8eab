"""Outgoing mail: build complete RFC 5322 messages and hand them to a transport.

Nothing from an incoming message goes raw into a header: every header value passes
through :func:`header_safe`, and ``email.policy.SMTP`` refuses line breaks besides.
Transports are small: a local Maildir a person can open, or an SMTP relay.
"""

from __future__ import annotations

import binascii
import mailbox
import random
import re
import sys
import smtplib
import ssl
from email import quoprimime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Protocol

from privbot import clock
from privbot.channels.parse import fast_header_factory

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
#: ``policy.SMTP`` (CRLF, RFC 5322 folding, refuses line breaks in header values) with a
#: header factory that does not build a new class per header and parses the values every
#: reply repeats (MIME-Version, Content-Type, Auto-Submitted, From) once: about half of
#: the cost of building a reply with the plain policy.
_POLICY = SMTP.clone(header_factory=fast_header_factory())


def header_safe(value: str, limit: int = 300) -> str:
    """One line, no control characters, bounded: safe to put into any header."""
    if not value:
        return ""
    if value.isprintable():  # (every control character is unprintable: nothing to replace)
        return value.strip()[:limit]
    return _CONTROL.sub(" ", value).strip()[:limit]


def new_message_id(sender: str) -> str:
    domain = sender.rpartition("@")[2] or "localhost"
    return make_msgid(domain=header_safe(domain, 200))


def build_email(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str = "",
    message_id: str,
    in_reply_to: str = "",
    references: list[str] | tuple[str, ...] = (),
    sender_name: str = "",
    auto_submitted: bool = True,
) -> bytes:
    """One complete RFC 5322 reply: text, and HTML as an alternative when given.

    Every reply the intake queues is built here, so the common case is written directly
    (:func:`_build_direct`, a fifth of the cost); headers the email package must fold
    or encode in its own way (a non-ASCII address) take :func:`_build_with_email_package`.
    Both produce the same layout; tests/test_parse.py holds them to it.
    """
    headers = _headers(sender, to, subject, message_id, in_reply_to, references, sender_name, auto_submitted)
    direct = _build_direct(headers, text, html)
    return direct if direct is not None else _build_with_email_package(headers, text, html)


def _headers(
    sender: str, to: str, subject: str, message_id: str, in_reply_to: str,
    references: list[str] | tuple[str, ...], sender_name: str, auto_submitted: bool,
) -> list[tuple[str, str]]:
    headers = [
        ("From", formataddr((header_safe(sender_name), sender)) if sender_name else sender),
        ("To", header_safe(to)),
        ("Subject", header_safe(subject, 500)),
        ("Date", format_datetime(clock.now())),
        ("Message-ID", message_id),
    ]
    refs = [header_safe(r) for r in references if r]
    if in_reply_to:
        headers.append(("In-Reply-To", header_safe(in_reply_to)))
        if header_safe(in_reply_to) not in refs:
            refs.append(header_safe(in_reply_to))
    if refs:
        headers.append(("References", " ".join(refs[-20:])))
    if auto_submitted:
        # RFC 3834: tell other robots not to answer us, so two autoresponders never loop.
        headers.append(("Auto-Submitted", "auto-replied"))
    return headers


def _build_with_email_package(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    msg = EmailMessage(policy=_POLICY)
    for name, value in headers:
        msg[name] = value
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


# ---------------------------------------------------------------------------- direct writing

_CRLF = "\r\n"
_MAX_LINE = 78  # policy.SMTP's max_line_length
#: encoded words carry at most this many bytes of UTF-8 (``Subject: `` + 64 columns)
_WORD_BYTES = 39
#: headers that are free text (folded at spaces, encoded when not ASCII); the others are
#: addresses and message ids, written only when plain ASCII without control characters
_TEXT_HEADERS = {"Subject"}


def _build_direct(headers: list[tuple[str, str]], text: str, html: str) -> bytes | None:
    lines: list[str] = []
    for name, value in headers:
        folded = _fold(name, value)
        if folded is None:
            return None
        lines.append(folded)
    plain_cte, plain_body = _encode_text(text)
    if not html:
        lines += [
            'Content-Type: text/plain; charset="utf-8"',
            f"Content-Transfer-Encoding: {plain_cte}",
            "MIME-Version: 1.0",
            "",
        ]
        return (_CRLF.join(lines) + _CRLF).encode("ascii") + plain_body
    html_cte, html_body = _encode_text(html)
    boundary = _boundary(plain_body + html_body)
    lines += ["MIME-Version: 1.0", "Content-Type: multipart/alternative;", f' boundary="{boundary}"', "", f"--{boundary}"]
    head = (_CRLF.join(lines) + _CRLF).encode("ascii")
    plain_head = f'Content-Type: text/plain; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {plain_cte}{_CRLF}{_CRLF}'
    html_head = (
        f'{_CRLF}--{boundary}{_CRLF}Content-Type: text/html; charset="utf-8"{_CRLF}'
        f"Content-Transfer-Encoding: {html_cte}{_CRLF}MIME-Version: 1.0{_CRLF}{_CRLF}"
    )
    tail = f"{_CRLF}--{boundary}--{_CRLF}"
    return head + plain_head.encode() + plain_body + html_head.encode() + html_body + tail.encode()


def _fold(name: str, value: str) -> str | None:
    """``Name: value`` folded at spaces to 78 columns (what ``policy.SMTP`` writes for
    plain ASCII); free text that is not ASCII becomes RFC 2047 encoded words.  ``None``
    when only the email package can write it (a non-ASCII address, an unbreakable word)."""
    if _CONTROL.search(value):
        return None
    if not value.isascii():
        return _encoded_words(name, value) if name in _TEXT_HEADERS else None
    if "=?" in value and name in _TEXT_HEADERS:
        return None  # looks like an encoded word: the email package decides what it means
    line = f"{name}: {value}" if value else f"{name}:"
    if len(line) <= _MAX_LINE:
        return line
    if "  " in value or value != value.strip():
        return None
    if len(value) + 1 <= _MAX_LINE:  # as policy.SMTP does: the whole value on the next line
        return f"{name}:{_CRLF} {value}"
    out: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        if len(word) + 1 > _MAX_LINE:
            return None
        if len(current) + 1 + len(word) <= _MAX_LINE:
            current += " " + word
        else:
            out.append(current)
            current = " " + word
    out.append(current)
    return _CRLF.join(out)


def _encoded_words(name: str, value: str) -> str:
    """RFC 2047 base64 encoded words, split between characters, one per line."""
    words: list[str] = []
    chunk = b""
    for ch in value:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += b
    if chunk:
        words.append(chunk)
    encoded = [f"=?utf-8?b?{binascii.b2a_base64(w, newline=False).decode('ascii')}?=" for w in words]
    return f"{name}: " + (_CRLF + " ").join(encoded)


def _encode_text(text: str) -> tuple[str, bytes]:
    """The transfer encoding and CRLF body ``EmailMessage.set_content`` picks under
    ``policy.SMTP``: 7bit or 8bit for short lines, else the shorter of quoted-printable
    and base64 (judged on the first ten lines, as the email package does)."""
    lines = text.encode("utf-8").splitlines()
    if max((len(x) for x in lines), default=0) <= _MAX_LINE:
        body = b"\r\n".join(lines) + b"\r\n"
        return ("7bit" if body.isascii() else "8bit"), body
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), _MAX_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        data = b"\r\n".join(lines) + b"\r\n"
        per_line = _MAX_LINE // 4 * 3
        encoded = "".join(binascii.b2a_base64(data[i : i + per_line]).decode("ascii") for i in range(0, len(data), per_line))
        return "base64", encoded.replace("\n", "\r\n").encode("ascii")
    if len(lines) <= 10:
        qp = sniff_qp
    else:
        qp = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), _MAX_LINE)
    return "quoted-printable", _crlf(qp).encode("ascii")


def _crlf(text: str) -> str:
    """Every line ending as CRLF, as the generator writes a body."""
    out = "\r\n".join(text.splitlines())
    return out + "\r\n" if out else ""


def _boundary(body: bytes) -> str:
    while True:
        boundary = "=" * 15 + str(random.randrange(sys.maxsize)) + "=="
        if boundary.encode() not in body:
            return boundary


class Transport(Protocol):
    def send(self, recipient: str, payload: bytes) -> None: ...


class MaildirTransport:
    """Writes each message into ``<data dir>/outbox/new`` when no relay is configured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        for sub in ("tmp", "new", "cur"):  # Maildir(create=True) skips these if the folder exists
            (path / sub).mkdir(parents=True, exist_ok=True)
        self._box = mailbox.Maildir(str(path), create=True)

    def send(self, recipient: str, payload: bytes) -> None:
        self._box.add(payload)


class SMTPRelayTransport:
    def __init__(self, host: str, port: int, *, sender: str, user: str = "", password: str = "", starttls: bool = False, timeout: float = 30.0) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.user, self.password, self.starttls, self.timeout = user, password, starttls, timeout

    def send(self, recipient: str, payload: bytes) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.user:
                smtp.login(self.user, self.password)
            smtp.sendmail(self.sender, [recipient], payload)
