"""The spool's promises: durable before 250, one claimant per entry, nothing lost on restart."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.envelope import Envelope
from gateway.spool import RetryState, Spool

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
