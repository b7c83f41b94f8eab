"""Helpers shared by the tests: free ports, building mail, reading the outbox Maildir."""

from __future__ import annotations

import mailbox
import smtplib
import socket
from email.message import EmailMessage
from email.policy import default
from email.utils import make_msgid
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_mail(
    body: str = "Please delete all the personal information you hold about me.",
    *,
    sender: str = "alice@example.org",
    to: str = "privacy@example.com",
    subject: str = "Privacy request",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="example.org")
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg


def send(port: int, msg: EmailMessage | bytes, *, sender: str = "alice@example.org", to: str = "privacy@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        if isinstance(msg, EmailMessage):
            smtp.send_message(msg, from_addr=sender, to_addrs=[to])
        else:
            smtp.sendmail(sender, [to], msg)


def outbox_messages(data_dir: Path) -> list[EmailMessage]:
    box = mailbox.Maildir(str(data_dir / "outbox"), create=True, factory=None)
    out = []
    for key in box.keys():
        with box.get_file(key) as fh:
            from email import message_from_binary_file

            out.append(message_from_binary_file(fh, policy=default))  # type: ignore[arg-type]
    return out


def reply_to(original: EmailMessage, body: str, *, sender: str = "alice@example.org") -> EmailMessage:
    msg = make_mail(body, sender=sender, subject="Re: " + str(original["Subject"]))
    msg["In-Reply-To"] = original["Message-ID"]
    msg["References"] = original["Message-ID"]
    return msg


def break_classifier_on(services: Any, monkeypatch: Any, word: str = "explode") -> None:
    """Make the classifier fail on any text containing ``word`` (a pipeline fault that
    one message triggers and the others do not)."""
    real_many = services.classifier.classify_many

    def classify_many(items: list[tuple[str, str, str]]) -> list[object]:
        if any(word in text for text, _subject, _channel in items):
            raise RuntimeError("the classifier broke on this one")
        return list(real_many(items))

    def classify(text: str, subject: str = "", channel: str = "email") -> object:
        return classify_many([(text, subject, channel)])[0]

    monkeypatch.setattr(services.classifier, "classify", classify)
    monkeypatch.setattr(services.classifier, "classify_many", classify_many)
