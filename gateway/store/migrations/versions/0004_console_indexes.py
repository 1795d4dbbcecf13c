"""Indexes for the console's pages on a full database (issue 18).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The dashboard counts a day's and a week's messages by verdict and by status: with
    # both columns in the index the counts read the index range alone, never the rows
    # (wide: each keeps its report JSON). See `SqlMessageLog.activity`.
    op.create_index("ix_messages_received_verdict_status", "messages",
                    ["received_at", "verdict", "status"])


def downgrade() -> None:
    op.drop_index("ix_messages_received_verdict_status", table_name="messages")
