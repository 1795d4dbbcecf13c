"""The journal's promises (gateway/queue/journal.py): a fresh message is on disk when
`put_fresh` returns, many share one fdatasync, and after a crash every message that did
not leave comes back as a spool file, once, with its bytes; a torn tail loses nothing
that was acknowledged."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.queue import journal as journal_module
from gateway.queue.envelope import Envelope
from gateway.queue.spool import RetryState, Spool, SpoolError

ENV = Envelope(mail_from="a@example.com", rcpt_tos=("b@example.lg.jp",), received_at=1.0)


def _raw(n: int) -> bytes:
    return f"Subject: {n}\r\n\r\n".encode() + b"body\r\n" * n


async def _put_many(spool: Spool, count: int) -> list[str]:
    ids = [f"Q{n:04d}" for n in range(count)]
    await asyncio.gather(*(spool.put_fresh(_raw(n), ENV, qid, prefix=b"Received: x\r\n")
                           for n, qid in enumerate(ids)))
    return ids


def test_concurrent_messages_share_fdatasyncs_and_all_come_back_after_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    spool = Spool(tmp_path)
    ids = asyncio.run(_put_many(spool, 50))
    assert 1 <= len(syncs) < 50, "one fdatasync for the messages that arrived together"
    assert spool.depth()["active"] == 50 and list((tmp_path / "incoming").iterdir()) == []

    # The process dies here, holding all 50: a restart finds each one, whole.
    restarted = Spool(tmp_path)
    assert restarted.recover() == 50
    assert restarted.incoming_ids() == ids
    for n, qid in enumerate(ids):
        entry = restarted.claim(qid)
        assert entry is not None and entry.envelope == ENV
        assert entry.data == b"Received: x\r\n" + _raw(n)
    assert list((tmp_path / "journal").iterdir()) == [], "replayed, then cleared"


def test_settled_messages_leave_and_their_segments_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 200)  # a segment per batch or so
    spool = Spool(tmp_path)
    first = asyncio.run(_put_many(spool, 5))
    second = asyncio.run(_put_many(spool, 3))  # same ids are fine: these are new records
    assert second == first[:3]
    for qid in first[3:]:
        spool.done(qid)
    spool.journal.close()
    # Q0000-Q0002 were appended twice and never settled; Q0003, Q0004 were delivered.
    restarted = Spool(tmp_path)
    assert restarted.recover() == 3
    assert restarted.incoming_ids() == first[:3]
    assert [p.name for p in (tmp_path / "journal").iterdir()] == []


def test_every_settled_segment_is_deleted_while_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 100)
    spool = Spool(tmp_path)

    async def traffic() -> None:
        for round_ in range(6):
            ids = [f"R{round_}-{n}" for n in range(4)]
            await asyncio.gather(*(spool.put_fresh(_raw(3), ENV, qid) for qid in ids))
            for qid in ids:
                spool.done(qid)
        await spool.put_fresh(_raw(1), ENV, "LAST")  # carries the last done records

    asyncio.run(traffic())
    spool.journal.close()
    assert len(list((tmp_path / "journal").iterdir())) <= 2, "settled segments are deleted"
    assert Spool(tmp_path).recover() == 1
    assert Spool(tmp_path).incoming_ids() == ["LAST"]


def test_torn_last_record_ends_replay_without_losing_earlier_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = asyncio.run(_put_many(spool, 3))
    asyncio.run(spool.put_fresh(_raw(40), ENV, "TORN"))
    spool.journal.close()
    segment = next((tmp_path / "journal").iterdir())
    os.truncate(segment, segment.stat().st_size - 17)  # power loss before the fdatasync
    restarted = Spool(tmp_path)
    assert restarted.recover() == 3
    assert restarted.incoming_ids() == ids, "the torn message was never acknowledged"


def test_an_original_whose_output_must_wait_gets_a_spool_file_of_its_own(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    asyncio.run(spool.put_fresh(b"Subject: wait\r\n\r\nbody\r\n", ENV, "WAIT"))
    spool.to_hold("WAIT")
    assert not spool.journal.holds("WAIT")
    assert (tmp_path / "hold" / "WAIT").exists()
    spool.journal.close()
    restarted = Spool(tmp_path)
    restarted.recover()  # no output survived: the original is sanitized again, once
    assert restarted.incoming_ids() == ["WAIT"]
    entry = restarted.claim("WAIT")
    assert entry is not None and entry.data == b"Subject: wait\r\n\r\nbody\r\n"


def test_a_restarted_member_counts_a_crash_for_what_its_journal_held(tmp_path: Path) -> None:
    dead, live = Spool(tmp_path, slot=1), Spool(tmp_path, slot=0)
    asyncio.run(dead.put_fresh(_raw(1), ENV, "HELD"))
    asyncio.run(live.put_fresh(_raw(1), ENV, "OTHER"))
    assert Spool(tmp_path, slot=1).recover() == 1
    assert Spool(tmp_path).read_state("HELD").crashes == 1
    assert live.journal.holds("OTHER"), "the live member's journal is not touched"
    assert [p.name for p in (tmp_path / "journal.0").iterdir()] != []


def test_a_failed_sync_answers_an_error_not_an_acknowledgement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    spool = Spool(tmp_path)
    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(SpoolError, match="Input/output error"):
        asyncio.run(spool.put_fresh(_raw(1), ENV, "EIO"))
    monkeypatch.undo()
    asyncio.run(spool.put_fresh(_raw(2), ENV, "OK"))  # a new segment, and it works
    assert spool.journal.holds("OK") and not spool.journal.holds("EIO")


def test_a_journaled_message_parked_after_a_bug_waits_in_deferred(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    asyncio.run(spool.put_fresh(_raw(2), ENV, "PARK"))
    spool.defer("PARK", RetryState(attempts=1, next_try=0.0, last_error="internal error"))
    assert list(spool.due_deferred(1.0)) == ["PARK"]
    entry = spool.claim("PARK")
    assert entry is not None and entry.data == _raw(2) and entry.state.attempts == 1


@pytest.mark.parametrize("slot", [None, 1])
def test_a_copy_cut_short_by_a_crash_does_not_stop_the_restart(
        tmp_path: Path, slot: int | None) -> None:
    """Killed while giving a journaled message its own file (its output had to wait):
    the stale tmp file must not stop recovery, for the whole spool or for one member."""
    spool = Spool(tmp_path, slot=slot)
    asyncio.run(spool.put_fresh(_raw(3), ENV, "CUT"))
    (tmp_path / "tmp" / "CUT").write_bytes(b"MUGAIKA1 {half")
    restarted = Spool(tmp_path, slot=slot)
    assert restarted.recover() == 1
    assert restarted.incoming_ids() == ["CUT"]
    entry = restarted.claim("CUT")
    assert entry is not None and entry.data == _raw(3)
