"""The sweeps: idempotent passes over the database, run on a schedule.

Each sweep is a plain function ``(services) -> str`` that claims its own rows, so any
number of privbot processes may run them at once.  ``privbot sweep`` runs them all once;
``privbot run`` runs them on APScheduler's intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from privbot import outbox

if TYPE_CHECKING:
    from privbot.app import Services

Sweep = Callable[["Services"], str]


def outbox_sweep(services: Services) -> str:
    return str(outbox.deliver_due(services.db, transports_for(services)))


def transports_for(services: Services) -> dict[str, outbox.Transport]:
    """The delivery transports this process has (email always; chat when the bot runs)."""
    if services.transports is None:
        services.transports = dict(outbox.default_transports(services.settings))
    return services.transports


#: (name, function, interval in seconds) — deadline, reminder and retention sweeps add themselves here
SWEEPS: list[tuple[str, Sweep, float]] = [
    ("outbox", outbox_sweep, 2.0),
]


def verification_sweep(services: Services) -> str:
    from privbot import verify  # late: verify pulls in the templates and the account connector

    return verify.sweep(services)


SWEEPS.append(("verification", verification_sweep, 300.0))


def deadline_sweep(services: Services) -> str:
    from privbot import sweeps  # late: sweeps pulls in the templates

    return sweeps.deadline_sweep(services)


def retention_sweep(services: Services) -> str:
    from privbot import sweeps

    return sweeps.retention_sweep(services)


# Staff reminders and escalations every minute (PRIVBOT_SWEEP_INTERVAL overrides); the
# retention purge hourly.  Importing deadlines installs the UK clock-stop listener.
SWEEPS.append(("deadlines", deadline_sweep, 60.0))
SWEEPS.append(("retention", retention_sweep, 3600.0))


def telegram_sweep(services: Services) -> str:
    from privbot import chat  # late: chat pulls in the verification module

    return chat.prune(services)


SWEEPS.append(("telegram", telegram_sweep, 3600.0))
from privbot import deadlines as _deadlines  # noqa: E402,F401


def run_once(services: Services) -> list[str]:
    """Every sweep, once, in order; the deadline sweeps first so their mail goes out now."""
    lines = []
    for name, sweep, _interval in sorted(SWEEPS, key=lambda s: s[0] == "outbox"):
        lines.append(sweep(services))
    return lines
