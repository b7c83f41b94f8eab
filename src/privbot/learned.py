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

Review (``privbot learned``): the officer lists what waits, and accepts an example —
its words, with addresses and numbers masked or replaced by the officer's own, join its
right's list in ``intents/`` — or rejects it.  Either way it leaves the queue; the audit
trail records who decided, never the words.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from privbot import audit, clock
from privbot.classify.intents import add_example
from privbot.config import Settings
from privbot.domain import Intent, parse_ref
from privbot.files import replace_durably
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
        replace_durably(path, "".join(keep))
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


class ReviewError(Exception):
    """An example cannot be accepted or rejected; the message says why (nothing changed)."""


@dataclass(frozen=True)
class Waiting:
    """One correction waiting for review: its id (stable while the line is unchanged) and row."""

    id: str
    row: dict[str, Any]

    @property
    def intent(self) -> str:
        return str(self.row.get("intent", ""))

    @property
    def lang(self) -> str:
        return str(self.row.get("lang") or "en")

    @property
    def text(self) -> str:
        return str(self.row.get("text", ""))


def _line_id(line: str) -> str:
    return hashlib.sha256(line.rstrip("\n").encode("utf-8")).hexdigest()[:10]


def _read(path: Path) -> list[tuple[str, Waiting | None]]:
    """Every line of the queue with the example it holds (``None``: not one of ours)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return []
    out: list[tuple[str, Waiting | None]] = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        ok = isinstance(row, dict) and isinstance(row.get("text"), str) and isinstance(row.get("intent"), str)
        out.append((line, Waiting(_line_id(line), row) if ok else None))  # type: ignore[arg-type]
    return out


def waiting(settings: Settings) -> list[Waiting]:
    """The corrections waiting for review, oldest first."""
    return [w for _, w in _read(examples_path(settings)) if w is not None]


#: an address; a run of digits (with the spaces, dashes, dots and brackets of a phone
#: number or an account id) holding five or more; a ticket reference
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
_NUMBER = re.compile(r"\+?\(?\d(?:[\d\s().-]*\d)?")
_REF = re.compile(r"PRIV-\d+")


def masked(text: str) -> str:
    """``text`` with what most often identifies a person replaced: addresses by
    ``name@example.com``, numbers of five or more digits by as many zeros, ticket
    references by ``PRIV-000000``.  Names are not found: the officer reads the line."""
    text = _REF.sub("PRIV-000000", text)
    text = _ADDRESS.sub("name@example.com", text)
    return _NUMBER.sub(lambda m: m.group(0) if sum(c.isdigit() for c in m.group(0)) < 5 else re.sub(r"\d", "0", m.group(0)), text)


def _decide(services: Services, example_id: str, decision: str, actor: str, text: str | None) -> tuple[Waiting, Path | None, str]:
    settings = services.settings
    path = examples_path(settings)
    with _locked(path):
        lines = _read(path)
        found = [(line, w) for line, w in lines if w is not None and w.id == example_id]
        if not found:
            raise ReviewError(f"no correction {example_id!r} is waiting; 'privbot learned' lists them")
        line, example = found[0]
        target: Path | None = None
        words = ""
        if decision == "accepted":
            try:
                intent = Intent(example.intent)
            except ValueError:
                raise ReviewError(f"{example_id}: unknown right {example.intent!r}") from None
            words = (text if text is not None else masked(example.text)).strip()
            if not words:
                raise ReviewError("the example's words are empty")
            target = Path(settings.intents_dir) / f"{intent}.toml"
            if not target.exists():
                raise ReviewError(f"{target} does not exist")
            try:
                add_example(target, example.lang, words)
            except ValueError as exc:  # IntentFileError: the file stays as it was, the example queued
                raise ReviewError(str(exc)) from None
        replace_durably(path, "".join(kept for kept, _ in lines if kept is not line))  # the lock is held
    with services.db.transaction() as session:
        # Who decided and what, never the words: the audit trail outlives the ticket.
        audit.record(session, f"learned_example_{decision}", actor=actor, ticket=example.row.get("ticket"),
                     intent=example.intent, lang=example.lang)
    return example, target, words


def accept(services: Services, example_id: str, *, actor: str, text: str | None = None) -> tuple[Waiting, Path, str]:
    """Add a waiting correction to its right's examples in ``intents/`` and take it off
    the queue: its own words masked (:func:`masked`), or ``text`` as the officer wrote
    it.  Returns the example, the file written and the words added."""
    example, target, words = _decide(services, example_id, "accepted", actor, text)
    assert target is not None
    return example, target, words


def reject(services: Services, example_id: str, *, actor: str) -> Waiting:
    """Take a waiting correction off the queue without using it."""
    return _decide(services, example_id, "rejected", actor, None)[0]
