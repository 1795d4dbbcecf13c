"""The gateway–worker wire format refuses anything malformed or oversized."""

from __future__ import annotations

import io
import struct

import pytest

from converters.base import Conversion, Member, Rendering
from converters.errors import Encrypted, SandboxFailure
from converters.framing import (
    FramingError,
    conversion_from_frame,
    conversion_to_frame,
    error_to_frame,
    policy_from_json,
    policy_to_json,
    read_frame,
    write_frame,
)
from converters.limits import ConversionPolicy, Limits


def _roundtrip(header: dict[str, object], blobs: tuple[bytes, ...] = ()) -> io.BytesIO:
    buf = io.BytesIO()
    write_frame(buf, header, blobs)
    buf.seek(0)
    return buf


def test_conversion_roundtrips_with_binary_blobs() -> None:
    conv = Conversion(outputs=(Rendering("資料.pdf", "application/pdf", b"%PDF\x00\xff"),),
                      members=(Member("dir/a.txt", b"\x00\x01"),), findings=("pdf:AA",),
                      notes=("n",), pages=2, extra={"k": "v"})
    header, blobs = conversion_to_frame(conv)
    back_header, back_blobs = read_frame(_roundtrip(header, blobs), 1 << 20)
    assert conversion_from_frame(back_header, back_blobs) == conv


def test_error_frames_become_the_same_error_class() -> None:
    header, blobs = read_frame(_roundtrip(error_to_frame(Encrypted("pw"))), 0)
    with pytest.raises(Encrypted):
        conversion_from_frame(header, blobs)


def test_policy_roundtrips() -> None:
    policy = ConversionPolicy(limits=Limits(max_pages=7), dpi=100, pdf_output="png")
    assert policy_from_json(policy_to_json(policy)) == policy


@pytest.mark.parametrize("raw", [
    struct.pack(">I", 64 * 1024 * 1024) + b"{}",  # header far too large
    struct.pack(">I", 4) + b"[1]\n",  # not an object
    struct.pack(">I", 5) + b"nope!",  # not JSON
    struct.pack(">I", 16) + b'{"blobs": [-1]}\n',  # negative size
    struct.pack(">I", 19) + b'{"blobs": [999999]}',  # beyond the caller's cap
    struct.pack(">I", 14) + b'{"blobs": [5]}' + b"abc",  # pipe closed mid-blob
])
def test_malformed_frames_are_refused(raw: bytes) -> None:
    with pytest.raises(FramingError):
        read_frame(io.BytesIO(raw), 1000)


def test_answer_with_wrong_blob_count_is_a_sandbox_failure() -> None:
    header = {"ok": True, "outputs": [{"filename": "a", "content_type": "text/plain"}],
              "members": [], "findings": [], "notes": [], "pages": 0, "extra": {}}
    with pytest.raises(SandboxFailure):
        conversion_from_frame(header, [])
