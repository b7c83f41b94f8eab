"""the audit trail's hash no longer carries a unique index of its own

An entry's hash is the SHA-256 of its content, which includes the hash it links to;
``prev_hash`` is unique, so no two entries can share a hash without sharing a
predecessor, which that index already refuses.  The second index was a random B-tree
insert for every entry (2-3 per request), at every commit.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 22:40:00
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

#: SQLite's unique constraints here have no names: the table is rebuilt with these
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("audit", naming_convention=_SQLITE_NAMES, recreate="always") as batch_op:
            batch_op.drop_constraint("uq_audit_hash", type_="unique")
    else:
        op.drop_constraint("audit_hash_key", "audit", type_="unique")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("audit", naming_convention=_SQLITE_NAMES, recreate="always") as batch_op:
            batch_op.create_unique_constraint("uq_audit_hash", ["hash"])
    else:
        op.create_unique_constraint("audit_hash_key", "audit", ["hash"])
