"""The purge lease: one row per scheduled task, claimed by one node per interval.

Every node with the API runs the retention purge on a timer. Two nodes purging the
same expired entries at once both scan, both try each delete and the blob cleanup, and
race; `task_leases` lets exactly one of them run per interval: a node runs the task
only when its conditional UPDATE moves `next_at` forward (`SqlQuarantine.claim_purge`).
The row is created by the first claim, so no data is written here.

Only a table is added: nothing else differs between SQLite and PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_leases",
        sa.Column("task", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(128), nullable=False, server_default=""),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("task_leases")
