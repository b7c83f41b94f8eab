"""Statutory clocks: when an answer is due.

The spine knows only the default clock (``PRIVBOT_DEADLINE_DAYS`` from receipt, the 30
days both seed policies promise); per-law clocks, extensions and reminders build on
:func:`due_at`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from privbot.config import Settings


def due_at(settings: Settings, received_at: datetime, clock_name: str | None = None) -> datetime:
    return received_at + timedelta(days=settings.deadline_days)
