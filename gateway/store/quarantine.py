"""The quarantine: whole originals and held parts, release requests, retention purge.

Policy (who may release, four eyes, password limits) lives in `gateway.custody.quarantine`; this
module only keeps state consistent: each change is one transaction, and state transitions
are conditional updates so that two approvers clicking at once release a message once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from gateway.pipeline.attachments import HeldOriginal
from gateway.pipeline.headers import decode_field, read_header_block
from gateway.pipeline.report import Report, Verdict
from gateway.queue.envelope import Envelope
from gateway.queue.outlets import StoreUnavailable
from gateway.store.blobs import delete_orphans, get_blob, put_blob
from gateway.store.common import (
    Clock,
    Page,
    dumps,
    join_addresses,
    paged,
    refused_by_database,
    utcnow,
    write,
)
from gateway.store.messages import MAX_SUBJECT
from gateway.store.records import (
    QuarantineEntry,
    QuarantineQuery,
    QuarantineStats,
    entry_of,
    part_of,
    request_of,
)
from gateway.store.schema import blobs, quarantine_entries, quarantine_parts, release_requests

#: Writes a change's audit row inside the change's transaction, given what it made (a
#: request id, a queue id): `gateway.custody.audit.AuditLog.hook`.
AuditHook = Callable[[Connection, Mapping[str, Any]], None]

HELD = "held"
RELEASE_REQUESTED = "release_requested"
RELEASED = "released"
STATUSES = (HELD, RELEASE_REQUESTED, RELEASED)


@dataclass(frozen=True)
class _Held:
    """What `hold` derives from its arguments before writing."""

    reasons: tuple[str, ...]
    releasable: frozenset[str] = field(default_factory=frozenset)


class SqlQuarantine:
    """`gateway.custody.stores.QuarantineStore` on SQLAlchemy, plus what the operator service needs."""

    def __init__(self, engine: Engine, retention_days: int, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._retention = timedelta(days=retention_days)
        self._clock = clock

    # --- the worker's call ------------------------------------------------------------
    def hold(
        self,
        queue_id: str,
        envelope: Envelope,
        raw: bytes,
        report: Report,
        held: tuple[HeldOriginal, ...],
    ) -> None:
        """Keep the original and each held part; a repeated call for one id changes nothing.

        Raises `StoreUnavailable` when the database is away: the worker keeps the message
        in its spool and holds it once the database is back."""
        try:
            self._hold(queue_id, envelope, raw, report, held)
        except Exception as exc:  # judged: the database away, or these values refused
            if refused_by_database(exc):
                raise
            raise StoreUnavailable(f"quarantine store unavailable: {exc}"[:300]) from exc

    def _hold(self, queue_id: str, envelope: Envelope, raw: bytes, report: Report,
              held: tuple[HeldOriginal, ...]) -> None:
        derived = _derive(report, held)
        now = self._clock()
        with write(self._engine) as conn:
            if conn.execute(
                select(quarantine_entries.c.id).where(quarantine_entries.c.id == queue_id)
            ).first():
                return
            original = put_blob(conn, raw)
            conn.execute(insert(quarantine_entries).values(
                id=queue_id, created_at=now, expires_at=now + self._retention,
                mail_from=envelope.mail_from[:512], recipients=join_addresses(envelope.rcpt_tos),
                subject=_subject(raw), size=len(raw), verdict=report.verdict.value,
                reasons=dumps(list(derived.reasons)), original_sha256=original, status=HELD,
            ))
            for part in held:
                conn.execute(insert(quarantine_parts).values(
                    entry_id=queue_id, part=part.part, filename=part.filename,
                    content_type=part.content_type[:255], sha256=put_blob(conn, part.data),
                    size=len(part.data), reason=part.reason[:64],
                    releasable=part.part in derived.releasable,
                ))

    # --- reading ----------------------------------------------------------------------
    def get(self, entry_id: str) -> QuarantineEntry | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(quarantine_entries).where(quarantine_entries.c.id == entry_id)
            ).first()
            if row is None:
                return None
            parts = conn.execute(
                select(quarantine_parts)
                .where(quarantine_parts.c.entry_id == entry_id)
                .order_by(quarantine_parts.c.id)
            ).all()
            requests = conn.execute(
                select(release_requests)
                .where(release_requests.c.entry_id == entry_id)
                .order_by(release_requests.c.id)
            ).all()
        return replace(
            entry_of(row._mapping),
            parts=tuple(part_of(p._mapping) for p in parts),
            requests=tuple(request_of(r._mapping) for r in requests),
        )

    def search(self, q: QuarantineQuery) -> Page[QuarantineEntry]:
        t = quarantine_entries.c
        query = select(quarantine_entries)
        if q.sender:
            query = query.where(t.mail_from.icontains(q.sender, autoescape=True))
        if q.recipient:
            query = query.where(t.recipients.icontains(q.recipient, autoescape=True))
        if q.subject:
            query = query.where(t.subject.icontains(q.subject, autoescape=True))
        if q.reason:
            query = query.where(t.reasons.contains(json.dumps(q.reason), autoescape=True))
        if q.status:
            query = query.where(t.status == q.status)
        if q.since:
            query = query.where(t.created_at >= q.since)
        if q.until:
            query = query.where(t.created_at < q.until)
        with self._engine.connect() as conn:
            total, rows = paged(conn, query, (t.created_at.desc(), t.id.desc()), q.limit, q.offset)
        return Page(tuple(entry_of(r._mapping) for r in rows), total, q.limit, q.offset)

    def original(self, entry_id: str) -> bytes | None:
        with self._engine.connect() as conn:
            digest = conn.execute(
                select(quarantine_entries.c.original_sha256).where(
                    quarantine_entries.c.id == entry_id
                )
            ).scalar()
            return get_blob(conn, digest) if digest else None

    def part_data(self, entry_id: str, part: str) -> bytes | None:
        with self._engine.connect() as conn:
            digest = conn.execute(
                select(quarantine_parts.c.sha256).where(
                    quarantine_parts.c.entry_id == entry_id, quarantine_parts.c.part == part
                )
            ).scalar()
            return get_blob(conn, digest) if digest else None

    def stats(self) -> QuarantineStats:
        """Entries and stored bytes (each blob once), for the metrics gauges."""
        with self._engine.connect() as conn:
            entries = conn.execute(select(func.count()).select_from(quarantine_entries)).scalar()
            size = conn.execute(select(func.coalesce(func.sum(blobs.c.size), 0))).scalar()
        return QuarantineStats(int(entries or 0), int(size or 0))

    # --- changes ----------------------------------------------------------------------
    def delete(self, entry_id: str, audit: AuditHook | None = None) -> bool:
        """Remove the entry, its parts and requests, and originals nothing else uses;
        `audit` writes its row in the same transaction."""
        with write(self._engine) as conn:
            conn.execute(delete(release_requests).where(release_requests.c.entry_id == entry_id))
            conn.execute(delete(quarantine_parts).where(quarantine_parts.c.entry_id == entry_id))
            gone = conn.execute(
                delete(quarantine_entries).where(quarantine_entries.c.id == entry_id)
            ).rowcount
            delete_orphans(conn)
            if gone and audit is not None:
                audit(conn, {})
        return bool(gone)

    def purge(self, now: datetime | None = None,
              audit: AuditHook | None = None) -> list[str]:
        """Delete every entry whose retention has expired (each with its audit row);
        returns their ids."""
        cutoff = now or self._clock()
        with self._engine.connect() as conn:
            ids = list(conn.execute(
                select(quarantine_entries.c.id).where(quarantine_entries.c.expires_at <= cutoff)
            ).scalars())
        return [entry_id for entry_id in ids if self.delete(entry_id, audit)]

    def add_request(self, entry_id: str, actor: str, remote: str, reason: str,
                    audit: AuditHook | None = None) -> int | None:
        """A pending release request, or None when the entry is not in the `held` state."""
        now = self._clock()
        with write(self._engine) as conn:
            moved = conn.execute(
                update(quarantine_entries)
                .where(quarantine_entries.c.id == entry_id, quarantine_entries.c.status == HELD)
                .values(status=RELEASE_REQUESTED)
            ).rowcount
            if not moved:
                return None
            result = conn.execute(insert(release_requests).values(
                entry_id=entry_id, requested_by=actor[:128], requested_at=now,
                requested_from=remote[:64], reason=reason[:2000], status="pending",
            ))
            key = result.inserted_primary_key
            assert key is not None
            if audit is not None:
                audit(conn, {"request_id": int(key[0])})
            return int(key[0])

    def complete_release(
        self, entry_id: str, request_id: int, approver: str,
        deliver: Callable[[Connection], str], audit: AuditHook | None = None,
    ) -> str | None:
        """Approve `request_id` and deliver, atomically; None when it was no longer pending.

        `deliver` (putting the original into the spool) runs inside the transaction and
        gets its connection, to log the new message in it: if it fails, nothing changes;
        if the commit fails after it, the release happens once more at worst — the same
        at-least-once rule as SMTP.
        """
        now = self._clock()
        with write(self._engine) as conn:
            won = conn.execute(
                update(release_requests)
                .where(release_requests.c.id == request_id,
                       release_requests.c.entry_id == entry_id,
                       release_requests.c.status == "pending")
                .values(status="approved", decided_by=approver[:128], decided_at=now)
            ).rowcount
            if not won:
                return None
            queue_id = deliver(conn)
            conn.execute(update(release_requests).where(release_requests.c.id == request_id)
                         .values(queue_id=queue_id))
            self._mark_released(conn, entry_id, approver, queue_id, now, audit)
            return queue_id

    def release_now(
        self, entry_id: str, actor: str, deliver: Callable[[Connection], str],
        audit: AuditHook | None = None,
    ) -> str | None:
        """Release without a request (one-step policy, PPAP); None when not releasable."""
        now = self._clock()
        with write(self._engine) as conn:
            won = conn.execute(
                update(quarantine_entries)
                .where(quarantine_entries.c.id == entry_id,
                       quarantine_entries.c.status.in_((HELD, RELEASE_REQUESTED)))
                .values(status=RELEASED)
            ).rowcount
            if not won:
                return None
            queue_id = deliver(conn)
            self._mark_released(conn, entry_id, actor, queue_id, now, audit)
            return queue_id

    def _mark_released(
        self, conn: Any, entry_id: str, actor: str, queue_id: str, now: datetime,
        audit: AuditHook | None,
    ) -> None:
        conn.execute(
            update(quarantine_entries).where(quarantine_entries.c.id == entry_id).values(
                status=RELEASED, released_at=now, released_by=actor[:128],
                release_queue_id=queue_id,
            )
        )
        if audit is not None:
            audit(conn, {"queue_id": queue_id})

    def reserve_password_attempt(self, entry_id: str, limit: int) -> int | None:
        """Count one password attempt if fewer than `limit` were made; the new count, or None.

        One conditional UPDATE checked by its row count, before anything is decrypted:
        reading the count first and adding to it after the (slow) decryption let 40
        parallel guesses through a limit of 5 as 29 tries.
        """
        entries = quarantine_entries.c
        with write(self._engine) as conn:
            reserved = conn.execute(
                update(quarantine_entries)
                .where(entries.id == entry_id, entries.password_failures < limit)
                .values(password_failures=entries.password_failures + 1)
            )
            if reserved.rowcount != 1:
                return None
            count = conn.execute(
                select(entries.password_failures).where(entries.id == entry_id)
            ).scalar()
        return int(count or 0)


def _derive(report: Report, held: tuple[HeldOriginal, ...]) -> _Held:
    reasons: list[str] = []
    if report.verdict is Verdict.QUARANTINED and report.reason:
        reasons.append(report.reason)
    releasable = {a.part for a in report.actions if a.releasable}
    for code in [a.code for a in report.actions if a.quarantined] + [h.reason for h in held]:
        if code and code not in reasons:
            reasons.append(code)
    return _Held(tuple(reasons), frozenset(releasable))


def _subject(untrusted_raw: bytes) -> str | None:
    """The decoded Subject, for listing, with the same header logic as the pipeline."""
    head = untrusted_raw[:256 * 1024].replace(b"\r\n", b"\n")
    values = read_header_block(head, 0, len(head)).all("Subject")
    return decode_field(values[0])[:MAX_SUBJECT] if values else None
