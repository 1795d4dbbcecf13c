"""Sender authentication results per message (issue 21): `spf=… dkim=… dmarc=… arc=…`,
searchable in the API and the console.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: added in place on SQLite and PostgreSQL alike.
    op.add_column("messages", sa.Column("auth", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "auth")
