"""SMTP intake: an aiosmtpd handler in front of :func:`privbot.intake.receive_email`.

It refuses recipients other than the privacy address at RCPT (550), lets aiosmtpd
refuse oversized data (552), and answers ``250`` only after the pipeline's transaction
has committed.  Messages that arrive together over several connections are committed
together (:mod:`privbot.groupcommit`).  When the database is unreachable, or anything else goes wrong before
the message is safely kept, it answers ``451`` so the sending server tries again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from privbot.channels.parse import DOT_ATOM, normalise_address
from privbot.groupcommit import GroupCommitter

if TYPE_CHECKING:
    from privbot.app import Services

log = logging.getLogger(__name__)


#: the path almost every MAIL FROM and RCPT TO carries: ``<dot-atom@host.name>`` and,
#: after it, the command's parameters
_PLAIN_PATH = re.compile(
    rf"\s*<({DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)",
    re.DOTALL,
)


class PrivacySMTP(SMTP):
    """aiosmtpd's server, reading a plain ``<local@domain>`` path without the full RFC 5322
    parser.  aiosmtpd parses each MAIL FROM and RCPT TO path with the email package's
    header parser (and declares a class on every call): about 45 µs each, on the event
    loop that every session shares.  A plain path gives exactly what that parser gives
    (tests/test_intake_smtp.py holds the two to it); anything else — ``<>``, quoted local
    parts, source routes, address literals — still goes to aiosmtpd's own."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)
        address, rest = plain.group(1), plain.group(2)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest


class _Controller(Controller):
    def factory(self) -> SMTP:
        return PrivacySMTP(self.handler, **self.SMTP_kwargs)


class PrivacyHandler:
    """RCPT (who may be written to) and DATA; MAIL, RSET and QUIT only tell the group
    committer which sessions are in the middle of sending a message."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.address = normalise_address(services.settings.privacy_address)
        self.committer = GroupCommitter(services, source="smtp")

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.committer.expect(session)  # a message is on its way: a commit may wait for it
        return "250 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.committer.forget(session)
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.committer.forget(session)
        return "221 Bye"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        if normalise_address(address) != self.address:
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        # Like any final-delivery MTA, record the envelope sender: an empty one (<>)
        # is how bounces announce themselves.
        mail_from = "".join(ch for ch in (envelope.mail_from or "") if ch.isprintable() and ch not in "<>")[:320]
        raw = f"Return-Path: <{mail_from}>\r\n".encode() + raw
        try:
            # The pipeline is blocking database work: it runs on the committer's thread.
            await self.committer.submit(raw, session)
        except Exception as exc:
            log.warning("SMTP intake deferred a message: %s: %s", type(exc).__name__, str(exc)[:200])
            return "451 4.3.0 Temporary failure, please try again later"
        return "250 2.0.0 Message accepted"


def _smtp_kwargs(services: Services) -> dict[str, Any]:
    return {
        "data_size_limit": services.settings.smtp_max_size,
        "hostname": services.settings.privacy_address.rpartition("@")[2] or "localhost",
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "ident": "privbot",
    }


async def start_server(services: Services, host: str, port: int) -> asyncio.Server:
    """Serve SMTP on the running event loop (what ``privbot run`` does)."""
    handler = PrivacyHandler(services)
    kwargs = _smtp_kwargs(services)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: PrivacySMTP(handler, loop=loop, **kwargs), host=host, port=port)


def controller(services: Services, host: str = "127.0.0.1", port: int = 0) -> Controller:
    """A Controller on its own thread (tests and benchmarks)."""
    kwargs = _smtp_kwargs(services)
    return _Controller(PrivacyHandler(services), hostname=host, port=port, server_hostname=kwargs.pop("hostname"), **kwargs)
