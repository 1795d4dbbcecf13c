"""The wire format between the gateway and a sandboxed converter worker.

A frame is a 4-byte big-endian length and a UTF-8 JSON header, followed by the binary
blobs the header announces (`"blobs": [n1, n2, ...]`), each sent raw after the header.
Never pickle: the worker is untrusted once it has touched an attachment, so the parent
only ever parses JSON and counts bytes it has bounded in advance.

A conversion's answer is one frame per page or picture (`{"pixels": {...}}` and its raw
pixels, so that the gateway can encode each as it arrives instead of holding them all),
then one frame with the rest: text, members, findings, notes, or the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import struct
from collections.abc import Callable
from dataclasses import asdict
from typing import IO, Any, Protocol

from converters.base import Conversion, Member, Rendering
from converters.errors import ConversionError, SandboxFailure, from_code
from converters.limits import ConversionPolicy, Limits, OcrPolicy
from converters.pixels import Pixels, checked, describe, max_bytes

_LEN = struct.Struct(">I")
#: A header is a few hundred bytes of names and notes; anything larger is a broken worker.
MAX_HEADER_BYTES = 4 * 1024 * 1024


#: Raw pages are megabytes: a 1 MiB pipe (Linux's unprivileged maximum) instead of 64 KiB
#: passes one in a few writes rather than a hundred context switches.
PIPE_BYTES = 1 << 20


def widen_pipe(fd: int) -> None:
    """Give the pipe at `fd` PIPE_BYTES of buffer where the kernel allows it."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class FramingError(Exception):
    """The peer sent something that is not a well-formed frame (or closed the pipe)."""


class FrameTooLarge(FramingError):
    """A well-formed frame beyond the reader's bounds."""


def write_frame(out: IO[bytes], header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
    """Write one frame and flush it."""
    out.write(encode_header(header, [len(b) for b in blobs]))
    for blob in blobs:
        out.write(blob)
    out.flush()


def read_exact(inp: Readable, n: int) -> bytes:
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
    header, sizes = read_header(inp, max_blob_bytes)
    return header, [read_exact(inp, n) for n in sizes]


def read_header(inp: Readable, max_blob_bytes: int) -> tuple[dict[str, Any], list[int]]:
    """A frame's header and the sizes of the blobs that follow it (not read yet)."""
    first = inp.read(_LEN.size)
    if not first:
        raise EOFError
    if len(first) < _LEN.size:
        first += read_exact(inp, _LEN.size - len(first))
    (untrusted_len,) = _LEN.unpack(first)
    if untrusted_len > MAX_HEADER_BYTES:
        raise FrameTooLarge("header too large")
    try:
        header = json.loads(read_exact(inp, untrusted_len))
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
        raise FrameTooLarge("blobs exceed the output cap")
    return header, untrusted_sizes


def encode_header(header: dict[str, Any], sizes: list[int]) -> bytes:
    """The bytes of a frame up to its blobs (`write_frame` without them)."""
    raw = json.dumps({**header, "blobs": sizes}, ensure_ascii=False).encode("utf-8")
    return _LEN.pack(len(raw)) + raw


# --- values <-> frames -----------------------------------------------------------------

def policy_to_json(policy: ConversionPolicy) -> dict[str, Any]:
    return asdict(policy)


def policy_from_json(data: dict[str, Any]) -> ConversionPolicy:
    fields = dict(data)
    limits = Limits(**fields.pop("limits"))
    return ConversionPolicy(limits=limits, ocr=OcrPolicy(**fields.pop("ocr")), **fields)


Frame = tuple[dict[str, Any], tuple[bytes, ...]]


def pixels_frame(pixels: Pixels) -> Frame:
    """One image of an answer (the rest follows in `conversion_to_frame`)."""
    return {"pixels": describe(pixels)}, (pixels.data, pixels.text.encode("utf-8"))


def frame_bound(limits: Limits) -> int:
    """The most blob bytes one frame of an answer may announce: a page, or the rest."""
    return max(max_bytes(limits), limits.max_output_bytes)


def read_conversion(inp: Readable, policy: ConversionPolicy,
                    on_image: Callable[[Pixels], None] | None = None) -> Conversion:
    """Read one answer; each image is checked (`converters.pixels.checked`) and handed to
    `on_image` as it arrives, or kept in the `Conversion` without one."""
    images: list[Pixels] = []
    for _ in range(policy.limits.max_pages + 1):
        header, blobs = read_frame(inp, frame_bound(policy.limits))
        if "pixels" not in header:
            return conversion_from_frame(header, blobs, tuple(images))
        if len(blobs) != 2 or not isinstance(header["pixels"], dict):
            raise FramingError("malformed pixels")
        try:
            pixels = checked(header["pixels"], blobs[0], blobs[1], policy.limits)
        except SandboxFailure as exc:  # forged: the worker is not to be trusted again
            raise FramingError(exc.detail) from exc
        if on_image is None:
            images.append(pixels)
        else:
            on_image(pixels)
    raise FramingError("more images than the page cap")


def conversion_to_frame(conv: Conversion) -> Frame:
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


def conversion_from_frame(header: dict[str, Any], blobs: list[bytes],
                          images: tuple[Pixels, ...] = ()) -> Conversion:
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
            images=images,
            members=found,
            findings=tuple(str(f) for f in header["findings"]),
            notes=tuple(str(n) for n in header["notes"]),
            pages=int(header["pages"]),
            extra={str(k): str(v) for k, v in dict(header["extra"]).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SandboxFailure("malformed answer from the converter") from exc
