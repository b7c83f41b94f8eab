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


def run_once(services: Services) -> list[str]:
    """Every sweep, once, in order; the deadline sweeps first so their mail goes out now."""
    lines = []
    for name, sweep, _interval in sorted(SWEEPS, key=lambda s: s[0] == "outbox"):
        lines.append(sweep(services))
    return lines
