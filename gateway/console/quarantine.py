"""隔離 and 解放申請: the quarantine list, an entry with its actions, the approvers' queue.

Every action goes through `QuarantineService`, the same object the API uses, so four
eyes, PPAP attempt limits and the audit rows are exactly the API's. An action answers
with a redirect back to the entry and a message key (`?msg=`), never a page rendered
after a POST (a reload must not repeat it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.console.preview import delivered_view
from gateway.console.web import PREFIX, Page, Posted, Refused, SignedIn, see_other
from gateway.custody.quarantine import (
    BadPassword,
    Conflict,
    FourEyes,
    NotFound,
    PasswordLimit,
    PpapUnavailable,
    QuarantineError,
)
from gateway.custody.tokens import Permission
from gateway.store.quarantine import RELEASE_REQUESTED, STATUSES
from gateway.store.records import QuarantineQuery

router = APIRouter()
PAGE_SIZE = 50
Reader = Annotated[Page, Depends(SignedIn(Permission.READ))]
Text = Annotated[str | None, Query(max_length=200)]
#: Catalogue keys of the outcome messages a redirect may carry (anything else is ignored).
MESSAGES = ("msg.requested", "msg.released", "msg.approved", "msg.denied", "msg.deleted",
            "msg.not_found", "msg.conflict", "msg.four_eyes", "msg.wrong_password",
            "msg.password_limit", "msg.ppap_unavailable", "msg.reason_required")
_ERRORS: dict[type[QuarantineError], str] = {
    NotFound: "msg.not_found", Conflict: "msg.conflict", FourEyes: "msg.four_eyes",
    BadPassword: "msg.wrong_password", PasswordLimit: "msg.password_limit",
    PpapUnavailable: "msg.ppap_unavailable",
}


@router.get("/quarantine", response_class=HTMLResponse)
def entries(page: Reader, sender: Text = None, recipient: Text = None, subject: Text = None,
            reason: Text = None, status: Text = None,
            p: Annotated[int, Query(ge=0, le=100_000)] = 0) -> HTMLResponse:
    status = status if status in STATUSES else None
    query = QuarantineQuery(sender=sender or None, recipient=recipient or None,
                            subject=subject or None, reason=reason or None, status=status,
                            limit=PAGE_SIZE, offset=p * PAGE_SIZE)
    found = page.ctx.quarantine.search(query, page.actor)
    filters = {"sender": sender or "", "recipient": recipient or "", "subject": subject or "",
               "reason": reason or "", "status": status or ""}
    return page.render("quarantine_list.html", found=found, filters=filters, p=p,
                       statuses=STATUSES, now=datetime.now(UTC), size=PAGE_SIZE)


@router.get("/quarantine/{entry_id}", response_class=HTMLResponse)
def entry(page: Reader, entry_id: str, msg: Text = None) -> HTMLResponse:
    try:
        found = page.ctx.quarantine.show(entry_id, page.actor)
    except NotFound:
        raise Refused(404, "error.not_found") from None
    record = page.ctx.stores.messages.get(entry_id)
    report = record.report if record is not None else None
    delivered = page.ctx.stores.quarantine.delivered(entry_id)
    return page.render("quarantine_entry.html", entry=found, report=report,
                       delivered=delivered_view(delivered) if delivered else None,
                       message=msg if msg in MESSAGES else None, now=datetime.now(UTC),
                       pending=[r for r in found.requests if r.status == "pending"])


@router.get("/quarantine/{entry_id}/original")
def original(entry_id: str,
             page: Annotated[Page, Depends(SignedIn(Permission.DOWNLOAD))]) -> Response:
    """The original as received (audited as a download), never shown inline."""
    try:
        data = page.ctx.quarantine.original(entry_id, page.actor)
    except NotFound:
        raise Refused(404, "error.not_found") from None
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{entry_id}.eml.quarantined"'})


def _back(entry_id: str, key: str) -> RedirectResponse:
    return see_other(f"{PREFIX}/quarantine/{entry_id}?msg={key}")


def _act(entry_id: str, done: str, action: Callable[[], object]) -> RedirectResponse:
    """Run `action`; its refusal becomes the message shown."""
    try:
        action()
    except QuarantineError as exc:
        return _back(entry_id, _ERRORS.get(type(exc), "msg.conflict"))
    return _back(entry_id, done)


@router.post("/quarantine/{entry_id}/request")
def request_release(entry_id: str, page: Annotated[Page, Depends(Posted(Permission.REQUEST))]
                    ) -> RedirectResponse:
    reason = page.form.get("reason", "")[:2000]
    outcome: list[str] = []

    def run() -> None:
        outcome.append(page.ctx.quarantine.request_release(entry_id, page.actor, reason).status)

    answer = _act(entry_id, "msg.requested", run)
    return _back(entry_id, "msg.released") if outcome == ["released"] else answer


@router.post("/quarantine/{entry_id}/approve")
def approve(entry_id: str, page: Annotated[Page, Depends(Posted(Permission.APPROVE))]
            ) -> RedirectResponse:
    reason = page.form.get("reason", "").strip()[:2000] or None
    return _act(entry_id, "msg.approved",
                lambda: page.ctx.quarantine.approve(entry_id, page.actor, reason=reason))


@router.post("/quarantine/{entry_id}/deny")
def deny(entry_id: str, page: Annotated[Page, Depends(Posted(Permission.APPROVE))]
         ) -> RedirectResponse:
    reason = page.form.get("reason", "").strip()[:2000]
    if not reason:
        return _back(entry_id, "msg.reason_required")
    return _act(entry_id, "msg.denied",
                lambda: page.ctx.quarantine.deny(entry_id, page.actor, reason))


@router.post("/quarantine/{entry_id}/password")
def password_release(entry_id: str,
                     page: Annotated[Page, Depends(Posted(Permission.REQUEST))]
                     ) -> RedirectResponse:
    password = page.form.get("password", "")[:1024]
    part = page.form.get("part") or None
    return _act(entry_id, "msg.released", lambda: page.ctx.quarantine.release_with_password(
        entry_id, page.actor, password, part))


@router.post("/quarantine/{entry_id}/delete")
def delete(entry_id: str, page: Annotated[Page, Depends(Posted(Permission.DELETE))]
           ) -> RedirectResponse:
    try:
        page.ctx.quarantine.delete(entry_id, page.actor)
    except QuarantineError as exc:
        return _back(entry_id, _ERRORS.get(type(exc), "msg.conflict"))
    return see_other(f"{PREFIX}/quarantine?msg=msg.deleted")


@router.get("/requests", response_class=HTMLResponse)
def pending_requests(page: Reader) -> HTMLResponse:
    """Entries waiting for an approver, the oldest first."""
    found = page.ctx.quarantine.search(QuarantineQuery(status=RELEASE_REQUESTED, limit=500),
                                       page.actor)
    waiting = sorted(page.ctx.stores.quarantine.with_pending_requests(found.items),
                     key=lambda e: min((r.requested_at for r in e.requests),
                                       default=e.created_at))
    return page.render("requests.html", waiting=waiting, total=found.total)
