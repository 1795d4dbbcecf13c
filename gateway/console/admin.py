"""管理: console users and API tokens (admin only). Every change is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.api.context import ApiContext, get_context
from gateway.console.web import PREFIX, Page, Posted, Refused, SignedIn, see_other
from gateway.custody.tokens import Permission, Role, TokenError
from gateway.custody.users import UserError

router = APIRouter()
MESSAGES = ("msg.user_created", "msg.user_changed", "msg.token_revoked", "msg.user_error",
            "msg.token_error")


def _prefecture_admin(page: Page) -> None:
    """Accounts and tokens are the prefecture's: the admin role, with no tenant scope (a
    tenant's admin must not make tokens that see every tenant)."""
    assert page.session is not None
    user = page.session.user
    if user.role is not Role.ADMIN or user.tenant is not None:
        raise Refused(403, "error.forbidden")


class AdminOnly(SignedIn):
    """Accounts and tokens: the admin role only (no permission of the API covers them)."""

    def __call__(self, request: Request,
                 ctx: Annotated[ApiContext, Depends(get_context)]) -> Page:
        page = super().__call__(request, ctx)
        _prefecture_admin(page)
        return page


class AdminPost(Posted):
    async def __call__(self, request: Request,  # type: ignore[override]
                       ctx: Annotated[ApiContext, Depends(get_context)]) -> Page:
        page = await super().__call__(request, ctx)
        _prefecture_admin(page)
        return page


Admin = Annotated[Page, Depends(AdminOnly(Permission.READ))]
Change = Annotated[Page, Depends(AdminPost(Permission.READ))]


@router.get("/admin", response_class=HTMLResponse)
def admin(page: Admin, msg: Annotated[str | None, Query(max_length=40)] = None
          ) -> HTMLResponse:
    return page.render("admin.html", users=page.ctx.stores.users.list(),
                       tokens=page.ctx.stores.tokens.list(), roles=[r.value for r in Role],
                       message=msg if msg in MESSAGES else None, new_token=None)


@router.post("/admin/users")
def create_user(page: Change) -> RedirectResponse:
    form = page.form
    try:
        user = page.ctx.stores.users.create(form.get("name", "")[:64], Role(form.get("role", "")),
                                            form.get("password", ""))
    except (UserError, ValueError):
        return see_other(f"{PREFIX}/admin?msg=msg.user_error")
    page.ctx.stores.audit.record(page.actor, "user.create", user.name, role=user.role.value)
    return see_other(f"{PREFIX}/admin?msg=msg.user_created")


@router.post("/admin/users/{name}/{state}")
def switch_user(name: str, state: str, page: Change) -> RedirectResponse:
    if state not in ("disable", "enable") or name == page.actor.name:
        return see_other(f"{PREFIX}/admin?msg=msg.user_error")
    if page.ctx.stores.users.set_disabled(name, state == "disable"):
        page.ctx.stores.audit.record(page.actor, f"user.{state}", name)
    return see_other(f"{PREFIX}/admin?msg=msg.user_changed")


@router.post("/admin/tokens", response_class=HTMLResponse, response_model=None)
def create_token(page: Change) -> HTMLResponse | RedirectResponse:
    """The new token is shown once, on this page (a POST answered with a page: reloading
    it asks the browser to send the form again, which makes another token, not this one)."""
    try:
        info, token = page.ctx.stores.tokens.create(Role(page.form.get("role", "")),
                                                     page.form.get("name") or None)
    except (TokenError, ValueError):
        return see_other(f"{PREFIX}/admin?msg=msg.token_error")
    page.ctx.stores.audit.record(page.actor, "token.create", info.name, role=info.role.value)
    return page.render("admin.html", users=page.ctx.stores.users.list(),
                       tokens=page.ctx.stores.tokens.list(), roles=[r.value for r in Role],
                       message=None, new_token=(info.name, token))


@router.post("/admin/tokens/{name}/revoke")
def revoke_token(name: str, page: Change) -> RedirectResponse:
    if page.ctx.stores.tokens.revoke(name):
        page.ctx.stores.audit.record(page.actor, "token.revoke", name)
    return see_other(f"{PREFIX}/admin?msg=msg.token_revoked")
