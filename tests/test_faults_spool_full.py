"""Faults, with nothing lost (issue 17): the spool's filesystem fills up.

A real `mugaika serve` keeps its spool on a small tmpfs the test mounts. While a filler
file has taken every block, SMTP answers `452 4.3.1` (never a 250 for a message it could
not store, never a 5xx, no traceback); once the space is freed, every message that got a
250 before or after arrives exactly once, and what was refused can be sent again and
arrives. A full disk while the worker spools an output or parks an entry must not lose
it, duplicate it, stall it until a restart, nor make it "poison": it is tried again.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.custody.stores import open_stores
from gateway.metrics import Metrics
from gateway.queue.envelope import Envelope
from gateway.queue.outlets import DeliveryResult
from gateway.queue.spool import Entry, RetryState, Spool, SpoolError
from gateway.queue.worker import Worker
from gateway.settings import Settings
from tests.conftest import Gateway, Sink
from tests.fault_helpers import (
    ScriptedDownstream,
    fill,
    message,
    message_ids,
    small_tmpfs,
    submit,
    wait_until,
    waiting,
)


def _gateway(make_gateway: Callable[..., Gateway], data: Path, port: int, **env: str) -> Gateway:
    return make_gateway(port, data_dir=data, MUGAIKA_PROCESSES="1", **env)


def test_full_spool_answers_452_and_every_250_is_delivered_once(
        make_gateway: Callable[..., Gateway], sink: Sink, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with small_tmpfs(data / "spool", "6m") as spool:
        gw = _gateway(make_gateway, data, sink.port)
        try:
            accepted: list[str] = []
            for n in range(8):  # before: journal (small) and incoming/ (over 1 MiB)
                sub = submit(gw.smtp_port, message(f"before{n}", size=20_000 if n else 1_200_000),
                             f"before{n}")
                assert sub.code == 250, sub
                accepted.append(sub.token)
            sink.wait(len(accepted), timeout=60)
            filler = fill(spool)
            refused = []
            for n in range(8):
                token = f"full{n}"
                size = 1_200_000 if n % 4 == 0 else 20_000
                # What the gateway frees once a delivery is settled would let the next one
                # in: wait for that, and take it too.
                wait_until(lambda: not waiting(spool), 30, "spool settled")
                fill(spool)
                sub = submit(gw.smtp_port, message(token, size=size), token)
                assert (sub.code, sub.reply) == (452, "4.3.1 Insufficient system storage"), sub
                refused.append(token)
            filler.unlink()
            for token in refused:  # the sending MTA tries again, and now it is taken
                size = 1_200_000 if token.endswith(("0", "4")) else 20_000
                sub = submit(gw.smtp_port, message(token, size=size), token)
                assert sub.code == 250, sub
                accepted.append(token)
            for n in range(4):
                sub = submit(gw.smtp_port, message(f"after{n}", size=20_000), f"after{n}")
                assert sub.code == 250, sub
                accepted.append(sub.token)
            sink.wait(len(accepted), timeout=60)
            wait_until(lambda: not waiting(spool), 30, "spool emptied after delivery")
            got = Counter(message_ids([r.data for r in sink.received]))
            print(f"accepted {len(accepted)} (refused while full {len(refused)}, then resent), "
                  f"delivered {sum(got.values())}, distinct {len(got)}")
            assert got == Counter(accepted), "each accepted message delivered exactly once"
            assert not list((spool / "failed").iterdir())
        finally:
            gw.stop()


def test_full_spool_while_the_worker_spools_outputs_loses_and_duplicates_nothing(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """The downstream holds 4 messages, the disk fills, the downstream answers 451: the
    worker must spool each output and park it, and cannot. Once there is room again
    (without a restart) each is delivered exactly once, none poisoned into failed/."""
    data = tmp_path / "data"
    downstream = ScriptedDownstream(plan=lambda _n, _r: "hold").start()
    with small_tmpfs(data / "spool", "6m") as spool:
        gw = _gateway(make_gateway, data, downstream.port)
        try:
            tokens = [f"held{n}" for n in range(4)]
            for token in tokens:
                assert submit(gw.smtp_port, message(token, size=20_000), token).code == 250
            downstream.wait_holding(4, timeout=30)
            filler = fill(spool)
            downstream.release()  # → 451 each: the outputs must go to the full spool
            wait_until(lambda: gw.log_text().count('"park_failed"') >= 4, 30,
                       "the worker met the full spool with each of the 4 outputs")
            downstream.plan = lambda _n, _r: "accept"
            filler.unlink()
            got = downstream.wait_received(4, timeout=60)
            wait_until(lambda: not waiting(spool), 30, "spool emptied after delivery")
            assert Counter(message_ids([a.data for a in got])) == Counter(tokens)
            assert len(downstream.received) == 4, "delivered exactly once"
            assert not list((spool / "failed").iterdir()), "a full disk is no poison"
            assert not list((spool / "tmp").iterdir()), "nothing half-written left behind"
        finally:
            gw.stop()
            downstream.stop()


class _TempfailOnce:
    """A next hop that answers 451 to the first delivery, then accepts (and keeps)."""

    def __init__(self) -> None:
        self.calls = 0
        self.delivered: list[bytes] = []

    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult:
        self.calls += 1
        if self.calls == 1:
            return DeliveryResult(temporary={r: "451 4.3.0 busy" for r in rcpts})
        self.delivered.append(data)
        return DeliveryResult(delivered=tuple(rcpts))

    async def close(self) -> None:
        return None


def test_spool_full_while_parking_a_journaled_mail_keeps_it_claimed_and_tries_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with ENOSPC injected where a full disk strikes first: the output of a
    journaled mail fits in active/, but the copy of its original in hold/ and then in
    deferred/ does not (`SpoolError`), while its state file does. Before the fix the
    SpoolError escaped `_park` and ended the (only) worker task, the mail waited for a
    restart, and its output stayed behind in active/ to be delivered twice after it."""
    settings = Settings(data_dir=tmp_path, retry_first_seconds=0.1, retry_max_seconds=0.2)
    spool, forwarder = Spool(settings.spool_dir), _TempfailOnce()
    full = {"on": True, "refused": 0}
    write_durably = Spool._write_durably

    def refusing(self: Spool, area: str, queue_id: str, buffers: list[bytes],
                 from_journal: bool = False) -> None:
        if full["on"]:
            full["refused"] += 1
            if full["refused"] >= 2:  # once for hold/, once for deferred/: room again
                full["on"] = False
            raise SpoolError("cannot spool message: No space left on device") from OSError(
                errno.ENOSPC, "No space left on device")
        write_durably(self, area, queue_id, buffers, from_journal)

    monkeypatch.setattr(Spool, "_write_durably", refusing)
    worker = Worker(settings, spool, open_stores(settings), forwarder, ThreadPoolExecutor(1),
                    None, Metrics())
    env = Envelope("a@example.com", ("staff@example.lg.jp",), received_at=time.time())

    async def scenario() -> None:
        queue_id = "FULL0001"
        raw = message("journaled", size=2_000)
        await spool.put_fresh(raw, env, queue_id)
        task = asyncio.create_task(worker.run())
        worker.enqueue(queue_id, Entry(queue_id, env, raw, RetryState()))
        try:
            for _ in range(200):
                if forwarder.delivered and not spool.journal.live():
                    break
                assert not task.done(), f"the worker task ended: {task.exception()!r}"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # the settle batch
            worker.close()
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert full["refused"] == 2
    assert [message_ids([d]) for d in forwarder.delivered] == [["journaled"]]
    assert forwarder.calls == 2
    root = spool.root
    leftovers = [p.relative_to(root).as_posix() for area in
                 ("incoming", "active", "deferred", "hold", "failed", "state", "tmp")
                 for p in (root / area).iterdir()]
    assert leftovers == [], "nothing left behind to deliver twice after a restart"
