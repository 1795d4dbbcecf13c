"""/release/{id}: the recipient's link from the notice (see gateway/pipeline/release_links.py).

Authenticated by the link's signature instead of a token. GET shows a confirmation page
and changes nothing; POST files a release request that an approver must approve, even
when `release_requires_approval` is off.
"""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse

from gateway.api.context import ApiContext, ApiError, get_context
from gateway.api.models import EntryId
from gateway.custody.audit import Actor
from gateway.custody.quarantine import Conflict, NotFound
from gateway.pipeline.notice import load_templates
from gateway.pipeline.release_links import LINK_ACTOR, LINK_ROLE, link_is_valid
from gateway.store.records import QuarantineEntry

router = APIRouter(prefix="/release", tags=["recipient"])
Ctx = Annotated[ApiContext, Depends(get_context)]
Id = Annotated[EntryId, Path(description="The quarantine id")]
_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
_PAGE = """<!doctype html><html lang="ja"><meta charset="utf-8">
<meta name="robots" content="noindex"><title>mugaika</title>
<body style="font-family:sans-serif;max-width:40em;margin:2em auto">{body}</body></html>"""
_GONE = "この隔離メールは保管期間を過ぎたか、削除されました。"
#: What the page says instead of the button when the entry is not `held`.
_STATE = {
    "release_requested": "このメールはすでに受け取りが申請されています。承認されると原本が届きます。",
    "released": "このメールの原本はすでに配信されました。",
    "denied": ("このメールの受け取り申請は却下されました（理由はメールでお知らせしています）。"
               "必要な場合は担当部署へお問い合わせください。"),
}


class RecipientLink:
    """Dependency: a signed, unexpired link for this entry (401 otherwise)."""

    def __call__(
        self,
        request: Request,
        ctx: Ctx,
        entry_id: Id,
        e: Annotated[int | None, Query(ge=0, le=2**40, description="Expiry (epoch)")] = None,
        s: Annotated[str | None, Query(max_length=128, description="Signature")] = None,
    ) -> Actor:
        if e is None or s is None or not link_is_valid(ctx.settings, entry_id, e, s):
            raise ApiError(401, "unauthenticated", "invalid or expired link")
        return Actor(LINK_ACTOR, LINK_ROLE, request.client.host if request.client else "")


Link = Annotated[Actor, Depends(RecipientLink())]


@router.get("/{entry_id}", response_class=HTMLResponse, summary="Confirm a release request",
            responses={200: _HTML, 401: {"description": "Invalid or expired link"}})
def confirm_page(_actor: Link, ctx: Ctx, entry_id: Id, request: Request) -> HTMLResponse:
    try:
        entry = ctx.quarantine.show(entry_id)
    except NotFound:
        return _page(_GONE, 404)
    subject = html.escape(entry.subject or "(件名なし)")
    about = f"<p>{_why(ctx, entry)}</p><p>件名「{subject}」（{entry.created_at:%Y-%m-%d %H:%M} UTC 受信）"
    if entry.status in _STATE:  # a recipient coming back to the link sees where it stands
        return _page(f"{about}</p><p>{_STATE[entry.status]}</p>")
    action = html.escape(str(request.url))
    return _page(
        f"{about}の原本の受け取りを申請しますか？ 承認者が確認した後に届きます。</p>"
        f'<form method="post" action="{action}"><button>申請する / Request</button></form>'
    )


@router.post("/{entry_id}", response_class=HTMLResponse, summary="File a release request",
             responses={200: _HTML, 401: {"description": "Invalid or expired link"},
                        404: _HTML, 409: _HTML})
def request_by_link(actor: Link, ctx: Ctx, entry_id: Id) -> HTMLResponse:
    try:
        ctx.quarantine.request_release(entry_id, actor, "requested by a recipient (notice link)",
                                       force_approval=True)
    except NotFound:
        return _page(_GONE, 404)
    except Conflict:
        status = ctx.quarantine.show(entry_id).status
        return _page(_STATE.get(status, "このメールはすでに申請済みか、配信済みです。"), 409)
    return _page("申請を受け付けました。承認または却下の結果はメールでお知らせします。")


def _why(ctx: ApiContext, entry: QuarantineEntry) -> str:
    """What was held and why, in the notice's own words (escaped HTML)."""
    wording = load_templates(ctx.settings)
    reasons = "、".join(wording.reason(code, code) for code in entry.reasons) or "-"
    lines = [f"隔離の理由: {reasons}"]
    if entry.parts:
        held = "、".join(p.filename or p.part for p in entry.parts)
        lines.insert(0, f"保管している添付ファイル: {held}")
    return "<br>".join(html.escape(line) for line in lines)


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(body=body), status_code=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
