"""failed console logins kept in the database, so the throttle is shared by every node

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:10:00
"""
from alembic import op
import sqlalchemy as sa
import privbot.store.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('login_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('at', privbot.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_login_failures_at'), 'login_failures', ['at'], unique=False)
    op.create_index(op.f('ix_login_failures_key_hash'), 'login_failures', ['key_hash'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_login_failures_key_hash'), table_name='login_failures')
    op.drop_index(op.f('ix_login_failures_at'), table_name='login_failures')
    op.drop_table('login_failures')
