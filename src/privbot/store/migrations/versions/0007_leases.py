"""leases: one process at a time watches an IMAP mailbox

Several privbot processes configured with the same mailbox each read all of its new
mail (de-duplication kept the tickets single, but every message was fetched, parsed
and classified once per process).  The watcher now holds a lease on the mailbox; the
others stand by and take over when it lapses.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 00:50:00
"""
from alembic import op
import sqlalchemy as sa

import privbot.store.models


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'leases',
        sa.Column('name', sa.String(length=400), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('expires_at', privbot.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('leases')
