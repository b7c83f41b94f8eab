"""Logging that does not spill personal data.

Why this module exists: privbot's logs go wherever an operator ships them (journald, a
container log driver, a log service) and are read by people who may not see personal
data.  So log lines name tickets by reference and addresses only masked
(``j***@example.org``); message bodies and codes are never logged.

Two layers make that hold:

* code mentions an address only through :func:`mask`, and never logs a body or a code;
* :func:`install_redaction` is a safety net under *every* log record, ours and third
  parties' (SQLAlchemy puts statement parameters — bodies, addresses — into its
  exception text; smtplib puts refused recipients into its exceptions): before any
  handler sees a record, its message and traceback are rendered once and scrubbed of
  addresses, statement parameters, long digit runs (codes, chat ids) and over-long
  lines.

``PRIVBOT_LOG_FORMAT=json`` writes one JSON object per line (for log shippers);
``text`` (the default) writes a plain line for a terminal.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

#: something@domain, also inside <...>, '...' and b'...' reprs (so it starts with a letter)
_ADDRESS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
#: SQLAlchemy appends the bound values of a failed statement: message text, addresses
_SQL_PARAMS = re.compile(r"\[parameters: .*?\](?=\s*(?:\(Background on this error|$))", re.S)
#: six or more digits standing alone: one-time codes, chat ids, phone numbers — but not
#: ticket references (PRIV-000042), times (12:00:00.123456) or dotted versions
_DIGITS = re.compile(r"(?<![\w.:+-])(?<!PRIV-)\d{6,}(?![\w.])")
#: a single log line longer than this is cut: no traceback should carry a whole message
MAX_LINE = 500


def mask(address: str) -> str:
    """``alice@example.org`` → ``a***@example.org``; a chat id or name keeps one character."""
    local, at, domain = (address or "").partition("@")
    if not at:
        return (local[:1] + "***") if local else ""
    return f"{local[:1]}***@{domain}"


def redact(text: str) -> str:
    """Scrub one rendered log message (or traceback) of personal data."""
    if not text:
        return text
    text = _SQL_PARAMS.sub("[parameters: redacted]", text)
    text = _ADDRESS.sub(lambda m: mask(m.group(0)), text)
    text = _DIGITS.sub("******", text)
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + " …[cut]" for line in text.split("\n"))


_installed = False


def install_redaction() -> None:
    """Scrub every log record at creation, before any handler (or pytest's caplog) sees it.

    A record factory rather than a handler filter: filters on one handler do not guard
    the others, and records from other libraries propagate to handlers we do not own.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the template, drop the values
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            # Rendered now, scrubbed once; formatters use exc_text when it is set.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            entry["exc"] = record.exc_text
        for key in ("ticket", "channel", "action"):  # structured extras code may pass
            if hasattr(record, key):
                entry[key] = str(getattr(record, key))
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record, so a handler set up
    under a test's captured stderr does not write to a closed file afterwards."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # type: ignore[no-untyped-def]
        pass


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    install_redaction()
    root = logging.getLogger()
    if any(getattr(h, "_privbot", False) for h in root.handlers):
        return
    handler = _StderrHandler()
    if str(fmt).lower() == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._privbot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    # SQLAlchemy logs statements WITH their parameters (bodies, addresses) at INFO, which
    # a DEBUG root would switch on: it stays at WARNING whatever the level asked for.
    for noisy in ("apscheduler", "httpx", "mail.log", "uvicorn.access", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
