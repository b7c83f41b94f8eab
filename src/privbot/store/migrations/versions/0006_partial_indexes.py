"""index only the rows that are looked up: outgoing Message-IDs, set chat ids, paused clocks

Threading looks up privbot's own messages by Message-ID, never a requester's (a
repeated delivery is found by its dedupe key); tickets are looked up by chat id only
for chats, and by clock_paused_at only when it is set.  Indexing every row cost each
incoming request one more random B-tree insert (its Message-ID) and two more index
entries on its ticket, at every commit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 23:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _where(condition: str) -> dict[str, object]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    op.drop_index('ix_messages_message_id', table_name='messages')
    op.create_index('ix_messages_out_message_id', 'messages', ['message_id'], unique=False, **_where("direction = 'out'"))
    op.drop_index('ix_tickets_chat_id', table_name='tickets')
    op.create_index('ix_tickets_chat_id_set', 'tickets', ['chat_id'], unique=False, **_where("chat_id IS NOT NULL"))
    op.drop_index('ix_tickets_clock_paused_at', table_name='tickets')
    op.create_index('ix_tickets_paused', 'tickets', ['clock_paused_at'], unique=False, **_where("clock_paused_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index('ix_tickets_paused', table_name='tickets')
    op.create_index('ix_tickets_clock_paused_at', 'tickets', ['clock_paused_at'], unique=False)
    op.drop_index('ix_tickets_chat_id_set', table_name='tickets')
    op.create_index('ix_tickets_chat_id', 'tickets', ['chat_id'], unique=False)
    op.drop_index('ix_messages_out_message_id', table_name='messages')
    op.create_index('ix_messages_message_id', 'messages', ['message_id'], unique=False)
