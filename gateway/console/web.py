"""What every console page shares: the session, CSRF, language, rendering, headers.

Why server-rendered pages (Jinja2, a little progressive JavaScript) and no single-page
app: nothing to build in `make setup`, every asset ships in the package (no CDN: the LGWAN
side has no Internet), the pages work with JavaScript off, and the API's own service
objects are called directly, so the console can do nothing the API could not.

Security, in one place:
- the session cookie is `HttpOnly`, `SameSite=Strict`, `Path=/console`, and `Secure`
  over HTTPS (`console_secure_cookies`); its value is a 256-bit random token whose hash is
  the session row (`gateway.custody.users`);
- every state change is a POST carrying the session's CSRF token (the sign-in form a
  double-submit token of its own), and a POST whose Origin is another site is refused;
- every page is sent with a Content-Security-Policy without inline script or style,
  `X-Frame-Options: DENY`, `nosniff`, `no-store` and `same-origin` referrers.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from gateway.api.context import ApiContext, get_context
from gateway.console.i18n import LANGUAGES, Translate, choose_language, translator
from gateway.custody.audit import Actor
from gateway.custody.tokens import Permission
from gateway.custody.users import Session
from gateway.pipeline.notice import NoticeTemplates, load_templates
from gateway.settings import Settings

PREFIX = "/console"
SESSION_COOKIE = "mugaika_session"
LOGIN_COOKIE = "mugaika_login"
LANG_COOKIE = "mugaika_lang"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class Redirect(Exception):
    """Answer with a 303 to `location` (after a POST, or to the sign-in page)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Refused(Exception):
    """Answer with an error page: `status` and a catalogue key saying why."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status = status
        self.key = key


@dataclass
class Page:
    """A request as a page handler sees it."""

    request: Request
    ctx: ApiContext
    lang: str
    t: Translate
    session: Session | None = None
    #: The fields of a POSTed form (after its CSRF token was checked).
    form: dict[str, str] = field(default_factory=dict)

    @property
    def actor(self) -> Actor:
        assert self.session is not None
        host = self.request.client.host if self.request.client else ""
        user = self.session.user
        return Actor(user.name, user.role.value, host, user.tenant)

    def reason(self, code: str, fallback: str = "") -> str:
        """A reason code in words, from the notices' wording in this page's language (one
        vocabulary for the recipient's notice and the operator's screen)."""
        wording = _wording(self.lang, self.ctx.settings.templates_dir)
        return wording.reason(code, fallback or code)

    def allows(self, permission: Permission) -> bool:
        return self.session is not None and self.session.user.allows(permission)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = _env.get_template(template).render(
            page=self, t=self.t, lang=self.lang, languages=LANGUAGES, P=Permission,
            prefix=PREFIX, fmt_time=fmt_time, here=quote(self.request.url.path), **values)
        return HTMLResponse(html, status)


@cache
def _wording(lang: str, templates_dir: Path | None) -> NoticeTemplates:
    language: Literal["ja", "en"] = "en" if lang == "en" else "ja"
    return load_templates(Settings(language=language, templates_dir=templates_dir))


def fmt_time(value: datetime | None) -> str:
    """UTC shown as JST, the time every municipality works in."""
    if value is None:
        return "-"
    from zoneinfo import ZoneInfo

    return value.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M")


def _page(request: Request, ctx: ApiContext) -> Page:
    lang = choose_language(request.cookies.get(LANG_COOKIE),
                           request.headers.get("accept-language"))
    return Page(request, ctx, lang, translator(lang))


def anonymous(request: Request, ctx: Annotated[ApiContext, Depends(get_context)]) -> Page:
    return _page(request, ctx)


class SignedIn:
    """Dependency: a live session (else to the sign-in page) allowed `permission`."""

    def __init__(self, permission: Permission = Permission.READ) -> None:
        self.permission = permission

    def __call__(self, request: Request,
                 ctx: Annotated[ApiContext, Depends(get_context)]) -> Page:
        page = _page(request, ctx)
        session = ctx.stores.users.resume(request.cookies.get(SESSION_COOKIE, ""))
        if session is None:
            raise Redirect(f"{PREFIX}/login?next={quote(request.url.path)}")
        page.session = session
        if not session.user.allows(self.permission):
            raise Refused(403, "error.forbidden")
        return page


class Posted(SignedIn):
    """`SignedIn` for a state change: same-origin, and the form's CSRF token matches."""

    async def __call__(self, request: Request,  # type: ignore[override]
                       ctx: Annotated[ApiContext, Depends(get_context)]) -> Page:
        page = SignedIn.__call__(self, request, ctx)
        same_origin(request)
        page.form = await form_fields(request)
        assert page.session is not None
        if not hmac.compare_digest(page.form.get("csrf", ""), page.session.csrf_token):
            raise Refused(403, "error.csrf")
        return page


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of a url-encoded or multipart form (files are never accepted)."""
    form = await request.form(max_files=0, max_fields=50)
    return {k: v for k, v in form.items() if isinstance(v, str)}


def same_origin(request: Request) -> None:
    """A POST from another site's page is refused (SameSite=Strict already keeps the
    cookie off it; this also covers the sign-in form, which has no session yet)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Refused(403, "error.csrf")


def safe_next(target: str | None) -> str:
    """Only a path inside the console: never an open redirect."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") \
            and "\\" not in target and "//" not in target:
        return target
    return PREFIX + "/"


def secure_cookies(request: Request, ctx: ApiContext) -> bool:
    mode = ctx.settings.console_secure_cookies
    if mode != "auto":
        return mode == "always"
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.lower() == "https"


def set_session_cookie(response: Response, request: Request, ctx: ApiContext,
                       token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        secure=secure_cookies(request, ctx), path=PREFIX,
                        max_age=int(ctx.settings.console_session_hours * 3600))


def login_token() -> str:
    return secrets.token_urlsafe(24)


def set_login_cookie(response: Response, request: Request, ctx: ApiContext,
                     token: str) -> None:
    """The sign-in form's double-submit token: in the form and in this cookie alike."""
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=secure_cookies(request, ctx), path=PREFIX, max_age=3600)


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)
