"""The wire format between the gateway and a sandboxed converter worker.

A frame is a 4-byte big-endian length and a UTF-8 JSON header, followed by the binary
blobs the header announces (`"blobs": [n1, n2, ...]`), each sent raw after the header.
Never pickle: the worker is untrusted once it has touched an attachment, so the parent
only ever parses JSON and counts bytes it has bounded in advance.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from typing import IO, Any, Protocol

from converters.base import Conversion, Member, Rendering
from converters.errors import ConversionError, SandboxFailure, from_code
from converters.limits import ConversionPolicy, Limits

_LEN = struct.Struct(">I")
#: A header is a few hundred bytes of names and notes; anything larger is a broken worker.
MAX_HEADER_BYTES = 4 * 1024 * 1024


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class FramingError(Exception):
    """The peer sent something that is not a well-formed frame (or closed the pipe)."""


def write_frame(out: IO[bytes], header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
    """Write one frame and flush it."""
    header = {**header, "blobs": [len(b) for b in blobs]}
    raw = json.dumps(header, ensure_ascii=False).encode("utf-8")
    out.write(_LEN.pack(len(raw)) + raw)
    for blob in blobs:
        out.write(blob)
    out.flush()


def _read_exact(inp: Readable, n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = inp.read(remaining)
        if not chunk:
            raise FramingError("pipe closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(inp: Readable, max_blob_bytes: int) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame; refuse headers or blobs larger than the caller's bounds."""
    first = inp.read(_LEN.size)
    if not first:
        raise EOFError
    if len(first) < _LEN.size:
        first += _read_exact(inp, _LEN.size - len(first))
    (untrusted_len,) = _LEN.unpack(first)
    if untrusted_len > MAX_HEADER_BYTES:
        raise FramingError("header too large")
    try:
        header = json.loads(_read_exact(inp, untrusted_len))
    except ValueError as exc:
        raise FramingError("header is not JSON") from exc
    if not isinstance(header, dict):
        raise FramingError("header is not an object")
    untrusted_sizes = header.get("blobs", [])
    if not isinstance(untrusted_sizes, list) or not all(
        isinstance(n, int) and n >= 0 for n in untrusted_sizes
    ):
        raise FramingError("bad blob sizes")
    if sum(untrusted_sizes) > max_blob_bytes:
        raise FramingError("blobs exceed the output cap")
    return header, [_read_exact(inp, n) for n in untrusted_sizes]


# --- values <-> frames -----------------------------------------------------------------

def policy_to_json(policy: ConversionPolicy) -> dict[str, Any]:
    return asdict(policy)


def policy_from_json(data: dict[str, Any]) -> ConversionPolicy:
    fields = dict(data)
    limits = Limits(**fields.pop("limits"))
    return ConversionPolicy(limits=limits, **fields)


def conversion_to_frame(conv: Conversion) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    header: dict[str, Any] = {
        "ok": True,
        "outputs": [{"filename": r.filename, "content_type": r.content_type} for r in conv.outputs],
        "members": [{"path": m.path} for m in conv.members],
        "findings": list(conv.findings),
        "notes": list(conv.notes),
        "pages": conv.pages,
        "extra": conv.extra,
    }
    blobs = tuple(r.data for r in conv.outputs) + tuple(m.data for m in conv.members)
    return header, blobs


def error_to_frame(err: ConversionError) -> dict[str, Any]:
    return {"ok": False, "code": err.code, "detail": err.detail[:500]}


def conversion_from_frame(header: dict[str, Any], blobs: list[bytes]) -> Conversion:
    """Rebuild the worker's answer, or raise the error it reported (by code only)."""
    if not header.get("ok"):
        raise from_code(str(header.get("code", "")), str(header.get("detail", ""))[:500])
    try:
        outputs = header["outputs"]
        members = header["members"]
        if len(outputs) + len(members) != len(blobs):
            raise SandboxFailure("blob count mismatch")
        renderings = tuple(
            Rendering(str(o["filename"]), str(o["content_type"]), blob)
            for o, blob in zip(outputs, blobs, strict=False)
        )
        found = tuple(
            Member(str(m["path"]), blob)
            for m, blob in zip(members, blobs[len(outputs):], strict=True)
        )
        return Conversion(
            outputs=renderings,
            members=found,
            findings=tuple(str(f) for f in header["findings"]),
            notes=tuple(str(n) for n in header["notes"]),
            pages=int(header["pages"]),
            extra={str(k): str(v) for k, v in dict(header["extra"]).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SandboxFailure("malformed answer from the converter") from exc
