"""The quarantine: whole originals and held parts, release requests, retention purge.

Policy (who may release, four eyes, password limits) lives in `gateway.custody.quarantine`; this
module only keeps state consistent: each change is one transaction, and state transitions
are conditional updates so that two approvers clicking at once release a message once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

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
    ReleaseRequest,
    entry_of,
    part_of,
    request_of,
)
from gateway.store.schema import (
    blobs,
    digest_runs,
    quarantine_entries,
    quarantine_parts,
    release_requests,
    task_leases,
)

#: Writes a change's audit row inside the change's transaction, given what it made (a
#: request id, a queue id): `gateway.custody.audit.AuditLog.hook`.
AuditHook = Callable[[Connection, Mapping[str, Any]], None]

HELD = "held"
RELEASE_REQUESTED = "release_requested"
RELEASED = "released"
#: An approver refused the last request (却下); staff may request it again.
DENIED = "denied"
STATUSES = (HELD, RELEASE_REQUESTED, RELEASED, DENIED)
#: The scheduled retention purge's row in `task_leases`.
PURGE_TASK = "quarantine.purge"

#: Runs inside a decision's transaction and spools what must go out with it (the
#: original, the requester's notification); returns the queue ids to wake after commit.
Spooler = Callable[[Connection], list[str]]


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
        delivered: bytes | None = None,
    ) -> None:
        """Keep the original and each held part, and what was `delivered` instead (the
        console's preview); a repeated call for one id changes nothing.

        Raises `StoreUnavailable` when the database is away: the worker keeps the message
        in its spool and holds it once the database is back."""
        try:
            self._hold(queue_id, envelope, raw, report, held, delivered)
        except Exception as exc:  # judged: the database away, or these values refused
            if refused_by_database(exc):
                raise
            raise StoreUnavailable(f"quarantine store unavailable: {exc}"[:300]) from exc

    def _hold(self, queue_id: str, envelope: Envelope, raw: bytes, report: Report,
              held: tuple[HeldOriginal, ...], delivered: bytes | None) -> None:
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
                delivered_sha256=put_blob(conn, delivered) if delivered is not None else None,
                tenant=envelope.tenant,
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
        if q.tenant:
            query = query.where(t.tenant == q.tenant)
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

    def with_pending_requests(self, entries: Sequence[QuarantineEntry]
                              ) -> list[QuarantineEntry]:
        """`entries` with their pending requests, read in one query: `get()` per entry
        (three queries each) made the console's request queue take 0.7 s for 400 waiting
        entries (issue 18)."""
        table = release_requests.c
        with self._engine.connect() as conn:
            rows = conn.execute(select(release_requests).where(
                table.entry_id.in_([e.id for e in entries]), table.status == "pending",
            ).order_by(table.id)).all()
        pending: dict[str, list[ReleaseRequest]] = {}
        for row in rows:
            request = request_of(row._mapping)
            pending.setdefault(request.entry_id, []).append(request)
        return [replace(e, requests=tuple(pending.get(e.id, ()))) for e in entries]

    def delivered(self, entry_id: str) -> bytes | None:
        """The message the recipient got instead of the original (None before 0005)."""
        with self._engine.connect() as conn:
            digest = conn.execute(
                select(quarantine_entries.c.delivered_sha256).where(
                    quarantine_entries.c.id == entry_id)
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

    def stats_by_tenant(self) -> dict[str, QuarantineStats]:
        """Entries and the sizes of their messages per tenant ("default": none), for the
        per-tenant gauges. Bytes here are each entry's message size: a blob two tenants
        share counts for both, unlike `stats()`."""
        tenant = quarantine_entries.c.tenant
        query = select(tenant, func.count(), func.coalesce(func.sum(quarantine_entries.c.size), 0)
                       ).group_by(tenant)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return {(t or "default"): QuarantineStats(int(n), int(b)) for t, n, b in rows}

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
              audit: Callable[[str], AuditHook] | None = None) -> list[str]:
        """Delete every entry whose retention has expired, each with its audit row made by
        `audit(entry_id)` (the row names the entry it removed); returns their ids."""
        cutoff = now or self._clock()
        with self._engine.connect() as conn:
            ids = list(conn.execute(
                select(quarantine_entries.c.id).where(quarantine_entries.c.expires_at <= cutoff)
            ).scalars())
        return [entry_id for entry_id in ids
                if self.delete(entry_id, audit(entry_id) if audit else None)]

    def claim_purge(self, node: str, interval_seconds: float) -> bool:
        """Claim this interval's scheduled purge for `node`; False when another node (or
        this one) already ran it less than `interval_seconds` ago.

        A conditional UPDATE that moves `next_at` forward: on PostgreSQL a second node's
        UPDATE waits for the first's commit and then finds `next_at` in the future, on
        SQLite the write lock orders them; either way one claim per interval succeeds.
        The first claim ever inserts the row, and a concurrent first insert loses on the
        primary key. A purge that fails after its claim waits for the next interval, as
        it would on one node."""
        now = self._clock()
        lease = task_leases.c
        values = {"node": node[:128], "claimed_at": now,
                  "next_at": now + timedelta(seconds=interval_seconds)}
        try:
            with write(self._engine) as conn:
                if conn.execute(update(task_leases).where(
                        lease.task == PURGE_TASK, lease.next_at <= now).values(**values)
                                ).rowcount:
                    return True
                if conn.execute(select(lease.task).where(lease.task == PURGE_TASK)).first():
                    return False
                conn.execute(insert(task_leases).values(task=PURGE_TASK, **values))
                return True
        except IntegrityError:
            return False

    def add_request(self, entry_id: str, actor: str, remote: str, reason: str,
                    audit: AuditHook | None = None,
                    from_statuses: tuple[str, ...] = (HELD,)) -> int | None:
        """A pending release request, or None when the entry is in none of `from_statuses`."""
        now = self._clock()
        entries = quarantine_entries.c
        with write(self._engine) as conn:
            moved = conn.execute(
                update(quarantine_entries)
                .where(entries.id == entry_id, entries.status.in_(from_statuses))
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
        reason: str | None = None,
    ) -> str | None:
        """Approve `request_id` and deliver, atomically; None when it was no longer pending.

        `deliver` (putting the original into the spool) runs inside the transaction and
        gets its connection, to log the new message in it: if it fails, nothing changes;
        if the commit fails after it, the release happens once more at worst — the same
        at-least-once rule as SMTP.
        """
        now = self._clock()
        with write(self._engine) as conn:
            if not _decide(conn, entry_id, request_id, "approved", approver, now, reason):
                return None
            queue_id = deliver(conn)
            conn.execute(update(release_requests).where(release_requests.c.id == request_id)
                         .values(queue_id=queue_id))
            self._mark_released(conn, entry_id, approver, queue_id, now, audit)
            return queue_id

    def deny_request(
        self, entry_id: str, request_id: int, approver: str, reason: str,
        notify: Spooler, audit: AuditHook | None = None,
    ) -> list[str] | None:
        """Deny `request_id` (entry back to `denied`) and spool the notifications, atomically;
        the queue ids spooled, or None when the request was no longer pending.

        The audit row is written before `notify`, so that only the commit itself can fail
        after the notification is in the spool (see `complete_release`)."""
        now = self._clock()
        with write(self._engine) as conn:
            if not _decide(conn, entry_id, request_id, DENIED, approver, now, reason):
                return None
            conn.execute(update(quarantine_entries).where(
                quarantine_entries.c.id == entry_id,
                quarantine_entries.c.status == RELEASE_REQUESTED,
            ).values(status=DENIED))
            if audit is not None:
                audit(conn, {"request_id": request_id})
            return notify(conn)

    def held_entries(self) -> list[QuarantineEntry]:
        """Entries still waiting for a decision nobody asked for (`held`, not expired),
        oldest first: what the recipients' digest lists."""
        t = quarantine_entries.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(quarantine_entries)
                .where(t.status == HELD, t.expires_at > self._clock())
                .order_by(t.created_at, t.id)
            ).all()
        return [entry_of(r._mapping) for r in rows]

    def digest_sent(self, day: str) -> bool:
        with self._engine.connect() as conn:
            return conn.execute(
                select(digest_runs.c.day).where(digest_runs.c.day == day)
            ).first() is not None

    def run_digest(self, day: str, node: str, deliver: Spooler) -> list[str] | None:
        """Claim `day` and spool its digests in one transaction; the queue ids, or None when
        the day was claimed already (by this node, another one, or the CLI).

        The day's row is inserted first: on PostgreSQL a second node's insert waits for the
        first transaction and then fails on the primary key, on SQLite the write lock
        orders them; either way the loser has spooled nothing."""
        try:
            with write(self._engine) as conn:
                conn.execute(insert(digest_runs).values(
                    day=day, started_at=self._clock(), node=node[:128]))
                queued = deliver(conn)
                conn.execute(update(digest_runs).where(digest_runs.c.day == day)
                             .values(messages=len(queued)))
                return queued
        except IntegrityError:
            if self.digest_sent(day):
                return None
            raise

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


def _decide(conn: Connection, entry_id: str, request_id: int, status: str, approver: str,
            now: datetime, reason: str | None) -> bool:
    """Decide a request that is still pending; False when someone decided it first."""
    return bool(conn.execute(
        update(release_requests)
        .where(release_requests.c.id == request_id, release_requests.c.entry_id == entry_id,
               release_requests.c.status == "pending")
        .values(status=status, decided_by=approver[:128], decided_at=now,
                decision_reason=reason[:2000] if reason else None)
    ).rowcount)


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
