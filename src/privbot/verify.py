"""Identity verification: proving the requester controls the account's mailbox.

The spine opens tickets without a challenge; identity verification (issue 5) fills in
these two hooks, which ``intake()`` calls inside its transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from privbot.domain import Inbound
from privbot.store.models import Message, Ticket


def on_new_ticket(services: Any, session: Session, ticket: Ticket, inbound: Inbound) -> dict[str, Any]:
    """Decide the ticket's verification state; return extra context for the acknowledgement."""
    return {}


def on_reply(services: Any, session: Session, ticket: Ticket, inbound: Inbound, message: Message) -> str | None:
    """Handle a reply on a ticket waiting for verification; return an action name if handled."""
    return None
