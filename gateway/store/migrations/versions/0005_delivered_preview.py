"""What the recipient was delivered, kept with each quarantine entry (the console's preview).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key to blobs (the original has one): on SQLite a key can be added only by
    # rebuilding the table, and the rebuild's DROP TABLE cascades to the release requests.
    # `delete_orphans` keeps the blob while an entry names it.
    op.add_column("quarantine_entries",
                  sa.Column("delivered_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("quarantine_entries", "delivered_sha256")
