"""The shunt: messages that failed, kept whole for a person to re-run.

Nothing privbot receives is dropped.  Bytes that cannot be parsed, or that crashed the
pipeline, are stored here with the error; ``privbot reprocess`` runs them again once the
cause is fixed (as GNU Mailman's shunt queue does).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from privbot import audit, clock
from privbot.store.models import Shunted

if TYPE_CHECKING:
    from privbot.app import Services
    from privbot.domain import IntakeResult

log = logging.getLogger(__name__)


def keep(services: Services, raw: bytes, error: str, *, channel: str = "email", source: str = "") -> int:
    with services.db.transaction() as session:
        row = Shunted(channel=channel, source=source[:200], raw=raw, error=error[:2000], created_at=clock.now())
        session.add(row)
        session.flush()
        # The audit trail (kept for ever) and the log get the kind of error only: its text
        # may quote the message (an address, a header); the row keeps it for the person
        # who re-runs the message, and retention deletes the row once that is done.
        kind = error.split(":", 1)[0][:80]
        audit.record(session, "shunted", shunt=row.id, channel=channel, source=source[:200], error=kind)
        log.warning("message kept in the shunt as #%s (%s): %s", row.id, source, kind)
        return row.id


def pending(services: Services) -> list[Shunted]:
    with services.db.transaction() as session:
        return list(session.scalars(select(Shunted).where(Shunted.status == "pending").order_by(Shunted.id)))


def reprocess(services: Services, shunt_id: int) -> IntakeResult | None:
    """Run one kept message through the pipeline again; None if it still fails."""
    from privbot.intake import receive_email

    with services.db.transaction() as session:
        row = session.get(Shunted, shunt_id)
        if row is None or row.status != "pending":
            return None
        raw = row.raw
    result = receive_email(services, raw, source=f"reprocess:{shunt_id}", shunt_on_failure=False)
    if result is None:
        return None
    with services.db.transaction() as session:
        row = session.get(Shunted, shunt_id)
        assert row is not None
        row.status, row.resolved_at = "reprocessed", clock.now()
        audit.record(session, "reprocessed", shunt=shunt_id, ticket=result.ticket_ref, outcome=result.action)
    return result
