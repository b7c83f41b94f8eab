"""Outgoing mail: build complete RFC 5322 messages and hand them to a transport.

Nothing from an incoming message goes raw into a header: every header value passes
through :func:`header_safe`, and ``email.policy.SMTP`` refuses line breaks besides.
Transports are small: a local Maildir a person can open, or an SMTP relay.
"""

from __future__ import annotations

import mailbox
import re
import smtplib
import ssl
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
    return _CONTROL.sub(" ", value or "").strip()[:limit]


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
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = formataddr((header_safe(sender_name), sender)) if sender_name else sender
    msg["To"] = header_safe(to)
    msg["Subject"] = header_safe(subject, 500)
    msg["Date"] = format_datetime(clock.now())
    msg["Message-ID"] = message_id
    refs = [header_safe(r) for r in references if r]
    if in_reply_to:
        msg["In-Reply-To"] = header_safe(in_reply_to)
        if header_safe(in_reply_to) not in refs:
            refs.append(header_safe(in_reply_to))
    if refs:
        msg["References"] = " ".join(refs[-20:])
    if auto_submitted:
        # RFC 3834: tell other robots not to answer us, so two autoresponders never loop.
        msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


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
