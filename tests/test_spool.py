"""The spool's promises: durable before 250, one claimant per entry, nothing lost on restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gateway.queue.envelope import Envelope
from gateway.queue.spool import RetryState, Spool

ENV = Envelope(mail_from="a@example.com", rcpt_tos=("b@example.lg.jp",), received_at=1.0)


def test_put_then_claim_returns_same_bytes_and_envelope(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.put(b"Subject: x\r\n\r\nbody\r\n", ENV)
    entry = spool.claim(qid)
    assert entry is not None
    assert entry.data == b"Subject: x\r\n\r\nbody\r\n" and entry.envelope == ENV
    assert spool.claim(qid) is None, "a second worker must not get the same entry"


def test_restart_recovers_claimed_and_drops_unacknowledged_partials(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.put(b"x", ENV)
    assert spool.claim(qid) is not None
    (tmp_path / "tmp" / "half-written").write_bytes(b"never acknowledged")
    restarted = Spool(tmp_path)
    assert restarted.recover() == 1
    assert restarted.incoming_ids() == [qid]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_deferred_entry_comes_back_when_due(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    qid = spool.put(b"x", ENV)
    assert spool.claim(qid) is not None
    spool.defer(qid, RetryState(attempts=1, next_try=time.time() + 3600, pending=["b@example.lg.jp"]))
    assert list(spool.due_deferred(time.time())) == []
    assert list(spool.due_deferred(time.time() + 3601)) == [qid]
    entry = spool.claim(qid)
    assert entry is not None and entry.state.attempts == 1
    assert entry.state.pending == ["b@example.lg.jp"]


def test_queue_ids_are_unique_and_time_ordered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = [spool.put(b"x", ENV) for _ in range(200)]
    assert len(set(ids)) == 200
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_directory_fsyncs_are_shared_and_each_covers_its_callers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 threads each need a durable rename: they share fsyncs, and each returns only
    after an fsync that started after it asked (so it covered its rename)."""
    from gateway.queue import spool as spool_module

    runs: list[tuple[float, float]] = []

    def slow_fsync(path: Path) -> None:
        started = time.monotonic()
        time.sleep(0.01)  # an ext4 journal commit
        runs.append((started, time.monotonic()))

    monkeypatch.setattr(spool_module, "fsync_dir", slow_fsync)
    shared = spool_module._SharedDirSync(tmp_path)
    calls: list[tuple[float, float]] = []

    def caller() -> None:
        asked = time.monotonic()
        shared.sync()
        calls.append((asked, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 16
    assert len(runs) < 8, f"{len(runs)} fsyncs for 16 callers: not shared"
    for asked, returned in calls:
        assert any(asked <= start and end <= returned for start, end in runs)


def test_a_failed_directory_fsync_counts_for_nobody(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.queue import spool as spool_module

    attempts: list[int] = []

    def failing_once(path: Path) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module, "fsync_dir", failing_once)
    shared = spool_module._SharedDirSync(tmp_path)
    with pytest.raises(OSError):
        shared.sync()
    shared.sync()
    assert len(attempts) == 2


def test_put_writes_prefix_and_body_whole_when_the_kernel_takes_them_in_pieces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_writev, real_write = os.writev, os.write
    monkeypatch.setattr(os, "writev", lambda fd, bufs: real_writev(fd, [bytes(bufs[0])[:7]]))
    monkeypatch.setattr(os, "write", lambda fd, buf: real_write(fd, bytes(buf)[:5]))
    spool = Spool(tmp_path)
    qid = spool.put(b"Subject: x\r\n\r\nbody\r\n", ENV, prefix=b"Received: by us\r\n")
    entry = spool.claim(qid)
    assert entry is not None
    assert entry.data == b"Received: by us\r\nSubject: x\r\n\r\nbody\r\n"
