"""Tenant scope: which tenant a message, an entry and an audit row belong to, and whose
a token or console user is (NULL everywhere: the default tenant, or all tenants).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TENANT = ("messages", "quarantine_entries", "audit_log", "api_tokens", "console_users")
_INDEXED = ("messages", "quarantine_entries", "audit_log")


def upgrade() -> None:
    # Nullable columns without defaults: added in place on SQLite and PostgreSQL alike
    # (the audit log's append-only triggers refuse UPDATE and DELETE, not ALTER TABLE).
    for table in _TENANT:
        op.add_column(table, sa.Column("tenant", sa.String(32), nullable=True))
    for table in _INDEXED:
        op.create_index(f"ix_{table}_tenant", table, ["tenant"])
    op.add_column("messages", sa.Column("split_of", sa.String(64), nullable=True))
    op.create_index("ix_messages_split_of", "messages", ["split_of"])


def downgrade() -> None:
    op.drop_index("ix_messages_split_of", table_name="messages")
    op.drop_column("messages", "split_of")
    for table in _INDEXED:
        op.drop_index(f"ix_{table}_tenant", table_name=table)
    for table in _TENANT:  # in place (SQLite 3.35+): a table rebuild would cascade
        op.drop_column(table, "tenant")
