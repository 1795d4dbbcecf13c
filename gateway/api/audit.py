"""/api/audit: the append-only audit log, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from gateway.api.auth import Require
from gateway.api.common import Paging, paging, problems
from gateway.api.context import ApiContext, get_context
from gateway.api.models import AuditOut, AuditPage, SearchText
from gateway.custody.audit import Actor, AuditQuery
from gateway.custody.tokens import Permission

router = APIRouter(prefix="/api/audit", tags=["audit"], responses=problems())


@router.get("", response_model=AuditPage, summary="Read the audit log")
def audit_log(
    reader: Annotated[Actor, Depends(Require(Permission.AUDIT))],
    ctx: Annotated[ApiContext, Depends(get_context)],
    page: Annotated[Paging, Depends(paging)],
    actor: Annotated[SearchText | None, Query(description="Token name, exactly")] = None,
    action: Annotated[SearchText | None, Query(description="e.g. quarantine.release")] = None,
    target: Annotated[SearchText | None, Query(description="e.g. a quarantine id")] = None,
) -> AuditPage:
    found = ctx.stores.audit.search(AuditQuery(actor=actor, action=action, target=target,
                                               tenant=reader.tenant, limit=page.limit,
                                               offset=page.offset))
    return AuditPage(items=[AuditOut.of(e) for e in found.items], total=found.total,
                     limit=found.limit, offset=found.offset)
