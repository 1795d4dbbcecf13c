"""Compression bombs fail fast, with bounded memory, with the `bomb` reason code."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from converters import errors
from converters.archive import ArchiveConverter
from converters.limits import ConversionPolicy, Limits
from tests.archive_helpers import RawEntry, build_zip, overlapping_bomb, zeros_deflated

POLICY = ConversionPolicy()
CONVERT = ArchiveConverter()
MiB = 1024 * 1024


def _convert_measured(
    data: bytes, policy: ConversionPolicy = POLICY
) -> tuple[Exception, float, int]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        CONVERT.convert(data, "bomb.zip", policy)
    except errors.ConversionError as exc:
        caught: Exception = exc
    else:
        pytest.fail("the bomb was unpacked")
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return caught, elapsed, peak


def test_classic_zip_bomb_stops_at_the_ratio_cap_within_seconds() -> None:
    """1 GiB of zeros in a ~1 MiB zip: refused long before it is unpacked."""
    data = build_zip([RawEntry(b"zeros.bin", method=8, packed=zeros_deflated(1024 * MiB))])
    assert len(data) < 2 * MiB
    exc, elapsed, peak = _convert_measured(data)
    assert isinstance(exc, errors.Bomb)
    assert elapsed < 5
    assert peak < 160 * MiB  # ratio 100 x ~1 MiB packed, plus one chunk


def test_total_size_cap_applies_when_the_ratio_is_modest() -> None:
    policy = ConversionPolicy(limits=Limits(archive_max_total_bytes=4 * MiB))
    data = build_zip([RawEntry(f"{i}.bin".encode(), bytes(range(256)) * 4096) for i in range(5)])
    exc, _, _ = _convert_measured(data, policy)
    assert isinstance(exc, errors.Bomb)


def test_overlapping_entry_bomb_is_refused_before_decompressing_anything() -> None:
    """Fifield's "better zip bomb" shape: 200 entries share one 16 MiB kernel (3.2 GB)."""
    data = overlapping_bomb(16 * MiB, 200)
    exc, elapsed, peak = _convert_measured(data)
    assert isinstance(exc, errors.Bomb)
    assert exc.detail == "overlapping zip entries"
    assert elapsed < 2
    assert peak < 16 * MiB


def test_too_many_members_is_a_limit_not_a_bomb() -> None:
    policy = ConversionPolicy(limits=Limits(archive_max_members=10))
    data = build_zip([RawEntry(f"{i}.txt".encode(), b"x") for i in range(11)])
    with pytest.raises(errors.LimitExceeded) as exc:
        CONVERT.convert(data, "a.zip", policy)
    assert not isinstance(exc.value, errors.Bomb)


def test_gzip_bomb_stops_too() -> None:
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MiB)
    data = b"".join(c.compress(block) for _ in range(512)) + c.flush()
    assert data[:2] == b"\x1f\x8b" and len(data) < MiB
    exc, elapsed, peak = _convert_measured(data)
    assert isinstance(exc, errors.Bomb)
    assert elapsed < 5 and peak < 160 * MiB
