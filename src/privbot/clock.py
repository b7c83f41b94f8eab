"""The only source of time in privbot.

Every deadline, expiry, reminder and backoff reads :func:`now`.  Tests freeze the
clock and fast-forward it (as GNU Mailman's ``factory`` does), and ``privbot sweep --at``
runs the sweeps as though it were another moment, without touching the system clock.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

_lock = threading.Lock()
_frozen: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    # One read of the module global (atomic): freeze() and fast_forward() replace it whole.
    frozen = _frozen
    return frozen if frozen is not None else datetime.now(UTC)


def freeze(at: datetime | None = None) -> datetime:
    """Stop the clock at ``at`` (default: the real now)."""
    global _frozen
    at = at or datetime.now(UTC)
    with _lock:
        _frozen = ensure_aware(at)
        return _frozen


def fast_forward(**delta: float) -> datetime:
    """Move a frozen clock forward, e.g. ``fast_forward(days=29)``."""
    global _frozen
    with _lock:
        if _frozen is None:
            raise RuntimeError("fast_forward needs a frozen clock")
        _frozen = _frozen + timedelta(**delta)
        return _frozen


def unfreeze() -> None:
    global _frozen
    with _lock:
        _frozen = None


def is_frozen() -> bool:
    return _frozen is not None


def ensure_aware(value: datetime) -> datetime:
    """Treat a naive datetime as UTC (SQLite returns naive ones) and convert to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
