"""Channels: where messages come from (SMTP, IMAP, Telegram) and go to.

Each inbound channel turns what it receives into one :class:`privbot.domain.Inbound`
and hands it to ``intake()``; nothing here knows about tickets.
"""
