"""The operator console under /console/: server-rendered pages on the API's services.

`install(app)` adds the pages, their static files and the security headers to the API's
FastAPI app: same process, same port, same services (see `gateway.console.web` for why
the console is built this way and how it is secured).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import RequestResponseEndpoint

from gateway.api.context import Check, get_context
from gateway.console import admin, audit, auth, overview, preview, quarantine, tracking
from gateway.console.web import HEADERS, PREFIX, Redirect, Refused, anonymous, see_other

STATIC = Path(__file__).with_name("static")


def install(app: FastAPI, health: Mapping[str, Check] | None = None) -> None:
    """`health`: checks shown on the dashboard beside the readiness checks but not part of
    readiness (a LibreOffice that will not start holds Office attachments; mail flows)."""
    app.state.console_checks = dict(health or {})
    for module in (auth, overview, quarantine, preview, tracking, audit, admin):
        app.include_router(module.router, prefix=PREFIX, include_in_schema=False)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(Redirect, _redirect)
    app.add_exception_handler(Refused, _refused)
    app.middleware("http")(_security_headers)


async def _security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    if request.url.path.startswith(PREFIX):
        response.headers.update(HEADERS)
    return response


async def _redirect(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Redirect)
    return see_other(exc.location)


async def _refused(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, Refused)
    page = anonymous(request, get_context(request))
    return page.render("error.html", exc.status, key=exc.key, code=exc.status)
