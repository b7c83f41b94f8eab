"""Staff corrections kept as labeled examples, and forgotten with the ticket they came from.

Why this module exists: when staff reclassify a ticket in the console, the request's
words become a labeled example (``<data dir>/learned_examples.jsonl``) for the privacy
officer to review and fold into ``intents/``.  Those words are the requester's personal
data, copied out of the ticket — so they must not outlive the ticket's own copy.  Each
example names its ticket, and the retention sweep (:mod:`privbot.sweeps`) drops the
examples whose ticket has been purged; an example written before examples named their
ticket is dropped once it is older than the retention period.

The file is local to each node (the node whose console took the correction); every
node's sweep prunes its own, asking the shared database which tickets are purged.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from privbot import audit, clock
from privbot.config import Settings
from privbot.domain import parse_ref
from privbot.store.models import Ticket

if TYPE_CHECKING:
    from privbot.app import Services

log = logging.getLogger(__name__)

#: appends from the console's threads and the sweep's rewrite never interleave (and,
#: through a lock file, neither do two processes working from one data directory)
_lock = threading.Lock()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with _lock, (path.parent / (path.name + ".lock")).open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def examples_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "learned_examples.jsonl"


def append(settings: Settings, row: dict[str, Any]) -> None:
    """Add one labeled example (a JSON line: text, subject, intent, intents, lang,
    ticket, by, at)."""
    path = examples_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path), path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def forget(services: Services, cutoff: datetime) -> int:
    """Drop the examples whose ticket has been purged (or no longer exists), and those
    that name no ticket and were written before ``cutoff``; how many were dropped.

    A line that is not an example privbot wrote (hand-edited, truncated) is kept as it
    is: this never loses what it does not understand."""
    path = examples_path(services.settings)
    if not path.exists():
        return 0
    with _locked(path):
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            return 0
        rows: list[dict[str, Any] | None] = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            rows.append(row if isinstance(row, dict) else None)
        named = {ref: parse_ref(ref) for row in rows if row and isinstance(ref := row.get("ticket"), str)}
        ids = {ticket_id for ticket_id in named.values() if ticket_id is not None}
        kept_ids: set[int] = set()
        if ids:
            with services.db.transaction() as session:
                kept_ids = set(session.scalars(select(Ticket.id).where(Ticket.id.in_(ids), Ticket.purged_at.is_(None))))
        keep = [line for line, row in zip(lines, rows, strict=True) if _keeps(row, named, kept_ids, cutoff)]
        dropped = len(lines) - len(keep)
        if not dropped:
            return 0
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(keep)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    with services.db.transaction() as session:
        audit.record(session, "learned_examples_forgotten", count=dropped)
    log.info("retention: %d learned examples forgotten with their tickets", dropped)
    return dropped


def _keeps(row: dict[str, Any] | None, named: dict[str, int | None], kept_ids: set[int], cutoff: datetime) -> bool:
    if row is None:
        return True  # not ours to judge
    ref = row.get("ticket")
    if isinstance(ref, str):
        ticket_id = named.get(ref)
        return ticket_id is None or ticket_id in kept_ids  # an unreadable reference: kept
    try:
        written = clock.ensure_aware(datetime.fromisoformat(str(row.get("at"))))
    except ValueError:
        return True
    return written > cutoff
