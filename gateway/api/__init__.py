"""The operator HTTP API: `create_app(settings, stores, spool, metrics) -> FastAPI`.

Built by a factory, never at import time: tests and `mugaika serve` each make their own.
Authentication is on every route except /healthz and /readyz (and /metrics when
`metrics_public`, /docs, /redoc and /openapi.json when `api_docs`); see gateway/api/auth.py
and docs/quarantine-api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from gateway.api import audit, health, links, messages, quarantine
from gateway.api.context import ApiContext, ApiError, ApiSpool, Check
from gateway.api.readiness import converters_check, downstream_check
from gateway.custody.audit import Actor
from gateway.custody.digest import Digest
from gateway.custody.quarantine import (
    BadPassword,
    Conflict,
    Decrypter,
    FourEyes,
    NotFound,
    PasswordLimit,
    PpapUnavailable,
    QuarantineError,
    QuarantineService,
    ReasonRequired,
)
from gateway.custody.stores import SqlStores
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store.common import refused_by_database

log = logging.getLogger(__name__)

_STATUS: Mapping[type[QuarantineError], int] = {
    NotFound: 404, Conflict: 409, FourEyes: 403, BadPassword: 400, PasswordLimit: 429,
    PpapUnavailable: 409, ReasonRequired: 422,
}
#: Who the scheduled purge and digest are in the audit log.
SYSTEM_ACTOR = Actor("system", "admin", "scheduler")
#: How often the server asks whether today's digest is due (a cheap primary-key lookup).
DIGEST_CHECK_SECONDS = 60.0


def create_app(
    settings: Settings,
    stores: SqlStores,
    spool: ApiSpool,
    metrics: Metrics,
    *,
    decrypt: Decrypter | None = None,
    checks: Mapping[str, Check] | None = None,
    purge_in_background: bool = True,
) -> FastAPI:
    """The app. `decrypt` enables PPAP release; `checks` replaces the default readiness
    checks (database, spool, downstream, converters); the purge task runs while the app
    is served (lifespan) every `quarantine_purge_interval_seconds`."""
    service = QuarantineService(stores, spool, settings, decrypt)
    context = ApiContext(settings, stores, spool, metrics, service,
                         checks if checks is not None else default_checks(settings, stores, spool))
    metrics.watch_quarantine(lambda: stores.quarantine.stats().entries,
                             lambda: stores.quarantine.stats().bytes)
    metrics.set_tenants(t.id for t in settings.tenants)
    metrics.watch_tenant_quarantine(lambda: {
        t: (float(s.entries), float(s.bytes))
        for t, s in stores.quarantine.stats_by_tenant().items()})
    metrics.watch_spool(lambda: sum(n for area, n in spool.depth().items() if area != "failed"),
                        lambda: spool.oldest_age(time.time()))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        if purge_in_background:
            tasks.append(asyncio.create_task(_purge_loop(service, settings)))
            if settings.digest_enabled:
                digest = Digest(stores, spool, settings)
                tasks.append(asyncio.create_task(_digest_loop(digest)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # The docs describe every route and answer without a token: off unless asked for.
    docs = settings.api_docs
    app = FastAPI(title="mugaika operator API", version="1", lifespan=lifespan,
                  description="Quarantine review and release, message tracking, audit, metrics.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.context = context
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(QuarantineError, _quarantine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.include_router(health.router)
    app.include_router(health.metrics_router(settings.metrics_public))
    for router in (messages.router, quarantine.router, audit.router, links.router):
        app.include_router(router)
    return app


def default_checks(settings: Settings, stores: SqlStores, spool: ApiSpool) -> dict[str, Check]:
    return {
        "database": stores.ping,
        "spool": spool.writable,
        "downstream": downstream_check(settings),
        "converters": converters_check(settings),
    }


async def _purge_loop(service: QuarantineService, settings: Settings) -> None:
    """Purge expired entries now and then every interval; errors are logged, not fatal.

    Every node with the API runs this loop; the lease row in `task_leases` lets one node
    per interval purge, so that two nodes do not both scan for and delete the same
    entries at once (the loser of each delete waits on the winner's row lock)."""
    node = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            gone = await asyncio.to_thread(service.scheduled_purge, SYSTEM_ACTOR, node)
            if gone:
                log.info("quarantine purge removed %d expired entries", len(gone))
        except Exception:  # a database hiccup must not end the loop
            log.exception("quarantine purge failed")
        await asyncio.sleep(settings.quarantine_purge_interval_seconds)


async def _digest_loop(digest: Digest) -> None:
    """Ask every minute whether today's digest is due. Every node with the API runs this;
    the day's row in `digest_runs`, inserted in the sending transaction, lets one send."""
    while True:
        try:
            outcome = await asyncio.to_thread(digest.send, SYSTEM_ACTOR)
            if outcome.queued is not None:
                log.info("recipient digest for %s: %d mails", outcome.day, len(outcome.queued))
        except Exception:  # a database hiccup must not end the loop: next minute again
            log.exception("recipient digest failed")
        await asyncio.sleep(DIGEST_CHECK_SECONDS)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"code": exc.code, "message": exc.message}, exc.status, headers=headers)


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    """The database away (PostgreSQL restarting, the network to it cut): 503 with
    Retry-After, so that a console or script tries again, instead of a bare 500. Nothing
    was changed: every change and its audit row commit in one transaction."""
    if refused_by_database(exc):
        raise exc
    log.warning("api_database_unavailable: %s", str(exc)[:300])
    return JSONResponse({"code": "database_unavailable",
                         "message": "the database is unavailable; try again shortly"},
                        503, headers={"Retry-After": "5"})


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: renders whatever a client sent."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape without echoing the input: it may be a password, and a lone
    surrogate in it would make the error response itself fail to encode."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"type": str(e.get("type", "")), "loc": [str(x) for x in e.get("loc", ())],
               "msg": str(e.get("msg", ""))} for e in exc.errors()]
    return _AsciiJSON({"detail": detail}, 422)


async def _quarantine_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QuarantineError)
    return JSONResponse({"code": exc.code, "message": exc.message}, _STATUS.get(type(exc), 409))


__all__ = ["SYSTEM_ACTOR", "create_app"]
