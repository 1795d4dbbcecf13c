"""The tables behind the message log, the quarantine, release requests, audit and tokens.

SQLAlchemy Core, one `MetaData` shared by the queries and by the migration check test
(`tests/test_store_migrations.py` compares it with what Alembic builds). Times are stored
as UTC; SQLite has no time zones, so `UtcDateTime` strips and restores them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.engine import Dialect


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite compares the stored text: keep one format without offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

#: The tracking center: one row per message the gateway accepted.
messages = Table(
    "messages",
    metadata,
    Column("queue_id", String(64), primary_key=True),
    Column("received_at", UtcDateTime(), nullable=False, index=True),
    Column("kind", String(16), nullable=False, server_default="inbound"),
    Column("mail_from", String(512), nullable=False, index=True),
    #: One address per line; searched with LIKE (no per-address table needed at our volume).
    Column("recipients", Text, nullable=False),
    Column("client_addr", String(64), nullable=False, server_default=""),
    Column("helo", String(255), nullable=False, server_default=""),
    Column("size", BigInteger, nullable=False),
    Column("subject", Text, nullable=True),
    Column("verdict", String(16), nullable=True, index=True),
    Column("processed_at", UtcDateTime(), nullable=True),
    Column("report_json", Text, nullable=True),
    Column("status", String(16), nullable=False, server_default="queued", index=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("status_detail", Text, nullable=False, server_default=""),
    Column("status_at", UtcDateTime(), nullable=True),
    #: The tenant the message (or this copy of it) is for; NULL: the default tenant.
    Column("tenant", String(32), nullable=True, index=True),
    #: The queue id the client's message got when it was split into one copy per tenant.
    Column("split_of", String(64), nullable=True, index=True),
    #: Sender authentication on the original: "spf=pass dkim=pass dmarc=pass arc=none".
    Column("auth", String(200), nullable=True),
)

#: Originals, stored once per content (sha256), shared by entries and parts.
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

quarantine_entries = Table(
    "quarantine_entries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False, index=True),
    Column("expires_at", UtcDateTime(), nullable=False, index=True),
    Column("mail_from", String(512), nullable=False),
    Column("recipients", Text, nullable=False),
    Column("subject", Text, nullable=True),
    Column("size", BigInteger, nullable=False),
    Column("verdict", String(16), nullable=False),
    #: JSON list of reason codes (e.g. ["unsupported_type", "encrypted"]).
    Column("reasons", Text, nullable=False),
    Column("original_sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
    #: held | release_requested | released | denied (a request was refused; may be asked again)
    Column("status", String(24), nullable=False, server_default="held", index=True),
    Column("released_at", UtcDateTime(), nullable=True),
    Column("released_by", String(128), nullable=True),
    Column("release_queue_id", String(64), nullable=True),
    Column("password_failures", Integer, nullable=False, server_default="0"),
    #: What the recipient was delivered instead (the rebuilt message: notice, text, page
    #: images), for the console's preview; NULL for entries held before migration 0005.
    Column("delivered_sha256", String(64), nullable=True),  # a blob (see migration 0005)
    Column("tenant", String(32), nullable=True, index=True),
)

quarantine_parts = Table(
    "quarantine_parts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "entry_id",
        String(64),
        ForeignKey("quarantine_entries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("part", String(64), nullable=False),
    Column("filename", Text, nullable=True),
    Column("content_type", String(255), nullable=False),
    Column("sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("releasable", Boolean, nullable=False, server_default=false()),
)

release_requests = Table(
    "release_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "entry_id",
        String(64),
        ForeignKey("quarantine_entries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("requested_by", String(128), nullable=False),
    Column("requested_at", UtcDateTime(), nullable=False),
    Column("requested_from", String(64), nullable=False, server_default=""),
    Column("reason", Text, nullable=False, server_default=""),
    #: pending | approved | denied
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("decided_by", String(128), nullable=True),
    Column("decided_at", UtcDateTime(), nullable=True),
    Column("queue_id", String(64), nullable=True),
    #: Why the approver decided so (required to deny, optional to approve); migration 0002.
    Column("decision_reason", Text, nullable=True),
)

#: One row per local day the recipients' digest was sent (migration 0002). The row is
#: inserted first in the transaction that spools the digests: its primary key is the
#: lease that keeps a second node, or a second run, from sending the same day again.
digest_runs = Table(
    "digest_runs",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("node", String(128), nullable=False, server_default=""),
    Column("messages", Integer, nullable=False, server_default="0"),
)

#: Append-only: triggers installed by the migration refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False, index=True),
    Column("actor", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(128), nullable=False, server_default=""),
    Column("remote", String(64), nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default="{}"),
    #: The tenant whose data the action touched (NULL: the default tenant's, or none).
    Column("tenant", String(32), nullable=True, index=True),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    #: A tenant's token sees and acts on that tenant's data only; NULL: every tenant's.
    Column("tenant", String(32), nullable=True),
)

Index("ix_release_requests_entry_status", release_requests.c.entry_id, release_requests.c.status)

#: Console accounts (`mugaika user …`): argon2id hashes, the API tokens' four roles.
console_users = Table(
    "console_users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("password_changed_at", UtcDateTime(), nullable=False),
    Column("disabled_at", UtcDateTime(), nullable=True),
    Column("last_login_at", UtcDateTime(), nullable=True),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", UtcDateTime(), nullable=True),
    #: As for tokens: a tenant's staff, or (NULL) the prefecture's.
    Column("tenant", String(32), nullable=True),
)

#: Console sessions, kept in the database so that any node (and a restarted one) knows
#: them. Only the SHA-256 of the cookie's random token is stored.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("console_users.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("remote", String(64), nullable=False, server_default=""),
)

#: The dashboard's counts by verdict and status over a day or a week read this index
#: alone (migration 0004; `gateway.store.messages.SqlMessageLog.activity`).
Index("ix_messages_received_verdict_status", messages.c.received_at, messages.c.verdict,
      messages.c.status)

#: Scheduled tasks every node runs on a timer but only one node should carry out per
#: interval (migration 0006): the retention purge. A node runs the task when its
#: conditional UPDATE of `next_at` (still in the past) succeeds; the others see the new
#: `next_at` and skip (`gateway.store.quarantine.SqlQuarantine.claim_purge`).
task_leases = Table(
    "task_leases",
    metadata,
    Column("task", String(32), primary_key=True),
    Column("node", String(128), nullable=False, server_default=""),
    Column("claimed_at", UtcDateTime(), nullable=False),
    Column("next_at", UtcDateTime(), nullable=False),
)
