"""Content-addressed originals in the database (sha256 → bytes), stored once.

Why in the database and not in files: the metadata and the bytes then commit or roll back
together (no orphan files after a crash, no entry without its original), several gateway
nodes on one PostgreSQL share the quarantine without a shared filesystem, and a database
backup is a complete quarantine backup. Originals are capped by the SMTP size limit
(25 MiB by default), well within what SQLite and PostgreSQL `bytea` handle.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Connection, delete, exists, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.common import utcnow
from gateway.store.schema import blobs, quarantine_entries, quarantine_parts


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(conn: Connection, data: bytes) -> str:
    """Store `data` unless already there (two messages may share an attachment)."""
    digest = sha256_hex(data)
    values = {"sha256": digest, "size": len(data), "data": data, "created_at": utcnow()}
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(blobs).values(values).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        stmt = sqlite.insert(blobs).values(values).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported backends exist
        if conn.execute(select(blobs.c.sha256).where(blobs.c.sha256 == digest)).first():
            return digest
        stmt = insert(blobs).values(values)
    conn.execute(stmt)
    return digest


def get_blob(conn: Connection, digest: str) -> bytes | None:
    data = conn.execute(select(blobs.c.data).where(blobs.c.sha256 == digest)).scalar()
    return bytes(data) if data is not None else None


def delete_orphans(conn: Connection) -> int:
    """Remove blobs no entry or part refers to any more; returns how many."""
    used = or_(
        exists().where(quarantine_entries.c.original_sha256 == blobs.c.sha256),
        exists().where(quarantine_entries.c.delivered_sha256 == blobs.c.sha256),
        exists().where(quarantine_parts.c.sha256 == blobs.c.sha256),
    )
    return conn.execute(delete(blobs).where(~used)).rowcount
