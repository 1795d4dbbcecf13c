"""Sign-in, sign-out and the language switch. Every attempt is audited."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.console.i18n import LANGUAGES
from gateway.console.web import (
    LANG_COOKIE,
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    Page,
    Posted,
    Refused,
    anonymous,
    form_fields,
    login_token,
    safe_next,
    same_origin,
    see_other,
    set_login_cookie,
    set_session_cookie,
)
from gateway.custody.audit import Actor
from gateway.custody.users import Locked

router = APIRouter()
Anonymous = Annotated[Page, Depends(anonymous)]


@router.get("/login", response_class=HTMLResponse)
def login_form(page: Anonymous, next: Annotated[str | None, Query(max_length=500)] = None,
               failed: str | None = None) -> HTMLResponse:
    return _login_page(page, next, failed)


def _login_page(page: Page, target: str | None, failed: str | None,
                status: int = 200) -> HTMLResponse:
    token = login_token()
    error = {"wrong": "login.wrong", "locked": "login.locked"}.get(failed or "")
    response = page.render("login.html", status, login_token=token, next=safe_next(target),
                           error=error)
    set_login_cookie(response, page.request, page.ctx, token)
    return response


@router.post("/login", response_class=HTMLResponse, response_model=None)
async def sign_in(request: Request, page: Anonymous) -> HTMLResponse | RedirectResponse:
    same_origin(request)
    form = await form_fields(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(form.get("login_token", ""), cookie):
        raise Refused(403, "error.csrf")
    name, target = form.get("name", "")[:64], safe_next(form.get("next"))
    remote = request.client.host if request.client else ""
    users, audit = page.ctx.stores.users, page.ctx.stores.audit
    actor = Actor(name or "-", "", remote)
    try:
        session = users.sign_in(name, form.get("password", ""), remote)
    except Locked:
        audit.record(actor, "console.login_locked", name)
        return _login_page(page, target, "locked", 403)
    if session is None:
        audit.record(actor, "console.login_failed", name)
        user = users.get(name)
        if user is not None and user.locked_until is not None:
            audit.record(actor, "console.account_locked", name)
        return _login_page(page, target, "wrong", 401)
    audit.record(Actor(name, session.user.role.value, remote), "console.login", name)
    response = see_other(target)
    set_session_cookie(response, request, page.ctx, session.token)
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
def sign_out(request: Request,
             page: Annotated[Page, Depends(Posted())]) -> RedirectResponse:
    page.ctx.stores.users.sign_out(request.cookies.get(SESSION_COOKIE, ""))
    page.ctx.stores.audit.record(page.actor, "console.logout", page.actor.name)
    response = see_other(f"{PREFIX}/login")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/lang/{code}")
def switch_language(code: str, page: Anonymous,
                    next: Annotated[str | None, Query(max_length=500)] = None
                    ) -> RedirectResponse:
    response = see_other(safe_next(next))
    if code in LANGUAGES:
        response.set_cookie(LANG_COOKIE, code, samesite="strict", path=PREFIX,
                            max_age=365 * 86400, httponly=True)
    return response
