"""Group commit: messages arriving at once over several connections share one transaction.

Why this module exists: each SMTP session must hear ``250`` only after its message is
committed, and a commit — with its BEGIN, its locks, its flush and its fsync — costs more
than the message.  When several senders deliver at the same moment, their messages wait
here while the one before them is committed, and then go through the pipeline together
(:func:`privbot.intake.receive_emails`): one transaction, one INSERT per table, one
commit, after which every waiting session gets its own answer.  Nobody waits for a
group to fill: a message that arrives alone is taken at once, alone.  Only when other
sessions are in the middle of a mail transaction (they have said MAIL FROM and not yet
finished DATA) does a group wait for them, a few milliseconds at most — PostgreSQL's
``commit_delay`` with ``commit_siblings``: a short wait where it buys a shared commit.

Failure isolation is unchanged: when a group cannot be taken whole (a message that does
not parse, or makes the pipeline fail), nothing of it was committed and its messages
are taken one at a time (:func:`privbot.intake.receive_email`), the bad one shunted
alone.  A database that cannot be reached fails every waiting message, and each sender
is told to try again later.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from privbot.domain import IntakeResult
from privbot.intake import GROUP_MAX, receive_email, receive_emails

if TYPE_CHECKING:
    from privbot.app import Services

log = logging.getLogger(__name__)

#: seconds the worker thread waits for work before it ends (it starts again on demand)
IDLE_SECONDS = 5.0
#: longest a group waits for messages other sessions are still sending
LINGER_SECONDS = 0.003
#: a session that said MAIL FROM this long ago and sent nothing since is not waited for
#: (it may be sending a large message, or have gone without a word)
EXPECT_SECONDS = 0.5

_Item = tuple[bytes, asyncio.AbstractEventLoop, "asyncio.Future[IntakeResult | None]"]


class GroupCommitter:
    """One worker thread taking raw messages from any number of sessions, in groups."""

    def __init__(self, services: Services, *, source: str = "smtp", group_max: int = GROUP_MAX) -> None:
        self.services = services
        self.source = source
        self.group_max = group_max
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        #: sessions in a mail transaction: id -> when they said MAIL FROM
        self._expected: dict[int, float] = {}
        #: groups and messages committed so far, and the sizes of the last groups
        self.commits = 0
        self.committed = 0
        self.recent_groups: deque[int] = deque(maxlen=100)
        #: seconds the worker spent waiting for a group's first message, waiting for the
        #: rest of a group, and committing groups (bench/bench_smtp.py prints them: over
        #: a few connections the clients and the commits take turns, and this shows how)
        self.idle_seconds = 0.0
        self.linger_seconds = 0.0
        self.commit_seconds = 0.0

    def expect(self, session: object) -> None:
        """``session`` began a mail transaction: a group may wait a moment for its message."""
        with self._lock:
            self._expected[id(session)] = time.monotonic()

    def forget(self, session: object) -> None:
        """``session``'s transaction ended without a message (RSET, QUIT)."""
        with self._lock:
            self._expected.pop(id(session), None)

    def _awaited(self) -> bool:
        """Whether any session is, recently, in the middle of sending a message."""
        horizon = time.monotonic() - EXPECT_SECONDS
        with self._lock:
            for key, since in list(self._expected.items()):
                if since < horizon:
                    del self._expected[key]
            return bool(self._expected)

    async def submit(self, raw: bytes, session: object = None) -> IntakeResult | None:
        """Put ``raw`` through the pipeline; return once it is committed (or raise)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IntakeResult | None] = loop.create_future()
        with self._lock:
            self._expected.pop(id(session), None)
        self._queue.put((raw, loop, future))
        with self._lock:
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="privbot-groupcommit", daemon=True).start()
        return await future

    def _run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                first = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:  # submit() puts before it looks at _running: nothing is stranded
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            got_first = time.perf_counter()
            group = [first]
            deadline = time.monotonic() + LINGER_SECONDS
            while len(group) < self.group_max:
                try:
                    group.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._awaited():
                    break
                try:  # another session is sending: its message may share this commit
                    group.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            self.idle_seconds += got_first - started
            self.linger_seconds += time.perf_counter() - got_first
            self._commit(group)

    def _commit(self, group: list[_Item]) -> None:
        started = time.perf_counter()
        self.commits += 1
        self.committed += len(group)
        self.recent_groups.append(len(group))
        outcomes: list[Any]
        try:
            # Even alone: the group path classifies outside the transaction and asks one
            # query where the single path asks several (and counts the daily answers).
            results = receive_emails(self.services, [raw for raw, _, _ in group], sources=[self.source] * len(group))
        except Exception as exc:  # the database is unreachable: every sender retries
            outcomes = [exc] * len(group)
        else:
            if results is not None:
                outcomes = list(results)
            else:
                outcomes = []
                for raw, _, _ in group:
                    try:
                        outcomes.append(receive_email(self.services, raw, source=self.source))
                    except Exception as exc:
                        outcomes.append(exc)
        self.commit_seconds += time.perf_counter() - started  # counted before any sender hears of it
        # One wake-up per event loop (there is usually one), not one per message: each
        # call_soon_threadsafe writes to the loop's self-pipe, which the loop then reads.
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[IntakeResult | None], Any]]] = {}
        for (_, loop, future), outcome in zip(group, outcomes, strict=True):
            answers.setdefault(loop, []).append((future, outcome))
        for loop, settled in answers.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that event loop is gone (the server stopped)
                log.debug("%d committed messages' sessions ended before their answers", len(settled))


def _settle(settled: list[tuple[asyncio.Future[IntakeResult | None], Any]]) -> None:
    for future, outcome in settled:
        if future.done():  # the client went away while it waited; the message is committed anyway
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
