"""/api/quarantine: list, detail, original download, delete, release, approve, deny."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response

from gateway.api.auth import Require
from gateway.api.common import Paging, paging, problems
from gateway.api.context import ApiContext, get_context
from gateway.api.models import (
    ApproveIn,
    DenyIn,
    EntryId,
    QuarantineDetail,
    QuarantineOut,
    QuarantinePage,
    QuarantineStatus,
    ReleaseIn,
    ReleaseOut,
    SearchText,
    UtcTime,
)
from gateway.custody.audit import Actor
from gateway.custody.quarantine import ReleaseOutcome
from gateway.custody.tokens import Permission
from gateway.store.records import QuarantineQuery

router = APIRouter(prefix="/api/quarantine", tags=["quarantine"], responses=problems())
Ctx = Annotated[ApiContext, Depends(get_context)]
Id = Annotated[EntryId, Path(description="The quarantine id (the queue id in the notice)")]


@router.get("", response_model=QuarantinePage, summary="List and search the quarantine")
def list_quarantine(
    *,
    actor: Annotated[Actor, Depends(Require(Permission.READ))],
    ctx: Ctx,
    page: Annotated[Paging, Depends(paging)],
    sender: Annotated[SearchText | None, Query()] = None,
    recipient: Annotated[SearchText | None, Query()] = None,
    subject: Annotated[SearchText | None, Query()] = None,
    reason: Annotated[SearchText | None, Query(description="A reason code")] = None,
    status: QuarantineStatus | None = None,
    since: Annotated[UtcTime | None, Query()] = None,
    until: Annotated[UtcTime | None, Query()] = None,
) -> QuarantinePage:
    found = ctx.quarantine.search(QuarantineQuery(
        sender=sender, recipient=recipient, subject=subject, reason=reason, status=status,
        since=since, until=until, limit=page.limit, offset=page.offset,
    ), actor)
    return QuarantinePage(items=[QuarantineOut.of(e) for e in found.items], total=found.total,
                          limit=found.limit, offset=found.offset)


@router.get("/{entry_id}", response_model=QuarantineDetail, responses=problems(404),
            summary="One entry with its held parts and release requests")
def get_entry(
    actor: Annotated[Actor, Depends(Require(Permission.READ))], ctx: Ctx, entry_id: Id
) -> QuarantineDetail:
    return QuarantineDetail.of(ctx.quarantine.show(entry_id, actor))


@router.get(
    "/{entry_id}/original", response_class=Response, summary="Download the original (audited)",
    responses={
        **problems(404),
        200: {"content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
              "description": "The message exactly as received"},
    },
)
def download_original(
    actor: Annotated[Actor, Depends(Require(Permission.DOWNLOAD))], ctx: Ctx, entry_id: Id
) -> Response:
    data = ctx.quarantine.original(entry_id, actor)
    return Response(data, media_type="message/rfc822", headers={
        "Content-Disposition": f'attachment; filename="{entry_id}.eml"',
        "X-Content-Type-Options": "nosniff",
    })


@router.delete("/{entry_id}", status_code=204, response_class=Response,
               responses=problems(404), summary="Delete an entry and its originals")
def delete_entry(
    actor: Annotated[Actor, Depends(Require(Permission.DELETE))], ctx: Ctx, entry_id: Id
) -> Response:
    ctx.quarantine.delete(entry_id, actor)
    return Response(status_code=204)


@router.post(
    "/{entry_id}/release", response_model=ReleaseOut, responses=problems(400, 404, 409, 429),
    summary="Request a release; with a password, release the decrypted, sanitized content",
)
def request_release(
    actor: Annotated[Actor, Depends(Require(Permission.REQUEST))],
    ctx: Ctx,
    entry_id: Id,
    body: Annotated[ReleaseIn | None, Body()] = None,
) -> ReleaseOut:
    body = body or ReleaseIn()
    if body.password is not None:
        outcome = ctx.quarantine.release_with_password(entry_id, actor, body.password, body.part)
    else:
        outcome = ctx.quarantine.request_release(entry_id, actor, body.reason)
    return _out(outcome)


@router.post("/{entry_id}/release/approve", response_model=ReleaseOut,
             responses=problems(404, 409), summary="Approve the pending release (four eyes)")
def approve_release(
    actor: Annotated[Actor, Depends(Require(Permission.APPROVE))],
    ctx: Ctx,
    entry_id: Id,
    body: Annotated[ApproveIn | None, Body()] = None,
) -> ReleaseOut:
    return _out(ctx.quarantine.approve(entry_id, actor, (body or ApproveIn()).reason))


@router.post("/{entry_id}/release/deny", response_model=ReleaseOut,
             responses=problems(404, 409),
             summary="Deny the pending release with a reason (four eyes)")
def deny_release(
    actor: Annotated[Actor, Depends(Require(Permission.APPROVE))],
    ctx: Ctx,
    entry_id: Id,
    body: DenyIn,
) -> ReleaseOut:
    return _out(ctx.quarantine.deny(entry_id, actor, body.reason))


def _out(outcome: ReleaseOutcome) -> ReleaseOut:
    return ReleaseOut(id=outcome.entry_id, status=outcome.status,  # type: ignore[arg-type]
                      request_id=outcome.request_id, queue_id=outcome.queue_id)
