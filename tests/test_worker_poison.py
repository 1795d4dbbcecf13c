"""No poison message: an entry that keeps hitting a bug — while sanitizing, rebuilding,
building its DSN or being moved — ends in failed/ with the reason, an error log line and
a `mugaika_failed_total` count after MAX_INTERNAL_ERRORS tries; never an endless retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.custody.stores import open_stores
from gateway.metrics import Metrics
from gateway.queue import worker as worker_module
from gateway.queue.envelope import Envelope
from gateway.queue.outlets import DeliveryResult
from gateway.queue.spool import Spool
from gateway.queue.worker import MAX_INTERNAL_ERRORS, Worker
from gateway.relay.egress import forwarder_from_settings
from gateway.settings import Settings
from tests.conftest import plain_message


class Refusing:
    """A next hop that refuses every recipient for good: the worker must bounce."""

    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult:
        return DeliveryResult(permanent={r: "550 5.1.1 no such user" for r in rcpts})

    async def close(self) -> None:
        return None


def _raise(*_: Any, **__: Any) -> Any:
    raise RuntimeError("a bug")


def _break_sanitizing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "sanitize_stage", _raise)


def _break_rebuilding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also the notice of the quarantine fallback is rebuilt: both fail."""
    monkeypatch.setattr(worker_module, "rebuild", _raise)


def _break_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "build_dsn", _raise)


def _break_moving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused for good, the output must move into the spool to be quoted in a DSN."""
    monkeypatch.setattr(Spool, "put_derived", _raise)


STEPS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "sanitizing": _break_sanitizing, "rebuilding": _break_rebuilding,
    "building its DSN": _break_dsn, "moving it": _break_moving,
}


async def _until_failed(worker: Worker, spool: Spool, queue_id: str, failed: str) -> None:
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(worker.scheduler())]
    try:
        for _ in range(200):
            if (spool.root / "failed" / failed).exists():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{queue_id} never reached failed/")
    finally:
        for task in tasks:
            task.cancel()


@pytest.mark.parametrize("step", list(STEPS))
def test_a_message_that_keeps_failing_ends_in_failed_with_its_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    settings = Settings(data_dir=tmp_path, retry_first_seconds=0.05, retry_max_seconds=0.1)
    spool, metrics = Spool(settings.spool_dir), Metrics()
    STEPS[step](monkeypatch)
    refused = step in {"building its DSN", "moving it"}
    forwarder = Refusing() if refused else forwarder_from_settings(settings)
    worker = Worker(settings, spool, open_stores(settings), forwarder, ThreadPoolExecutor(1),
                    None, metrics)
    queue_id = spool.put(plain_message("毒"), Envelope("a@example.com", ("staff@example.lg.jp",)))
    # A DSN is built for the sanitized output; the rest fail on the original itself.
    failed = f"{queue_id}.out" if step == "building its DSN" else queue_id
    with capture_logs() as logs:
        asyncio.run(_until_failed(worker, spool, queue_id, failed))
    state = json.loads((spool.root / "state" / f"{failed}.json").read_text())
    assert state["last_error"] == "internal error: RuntimeError"
    assert state["attempts"] == MAX_INTERNAL_ERRORS
    errors = [e for e in logs if e["event"] == "message_failed"]
    assert errors and errors[0]["log_level"] == "error" and errors[0]["queue_id"] == failed
    assert 'mugaika_failed_total{reason="internal_error"} 1.0' in metrics.render().decode()
    for area in ("incoming", "deferred", "hold"):  # nothing waits to be tried again
        assert list((spool.root / area).iterdir()) == [], area
