"""What every route needs, built once by `create_app` and kept on `app.state`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from gateway.custody.quarantine import QuarantineService, SpoolWriter
from gateway.custody.stores import SqlStores
from gateway.metrics import Metrics
from gateway.queue.envelope import Envelope
from gateway.settings import Settings

#: A readiness check: True when the dependency it names is usable.
Check = Callable[[], bool]


class SpoolStore(Protocol):
    """What the API uses of `gateway.queue.spool.Spool`: writing, readiness, the spool gauges."""

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str: ...

    def writable(self) -> bool: ...

    def depth(self) -> dict[str, int]: ...

    def oldest_age(self, now: float) -> float: ...


class ApiSpool(SpoolStore, SpoolWriter, Protocol):
    """The spool plus `wake` (see gateway.api.serve.NotifyingSpool)."""


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
