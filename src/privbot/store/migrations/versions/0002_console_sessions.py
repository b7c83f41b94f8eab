"""console sessions kept on the server, so that logout ends them

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 21:00:00
"""
from alembic import op
import sqlalchemy as sa
import privbot.store.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('console_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', privbot.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', privbot.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index(op.f('ix_console_sessions_staff_id'), 'console_sessions', ['staff_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_console_sessions_staff_id'), table_name='console_sessions')
    op.drop_table('console_sessions')
