"""/api/messages: the tracking center (search and detail)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from gateway.api.auth import Require
from gateway.api.common import Paging, paging, problems
from gateway.api.context import ApiContext, ApiError, get_context
from gateway.api.models import EntryId, MessageDetail, MessageOut, MessagePage, SearchText, UtcTime
from gateway.custody.audit import Actor
from gateway.custody.tokens import Permission
from gateway.pipeline.report import Verdict
from gateway.queue.outlets import DeliveryStatus
from gateway.store.messages import MessageQuery

router = APIRouter(prefix="/api/messages", tags=["messages"], responses=problems())
Reader = Annotated[Actor, Depends(Require(Permission.READ))]
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.get("", response_model=MessagePage, summary="Search the message log")
def search_messages(
    *,
    actor: Reader,
    ctx: Ctx,
    page: Annotated[Paging, Depends(paging)],
    sender: Annotated[SearchText | None, Query(description="Part of the envelope sender")] = None,
    recipient: Annotated[SearchText | None, Query(description="Part of a recipient")] = None,
    subject: Annotated[SearchText | None, Query(description="Part of the subject")] = None,
    since: Annotated[UtcTime | None, Query(description="Received at or after")] = None,
    until: Annotated[UtcTime | None, Query(description="Received before")] = None,
    verdict: Verdict | None = None,
    status: DeliveryStatus | None = None,
    split_of: Annotated[EntryId | None, Query(description="the copies of one received message")] = None,
    auth: Annotated[SearchText | None,
                    Query(description='Part of the authentication summary: "dmarc=fail"')] = None,
) -> MessagePage:
    found = ctx.stores.messages.search(MessageQuery(
        sender=sender, recipient=recipient, subject=subject, since=since, until=until,
        verdict=verdict.value if verdict else None, status=status, tenant=actor.tenant,
        split_of=split_of, auth=auth, limit=page.limit, offset=page.offset,
    ))
    return MessagePage(items=[MessageOut.of(r) for r in found.items], total=found.total,
                       limit=found.limit, offset=found.offset)


@router.get("/{queue_id}", response_model=MessageDetail, responses=problems(404),
            summary="One message with what was done to each part")
def get_message(actor: Reader, ctx: Ctx, queue_id: Annotated[EntryId, Path()]) -> MessageDetail:
    record = ctx.stores.messages.get(queue_id)
    if record is None or not actor.sees(record.tenant):
        raise ApiError(404, "not_found", "no such message")
    return MessageDetail.of(record)
