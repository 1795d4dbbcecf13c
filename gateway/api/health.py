"""/healthz, /readyz and /metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from gateway.api.auth import Require
from gateway.api.common import problems
from gateway.api.context import ApiContext, Check, get_context
from gateway.api.models import Health, Readiness
from gateway.custody.audit import Actor
from gateway.custody.tokens import Permission

router = APIRouter(tags=["health"])
Ctx = Annotated[ApiContext, Depends(get_context)]
_METRICS_DOC = {"content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format"}


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Ready to take mail",
            responses={503: {"model": Readiness, "description": "A dependency is not ready"}})
def readyz(ctx: Ctx, response: Response) -> Readiness:
    results = {name: _safe(check) for name, check in ctx.checks.items()}
    ready = all(results.values())
    if not ready:
        response.status_code = 503
    return Readiness(ready=ready, checks=results)


def _safe(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:  # a broken check means "not ready", never a 500
        return False


def _metrics_body(ctx: ApiContext) -> Response:
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)


def metrics_router(public: bool) -> APIRouter:
    """/metrics open to scrapers, or behind a token with the read permission."""
    r = APIRouter(tags=["health"])
    if public:
        @r.get("/metrics", response_class=Response, responses={200: _METRICS_DOC},
               summary="Prometheus metrics")
        def metrics_public(ctx: Ctx) -> Response:
            return _metrics_body(ctx)
    else:
        @r.get("/metrics", response_class=Response,
               responses={200: _METRICS_DOC, **problems()}, summary="Prometheus metrics")
        def metrics_private(
            _actor: Annotated[Actor, Depends(Require(Permission.READ))], ctx: Ctx
        ) -> Response:
            return _metrics_body(ctx)
    return r
