"""ダッシュボード: what came in over 24 hours and 7 days, the queues, the dependencies."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from gateway.api.context import Check
from gateway.console.web import Page, SignedIn
from gateway.custody.tokens import Permission

router = APIRouter()
#: The figures shown, as keys of `SqlMessageLog.activity`.
FIGURES = ("received", "verdict.clean", "verdict.sanitized", "verdict.quarantined",
           "status.delivered", "status.deferred", "status.bounced")
CHART_HOURS = 24
#: How long the dependency checks' answers are shown again before they are run anew: the
#: converters check starts bubblewrap and ldconfig, 40-50 ms a view (bench console), and
#: a few people keeping the dashboard open would run them all day.
HEALTH_SECONDS = 10.0


@router.get("/", response_class=HTMLResponse)
def dashboard(page: Annotated[Page, Depends(SignedIn(Permission.READ))]) -> HTMLResponse:
    now = datetime.now(UTC)
    log = page.ctx.stores.messages
    tenant = page.actor.tenant
    periods = {"day": log.activity(now - timedelta(hours=24), tenant),
               "week": log.activity(now - timedelta(days=7), tenant)}
    start = (now - timedelta(hours=CHART_HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    series = log.hourly(start, CHART_HOURS, tenant)
    health = _health(page)
    return page.render("dashboard.html", periods=periods, figures=FIGURES,
                       depth=page.ctx.spool.depth(), health=health,
                       chart=_bars(series), peak=max(series), start=start,
                       held=page.ctx.stores.quarantine.stats())


def _health(page: Page) -> dict[str, bool]:
    """The checks' answers, at most HEALTH_SECONDS old (kept per app, on its state; two
    views at once may both run them, which is harmless)."""
    state = page.request.app.state
    cached: tuple[float, dict[str, bool]] | None = getattr(state, "console_health", None)
    now = time.monotonic()
    if cached is None or now - cached[0] > HEALTH_SECONDS:
        checks = {**page.ctx.checks, **getattr(state, "console_checks", {})}
        cached = (now, {name: _safe(check) for name, check in checks.items()})
        state.console_health = cached
    return cached[1]


def _safe(check: Check) -> bool:
    try:
        return check()
    except Exception:  # a failing check is "not ready", never a broken page
        return False


def _bars(series: list[int], height: int = 100, width: int = 12) -> list[dict[str, int]]:
    """Bar geometry for the server-drawn SVG chart (no script, no inline style)."""
    peak = max(series) or 1
    bars = []
    for i, count in enumerate(series):
        h = round(count * height / peak)
        bars.append({"x": i * (width + 2), "y": height - h, "h": h, "w": width, "n": count})
    return bars
