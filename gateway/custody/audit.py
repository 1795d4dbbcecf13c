"""The append-only audit log: who did what, when, from where.

Every state-changing call and every download of an original is written here by
`gateway.custody.quarantine` (API and CLI alike). Rows are never updated or deleted: the code has
no way to, and database triggers refuse it (see migration 0001).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from gateway.store.common import Clock, Page, dumps, paged, utcnow, write
from gateway.store.schema import audit_log


@dataclass(frozen=True)
class Actor:
    """Who acts: a token's name and role, and the client address ("cli" for the CLI)."""

    name: str
    role: str
    remote: str = ""
    #: The tenant the actor is limited to (a tenant's token or console user); None: all.
    tenant: str | None = None

    def sees(self, tenant: str | None) -> bool:
        """Whether data of `tenant` (None: the default tenant's) is visible to the actor:
        a tenant's staff see their tenant's only; the prefecture's staff see all. What is
        not visible is answered as if it did not exist (404), so ids do not leak."""
        return self.tenant is None or self.tenant == tenant


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    remote: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    #: Only this tenant's rows (a tenant's auditor); None: all.
    tenant: str | None = None
    limit: int = 50
    offset: int = 0


class AuditLog:
    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def record(self, actor: Actor, action: str, target: str = "", *, scope: str | None = None,
               **detail: Any) -> None:
        with write(self._engine) as conn:
            self.record_in(conn, actor, action, target, scope=scope, **detail)

    def record_in(self, conn: Connection, actor: Actor, action: str, target: str = "", *,
                  scope: str | None = None, **detail: Any) -> None:
        """Write the row in `conn`'s transaction: the change it records commits with it
        or not at all (a database lost between the two must not leave a release with no
        audit row). `scope`: the tenant whose data it touched (default: the actor's)."""
        conn.execute(insert(audit_log).values(
            at=self._clock(), actor=actor.name[:128], role=actor.role[:16],
            action=action[:64], target=target[:128], remote=actor.remote[:64],
            detail=dumps(detail), tenant=scope or actor.tenant,
        ))

    def hook(self, actor: Actor, action: str, target: str = "", *, scope: str | None = None,
             **detail: Any) -> Callable[[Connection, Mapping[str, Any]], None]:
        """`record_in` for a store method to call inside its transaction, with what the
        change made (a request id, a queue id) added to the detail."""

        def write_row(conn: Connection, made: Mapping[str, Any]) -> None:
            self.record_in(conn, actor, action, target, scope=scope, **detail, **made)

        return write_row

    def search(self, q: AuditQuery) -> Page[AuditEvent]:
        query = select(audit_log)
        if q.actor:
            query = query.where(audit_log.c.actor == q.actor)
        if q.action:
            query = query.where(audit_log.c.action == q.action)
        if q.target:
            query = query.where(audit_log.c.target == q.target)
        if q.tenant:
            query = query.where(audit_log.c.tenant == q.tenant)
        with self._engine.connect() as conn:
            total, rows = paged(conn, query, (audit_log.c.id.desc(),), q.limit, q.offset)
        return Page(tuple(_event(r._mapping) for r in rows), total, q.limit, q.offset)


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        id=row["id"], at=row["at"], actor=row["actor"], role=row["role"],
        action=row["action"], target=row["target"], remote=row["remote"],
        detail=json.loads(row["detail"]),
    )
