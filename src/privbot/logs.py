"""Logging that does not spill personal data.

Log lines name tickets by reference and addresses only masked (``j***@example.org``);
message bodies and codes are never logged.  :func:`mask` is what code uses to mention
an address.
"""

from __future__ import annotations

import logging
import sys


def mask(address: str) -> str:
    local, at, domain = (address or "").partition("@")
    if not at:
        return (local[:1] + "***") if local else ""
    return f"{local[:1]}***@{domain}"


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_privbot", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._privbot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    for noisy in ("apscheduler", "httpx", "mail.log", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
