"""Run the operator API inside `mugaika serve`'s event loop, stopping with the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from gateway.api.context import SpoolStore
from gateway.queue.envelope import Envelope
from gateway.settings import Settings

#: Longest wait for in-flight API requests when the gateway stops.
SHUTDOWN_SECONDS = 10.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(app: FastAPI, settings: Settings, stop: asyncio.Event) -> None:
    """Serve `app` on api_host:api_port until `stop` is set, then shut down gracefully."""
    config = uvicorn.Config(app, host=settings.api_host, port=settings.api_port,
                            lifespan="on", access_log=False, log_level="warning",
                            server_header=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="api")
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when the gateway cancels this task at shutdown: let uvicorn finish its
        # requests and the app's lifespan (the purge task) instead of dying mid-way.
        server.should_exit = True
        stopper.cancel()
        await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_SECONDS)


class NotifyingSpool:
    """The spool as the API sees it: `wake` hands a committed release to the worker.

    API handlers run in worker threads; `notify` is called through the loop so it may
    touch asyncio objects (the worker's queue) safely.
    """

    def __init__(self, spool: SpoolStore, loop: asyncio.AbstractEventLoop,
                 notify: Callable[[str], None]) -> None:
        self._spool = spool
        self._loop = loop
        self._notify = notify

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str:
        return self._spool.put(raw, envelope, queue_id)

    def wake(self, queue_id: str) -> None:
        self._loop.call_soon_threadsafe(self._notify, queue_id)

    def writable(self) -> bool:
        return self._spool.writable()

    def depth(self) -> dict[str, int]:
        return self._spool.depth()

    def oldest_age(self, now: float) -> float:
        return self._spool.oldest_age(now)
