"""Persistence: SQLAlchemy models, the database handle and Alembic migrations.

The database is the only source of truth for state and deadlines; every stage that
changes state does so inside :meth:`Database.transaction`.
"""

from privbot.store.db import Database, open_database
from privbot.store.models import (
    Account,
    AuditEntry,
    Base,
    Challenge,
    DeliveryAttempt,
    Draft,
    Message,
    OutboxItem,
    Shunted,
    Staff,
    Ticket,
)

__all__ = [
    "Account",
    "AuditEntry",
    "Base",
    "Challenge",
    "Database",
    "DeliveryAttempt",
    "Draft",
    "Message",
    "OutboxItem",
    "Shunted",
    "Staff",
    "Ticket",
    "open_database",
]
