"""Leases: a job only one privbot process should do at a time, handed over when it lapses.

Why this module exists: any number of privbot processes may share one database, and
most of their work is already shared safely (sweeps claim rows, the outbox locks them).
Watching an IMAP mailbox is not row work (every watcher would read every new message),
nor is long-polling a Telegram bot (Telegram ends one poller's ``getUpdates`` when
another's arrives).  So the process doing such a job holds a lease on it — a row with a
holder and an expiry — renews it while it works, and releases it when it stops; the
others stand by (:class:`Turn`), and one of them takes the lease once it is free or has
lapsed (a holder that died without releasing).

A lease is an economy, not the guarantee of exactly-once: the pipeline's
de-duplication (and, for Telegram, the committed update ids) still makes a message
delivered twice one ticket, so two holders for a moment (a renewal that came too late)
cost repeated work, never a second answer.

Taken as healthchecks claims work: by one conditional UPDATE ("mine, or expired"), and,
for a lease never taken before, an INSERT that the primary key lets only one process win.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from privbot import clock
from privbot.store.db import Database
from privbot.store.models import Lease

log = logging.getLogger(__name__)


def holder_name(place: str) -> str:
    """The holder's name for a process working from ``place`` (its data directory) on
    this host.  The same after a restart, so a process that crashed without releasing
    its lease takes it back at once instead of waiting for it to lapse; two processes
    working from the same place share a name (and then, as before leases, both work)."""
    return f"{socket.gethostname()[:80]}:{place}"[:200]


def claim(db: Database, name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease ``name`` for ``seconds``; whether ``holder`` has it now."""
    now = clock.now()
    until = now + timedelta(seconds=seconds)
    with db.transaction() as session:
        taken = session.execute(
            update(Lease)
            .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
            .values(holder=holder, expires_at=until)
            .execution_options(synchronize_session=False)
        ).rowcount
    if taken:
        return True
    try:
        with db.transaction() as session:
            if session.get(Lease, name) is not None:  # held by another, not yet expired
                return False
            session.add(Lease(name=name, holder=holder, expires_at=until))
    except IntegrityError:  # another process inserted it first
        return False
    return True


def release(db: Database, name: str, holder: str) -> None:
    """Give the lease up at once (a no-op if ``holder`` no longer has it)."""
    with db.transaction() as session:
        session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder).execution_options(synchronize_session=False))


def held_by(db: Database, name: str) -> tuple[str, datetime] | None:
    """Who holds ``name`` and until when (None: nobody, or it has lapsed)."""
    with db.transaction() as session:
        row = session.execute(select(Lease.holder, Lease.expires_at).where(Lease.name == name)).first()
    if row is None or clock.ensure_aware(row.expires_at) < clock.now():
        return None
    return row.holder, clock.ensure_aware(row.expires_at)


@dataclass(frozen=True)
class LeaseState:
    """One lease as the database has it: a job, who took it last, and until when."""

    name: str
    holder: str
    expires_at: datetime

    @property
    def job(self) -> str:
        """The kind of job: ``imap`` or ``telegram`` (what the name starts with)."""
        return self.name.partition(":")[0]

    def held(self, now: datetime) -> bool:
        """Whether a process still holds it (False: it lapsed — its holder stopped without
        releasing it, and nobody has taken it since)."""
        return self.expires_at >= now


def every(db: Database) -> list[LeaseState]:
    """Every lease in the database, by name (for ``privbot leases``: which process does
    which job)."""
    with db.transaction() as session:
        rows = session.execute(select(Lease.name, Lease.holder, Lease.expires_at).order_by(Lease.name)).all()
    return [LeaseState(row.name, row.holder, clock.ensure_aware(row.expires_at)) for row in rows]


class Turn:
    """This process's turn at one job (watching a mailbox, polling a bot): take it,
    renew it while working, and stand by — saying once who has it — while another
    process does."""

    def __init__(self, db: Database, name: str, holder: str, seconds: float, job: str) -> None:
        self.db, self.name, self.holder, self.seconds, self.job = db, name, holder, seconds, job
        #: who has the job while this process stands by ("" while it is ours, or not asked yet)
        self.standing_by = ""
        self._renewed = -float("inf")

    @property
    def renewal_due(self) -> bool:
        """A third of the lease has gone since it was last taken or renewed."""
        return time.monotonic() - self._renewed >= self.seconds / 3

    def take(self) -> bool:
        """Take or renew the lease; False while another process holds it."""
        if claim(self.db, self.name, self.holder, self.seconds):
            self._renewed = time.monotonic()
            if self.standing_by:
                log.info("%s: taking over from %s", self.job, self.standing_by)
                self.standing_by = ""
            return True
        held = held_by(self.db, self.name)
        who = held[0] if held else "another process"
        if who != self.standing_by:
            log.info("%s: %s has it; standing by", self.job, who)
        self.standing_by = who
        return False

    def keep(self) -> bool:
        """While working: renew the lease once a third of it has gone (or take it, when
        standing by or not yet asked); whether this process has the job."""
        if not self.standing_by and not self.renewal_due:
            return True
        return self.take()

    def give_up(self) -> None:
        """Release the lease (never raises: if the database is gone, the lease lapses)."""
        try:
            release(self.db, self.name, self.holder)
        except Exception:  # noqa: BLE001
            log.debug("%s: could not release the lease", self.job, exc_info=True)
