"""Outputs are spooled without fsync: after a power loss the original in hold/ remakes them.

Each test builds the on-disk state a crash at one point would leave, restarts the spool
(`recover()`), and checks that the message is still going to be delivered exactly from
a whole file: either its whole output, or its original, sanitized again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.queue.envelope import Envelope
from gateway.queue.spool import RetryState, Spool, SpoolError, derived_id

ENV = Envelope(mail_from="a@example.com", rcpt_tos=("b@example.lg.jp",), received_at=1.0)
OUT_ENV = Envelope(mail_from="a@example.com", rcpt_tos=("b@example.lg.jp",), kind="outbound")
ORIGINAL = b"Subject: original\r\n\r\nbody\r\n"
OUTPUT = b"Subject: sanitized\r\n\r\n" + b"clean text\r\n" * 400


def _sanitized(tmp_path: Path) -> tuple[Spool, str, str]:
    """The state after a worker sanitized one message: output spooled, original held."""
    spool = Spool(tmp_path)
    origin = spool.put(ORIGINAL, ENV)
    assert spool.claim(origin) is not None
    out = spool.put_derived(OUTPUT, OUT_ENV, origin)
    spool.to_hold(origin)
    return spool, origin, out.queue_id


def _areas(root: Path) -> dict[str, list[str]]:
    return {area: sorted(p.name for p in (root / area).iterdir())
            for area in ("incoming", "active", "deferred", "hold", "failed")}


def test_output_is_born_claimed_and_survives_a_restart(tmp_path: Path) -> None:
    _, origin, out = _sanitized(tmp_path)
    assert out == derived_id(origin)
    assert _areas(tmp_path)["active"] == [out], "the worker that made it delivers it"
    Spool(tmp_path).recover()  # crash while delivering
    assert _areas(tmp_path)["incoming"] == [out]
    assert _areas(tmp_path)["hold"] == [origin]
    entry = Spool(tmp_path).claim(out)
    assert entry is not None and entry.data == OUTPUT
    assert entry.envelope.extra["origin"] == origin and entry.envelope.kind == "outbound"


@pytest.mark.parametrize("keep", [0, 10, len(OUTPUT) // 2])
def test_torn_output_is_dropped_and_original_sanitized_again(tmp_path: Path, keep: int) -> None:
    _, origin, out = _sanitized(tmp_path)
    path = tmp_path / "active" / out
    blob = path.read_bytes()
    header_end = blob.index(b"\n") + 1
    path.write_bytes(blob[:header_end + keep])  # power loss: the data never all reached disk
    Spool(tmp_path).recover()
    assert _areas(tmp_path)["incoming"] == [origin]
    assert _areas(tmp_path)["hold"] == [] and _areas(tmp_path)["active"] == []
    entry = Spool(tmp_path).claim(origin)
    assert entry is not None and entry.data == ORIGINAL and entry.envelope.kind == "inbound"


def test_torn_output_is_refused_by_claim(tmp_path: Path) -> None:
    _, _origin, out = _sanitized(tmp_path)
    path = tmp_path / "active" / out
    path.write_bytes(path.read_bytes()[:-7])
    path.rename(tmp_path / "incoming" / out)
    with pytest.raises(SpoolError):
        Spool(tmp_path).claim(out)


def test_flipped_byte_in_output_is_detected(tmp_path: Path) -> None:
    _, origin, out = _sanitized(tmp_path)
    path = tmp_path / "active" / out
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    Spool(tmp_path).recover()
    assert _areas(tmp_path)["incoming"] == [origin]


def test_output_that_never_reached_disk_is_remade(tmp_path: Path) -> None:
    _, origin, out = _sanitized(tmp_path)
    (tmp_path / "active" / out).unlink()  # power loss before the rename was written
    assert Spool(tmp_path).recover() == 0
    assert _areas(tmp_path)["incoming"] == [origin]
    assert _areas(tmp_path)["hold"] == []


def test_crash_between_output_and_hold_keeps_one_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    origin = spool.put(ORIGINAL, ENV)
    assert spool.claim(origin) is not None
    out = spool.put_derived(OUTPUT, OUT_ENV, origin).queue_id
    # crash before to_hold: the original and its output are both in active/
    assert Spool(tmp_path).recover() == 2
    assert _areas(tmp_path)["incoming"] == [out], "the whole output is delivered, not remade"
    assert _areas(tmp_path)["hold"] == [origin]


def test_deferred_output_survives_restart_with_its_retry_state(tmp_path: Path) -> None:
    spool, origin, out = _sanitized(tmp_path)
    spool.defer(out, RetryState(attempts=2, next_try=time.time() + 3600))
    Spool(tmp_path).recover()
    assert _areas(tmp_path)["deferred"] == [out]
    assert _areas(tmp_path)["hold"] == [origin]
    assert Spool(tmp_path).read_state(out).attempts == 2


def test_bounced_output_moves_its_original_to_failed_on_restart(tmp_path: Path) -> None:
    spool, origin, out = _sanitized(tmp_path)
    spool.fail(out)  # crash before release_hold(origin, failed=True)
    Spool(tmp_path).recover()
    areas = _areas(tmp_path)
    assert areas["hold"] == [] and areas["incoming"] == []
    assert areas["failed"] == sorted([out, f"{origin}.original"])


def test_delivered_output_then_crash_before_release_duplicates_never_loses(tmp_path: Path) -> None:
    spool, origin, out = _sanitized(tmp_path)
    spool.done(out)  # delivered; crash before release_hold(origin)
    Spool(tmp_path).recover()
    assert _areas(tmp_path)["incoming"] == [origin], "at-least-once: sent again, not lost"
