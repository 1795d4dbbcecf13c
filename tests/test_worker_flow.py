"""Flow control between ingress and the worker (Postfix's in_flow_delay): while the
queue is full, a session waits for room before its message is journaled, and after
IN_FLOW_DELAY_SECONDS it goes on the slow way (a spool file in incoming/)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.custody.stores import open_stores
from gateway.metrics import Metrics
from gateway.queue import worker as worker_module
from gateway.queue.spool import Spool
from gateway.queue.worker import FRESH_QUEUE_LIMIT, Worker
from gateway.relay.egress import forwarder_from_settings
from gateway.settings import Settings


def _worker(tmp_path: Path) -> Worker:
    settings = Settings(data_dir=tmp_path)
    return Worker(settings, Spool(settings.spool_dir), open_stores(settings),
                  forwarder_from_settings(settings), ThreadPoolExecutor(1), None, Metrics())


def _fill(worker: Worker) -> None:
    for n in range(FRESH_QUEUE_LIMIT):  # ids with no spool file: each is taken, then skipped
        worker.enqueue(f"GONE{n}")


def test_a_session_waits_for_room_and_goes_on_once_the_worker_takes_mail(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = _worker(tmp_path)
        assert await worker.room_for_fresh(), "room at once while the queue is short"
        _fill(worker)
        waiting = asyncio.create_task(worker.room_for_fresh())
        await asyncio.sleep(0.1)
        assert not waiting.done(), "a full queue holds the session back"
        running = asyncio.create_task(worker.run())
        assert await asyncio.wait_for(waiting, 5) is True
        running.cancel()

    asyncio.run(scenario())


def test_a_session_stops_waiting_after_the_in_flow_delay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "IN_FLOW_DELAY_SECONDS", 0.2)

    async def scenario() -> float:
        worker = _worker(tmp_path)
        _fill(worker)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await worker.room_for_fresh() is False, "then the slow way: incoming/"
        return loop.time() - started

    assert 0.15 <= asyncio.run(scenario()) < 2.0
