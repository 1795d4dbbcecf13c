"""Initial schema: message log, quarantine, release requests, audit log, API tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

_SQLITE_APPEND_ONLY = (
    "CREATE TRIGGER audit_log_no_{op} BEFORE {OP} ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
)
_PG_FUNCTION = (
    "CREATE OR REPLACE FUNCTION mugaika_audit_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$ LANGUAGE plpgsql"
)
_PG_TRIGGER = (
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION mugaika_audit_append_only()"
)


def upgrade() -> None:
    _messages()
    _quarantine()
    _audit_and_tokens()
    _append_only_audit()


def _messages() -> None:
    op.create_table(
        "messages",
        sa.Column("queue_id", sa.String(64), primary_key=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default="inbound"),
        sa.Column("mail_from", sa.String(512), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("client_addr", sa.String(64), nullable=False, server_default=""),
        sa.Column("helo", sa.String(255), nullable=False, server_default=""),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("processed_at", _TS, nullable=True),
        sa.Column("report_json", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status_detail", sa.Text, nullable=False, server_default=""),
        sa.Column("status_at", _TS, nullable=True),
    )
    for col in ("received_at", "mail_from", "verdict", "status"):
        op.create_index(f"ix_messages_{col}", "messages", [col])


def _quarantine() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "quarantine_entries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("mail_from", sa.String(512), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("original_sha256", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=False),
        sa.Column("status", sa.String(24), nullable=False, server_default="held"),
        sa.Column("released_at", _TS, nullable=True),
        sa.Column("released_by", sa.String(128), nullable=True),
        sa.Column("release_queue_id", sa.String(64), nullable=True),
        sa.Column("password_failures", sa.Integer, nullable=False, server_default="0"),
    )
    for col in ("created_at", "expires_at", "status"):
        op.create_index(f"ix_quarantine_entries_{col}", "quarantine_entries", [col])
    op.create_table(
        "quarantine_parts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "entry_id",
            sa.String(64),
            sa.ForeignKey("quarantine_entries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("part", sa.String(64), nullable=False),
        sa.Column("filename", sa.Text, nullable=True),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("releasable", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_quarantine_parts_entry_id", "quarantine_parts", ["entry_id"])
    op.create_table(
        "release_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "entry_id",
            sa.String(64),
            sa.ForeignKey("quarantine_entries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("requested_from", sa.String(64), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("queue_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_release_requests_entry_id", "release_requests", ["entry_id"])
    op.create_index(
        "ix_release_requests_entry_status", "release_requests", ["entry_id", "status"]
    )


def _audit_and_tokens() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(128), nullable=False, server_default=""),
        sa.Column("remote", sa.String(64), nullable=False, server_default=""),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )


def _append_only_audit() -> None:
    """Refuse UPDATE and DELETE on the audit log in the database itself, not only in code."""
    if op.get_bind().dialect.name == "sqlite":
        for name in ("update", "delete"):
            op.execute(_SQLITE_APPEND_ONLY.format(op=name, OP=name.upper()))
    else:
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)


def downgrade() -> None:
    for table in (
        "api_tokens", "audit_log", "release_requests", "quarantine_parts",
        "quarantine_entries", "blobs", "messages",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS mugaika_audit_append_only()")
