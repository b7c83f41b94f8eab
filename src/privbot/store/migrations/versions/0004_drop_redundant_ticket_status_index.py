"""drop the index on tickets.status alone: ix_tickets_status_due starts with status

Every query that filters on the status alone can use the composite (status, due_at)
index; the single-column one only cost every ticket written, and every status change,
one more B-tree to update.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 22:50:00
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index(op.f('ix_tickets_status'), table_name='tickets')


def downgrade() -> None:
    op.create_index(op.f('ix_tickets_status'), 'tickets', ['status'], unique=False)
