"""Release decisions: a denial with its reason, the approver's reason, the daily digest.

- `release_requests.decision_reason`: the approver's words (required to deny, optional to
  approve). The new states `denied` (request) and `denied` (entry) need no schema change:
  both status columns are plain strings wide enough.
- `digest_runs`: one row per local day the recipients' digest went out. Its primary key
  is the lease that keeps two nodes (or a cron job next to the server) from both sending.

Only columns and a table are added: the audit log and its append-only triggers of 0001
are not touched, so nothing about them differs between SQLite and PostgreSQL here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN of a nullable column is plain ALTER TABLE on both backends (no batch
    # copy of the table on SQLite, so no foreign key or trigger is rebuilt).
    op.add_column("release_requests", sa.Column("decision_reason", sa.Text, nullable=True))
    op.create_table(
        "digest_runs",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node", sa.String(128), nullable=False, server_default=""),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    # 0001's code knows no `denied` entry: give such entries back to the quarantine as
    # held, so they can be requested again. Denied requests stay as history; 0001 only
    # ever looks for `pending` ones.
    op.execute("UPDATE quarantine_entries SET status = 'held' WHERE status = 'denied'")
    op.drop_table("digest_runs")
    with op.batch_alter_table("release_requests") as batch:
        batch.drop_column("decision_reason")
