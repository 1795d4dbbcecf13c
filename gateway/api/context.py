"""What every route needs, built once by `create_app` and kept on `app.state`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from gateway.metrics import Metrics
from gateway.quarantine import QuarantineService, SpoolWriter
from gateway.settings import Settings
from gateway.store import SqlStores

#: A readiness check: True when the dependency it names is usable.
Check = Callable[[], bool]


class ApiSpool(SpoolWriter, Protocol):
    """What the API uses of `gateway.spool.Spool`: release, readiness and the spool gauges."""

    def writable(self) -> bool: ...

    def depth(self) -> dict[str, int]: ...

    def oldest_age(self, now: float) -> float: ...


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    stores: SqlStores
    spool: ApiSpool
    metrics: Metrics
    quarantine: QuarantineService
    checks: Mapping[str, Check]


class ApiError(Exception):
    """An error response with a stable code and a safe message (`Problem` in the schema)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def get_context(request: Request) -> ApiContext:
    context = request.app.state.context
    assert isinstance(context, ApiContext)
    return context
