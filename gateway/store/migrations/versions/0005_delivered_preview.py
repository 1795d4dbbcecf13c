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
    # batch mode: SQLite adds a column with a foreign key only by rebuilding the table.
    with op.batch_alter_table("quarantine_entries") as batch:
        batch.add_column(sa.Column("delivered_sha256", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_quarantine_entries_delivered", "blobs",
                                 ["delivered_sha256"], ["sha256"])


def downgrade() -> None:
    with op.batch_alter_table("quarantine_entries") as batch:
        batch.drop_constraint("fk_quarantine_entries_delivered", type_="foreignkey")
        batch.drop_column("delivered_sha256")
