"""メッセージ追跡: search the message log; one message with its envelope and part report."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from gateway.console.web import Page, Refused, SignedIn
from gateway.custody.tokens import Permission
from gateway.store.messages import MessageQuery, MessageRecord

router = APIRouter()
PAGE_SIZE = 50
#: Header text shown from a held original, at most (the page stays small).
MAX_HEADER_TEXT = 32 * 1024
Reader = Annotated[Page, Depends(SignedIn(Permission.READ))]
Text = Annotated[str | None, Query(max_length=200)]
VERDICTS = ("clean", "sanitized", "quarantined")
STATUSES = ("queued", "delivered", "deferred", "bounced", "quarantined")
#: Sender authentication filters offered (issue 21): a part of the log's summary.
AUTH_FILTERS = ("dmarc=fail", "dmarc=pass", "dkim=fail", "spf=fail", "dmarc=temperror")


@router.get("/messages", response_class=HTMLResponse)
def search(page: Reader, sender: Text = None, recipient: Text = None, subject: Text = None,
           since: Annotated[date | None, Query()] = None,
           until: Annotated[date | None, Query()] = None,
           verdict: Text = None, status: Text = None, auth: Text = None,
           p: Annotated[int, Query(ge=0, le=100_000)] = 0) -> HTMLResponse:
    query = MessageQuery(
        sender=sender or None, recipient=recipient or None, subject=subject or None,
        since=_day(since), until=_day(until, 1),
        verdict=verdict if verdict in VERDICTS else None,
        status=status if status in STATUSES else None, tenant=page.actor.tenant,
        auth=auth if auth in AUTH_FILTERS else None, limit=PAGE_SIZE, offset=p * PAGE_SIZE)
    found = page.ctx.stores.messages.search(query)
    filters = {"sender": sender or "", "recipient": recipient or "", "subject": subject or "",
               "since": since.isoformat() if since else "",
               "until": until.isoformat() if until else "",
               "verdict": query.verdict or "", "status": query.status or "",
               "auth": query.auth or ""}
    return page.render("messages.html", found=found, filters=filters, p=p, size=PAGE_SIZE,
                       verdicts=VERDICTS, statuses=STATUSES, auth_filters=AUTH_FILTERS)


def _day(day: date | None, plus: int = 0) -> datetime | None:
    """A calendar day in Japan, as the UTC instant it starts (`plus` days later)."""
    if day is None:
        return None
    from zoneinfo import ZoneInfo

    start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo("Asia/Tokyo"))
    return (start + timedelta(days=plus)).astimezone(UTC)


@router.get("/messages/{queue_id}", response_class=HTMLResponse)
def detail(page: Reader, queue_id: str) -> HTMLResponse:
    record = page.ctx.stores.messages.get(queue_id[:64])
    if record is None or not page.actor.sees(record.tenant):
        raise Refused(404, "error.not_found")
    return page.render("message.html", m=record, report=record.report or {},
                       headers=_held_headers(page, record.queue_id), verdicts=VERDICTS,
                       statuses=STATUSES, copies=_copies(page, record),
                       tenant_names={t.id: t.name for t in page.ctx.settings.tenants})


def _copies(page: Page, record: MessageRecord) -> tuple[MessageRecord, ...]:
    """The other copies of a message split for several tenants, those this user sees."""
    if record.split_of is None:
        return ()
    found = page.ctx.stores.messages.search(MessageQuery(
        split_of=record.split_of, tenant=page.actor.tenant, limit=100))
    return tuple(c for c in found.items if c.queue_id != record.queue_id)


def _held_headers(page: Page, queue_id: str) -> str | None:
    """The original's header block as text, when the quarantine keeps the original (the
    gateway keeps no other original). Shown escaped, never interpreted."""
    raw = page.ctx.stores.quarantine.original(queue_id)
    if raw is None:
        return None
    end = raw.find(b"\n\n") if b"\r\n\r\n" not in raw else raw.find(b"\r\n\r\n")
    head = raw[: end if end >= 0 else MAX_HEADER_TEXT][:MAX_HEADER_TEXT]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")
