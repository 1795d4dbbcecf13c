"""zip, 7z, tar(.gz/.bz2/.xz), gz/bz2/xz, LZH -> members, each bounded while it is unpacked.

Nothing is written to disk: members are read into memory block by block and every cap
(member count, total bytes, expansion ratio) is checked as the bytes arrive, so a bomb
stops after at most the cap's worth of decompression, within seconds and bounded memory.
ZIP is read with our own central-directory checks first: Python 3.11.7's zipfile predates
the fix for overlapping entries (the "better zip bomb"), and it cannot tell us which names
were written in CP932 by Japanese Windows. The other formats go through libarchive.

Member paths are display names only (never used as file-system paths): separators are
normalised and `..`, `.` and leading slashes removed.
"""

from __future__ import annotations

import bz2
import ctypes
import lzma
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import libarchive
import libarchive.exception
from libarchive import ffi
from libarchive.read import ArchiveRead, new_archive_read

from converters import errors
from converters.archive_common import Budget, clean_path, decode_name
from converters.archive_zip import zip_members
from converters.base import Conversion, Member
from converters.limits import ConversionPolicy

CHUNK = 1024 * 1024

SEVEN_Z = b"7z\xbc\xaf\x27\x1c"
GZIP = b"\x1f\x8b"
BZIP2 = b"BZh"
XZ = b"\xfd7zXZ\x00"

def kind_of(untrusted: bytes) -> str:
    """zip, 7z, lzh, tar, gzip, bzip2, xz or "" (by content, never by name)."""
    if untrusted[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if untrusted.startswith(SEVEN_Z):
        return "7z"
    if len(untrusted) > 7 and untrusted[2:4] == b"-l" and untrusted[6:7] == b"-":
        return "lzh"
    if untrusted[257:262] == b"ustar":
        return "tar"
    for magic, name in ((GZIP, "gzip"), (BZIP2, "bzip2"), (XZ, "xz")):
        if untrusted.startswith(magic):
            return name
    return ""


class ArchiveConverter:
    """Containers: returns members (the caller sanitizes each one level deeper)."""

    name = "archive"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        kind = kind_of(untrusted)
        budget = Budget(policy.limits, len(untrusted))
        if kind == "zip":
            members = zip_members(untrusted, budget)
        elif kind in ("gzip", "bzip2", "xz") and not _is_compressed_tar(untrusted, kind):
            members = [_single(untrusted, kind, filename, budget)]
        elif kind:
            members = list(_libarchive_members(untrusted, kind, budget))
        else:
            raise errors.Unsupported("not an archive")
        notes = [f"archive: {kind}, {len(members)} files", *budget.notes]
        return Conversion(members=tuple(members), notes=tuple(notes), extra={"archive": kind})


def _decompressor(kind: str) -> zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor:
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor()


def _is_compressed_tar(untrusted: bytes, kind: str) -> bool:
    """Peek at the first 512 decompressed bytes: a tar header has "ustar" at 257."""
    try:
        head = _decompressor(kind).decompress(untrusted[:64 * 1024], 512)
    except (zlib.error, OSError, lzma.LZMAError, EOFError):
        return False
    return head[257:262] == b"ustar"


def _single(untrusted: bytes, kind: str, filename: str, budget: Budget) -> Member:
    """A lone .gz/.bz2/.xz file: decompress with a bounded output per step."""
    budget.add_member()
    try:
        data = _inflate(_decompressor(kind), untrusted, budget)
    except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
        raise errors.Corrupt("compressed stream damaged") from exc
    name = clean_path(filename) or "file"
    for ext in (".gz", ".bz2", ".xz"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)] or "file"
            break
    return Member(name, data)


def _inflate(dec: zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor,
             untrusted: bytes, budget: Budget) -> bytes:
    """At most CHUNK bytes per step, each counted before the next; a truncated stream fails."""
    out = bytearray()
    pending = untrusted
    while not dec.eof:
        chunk = dec.decompress(pending, CHUNK)
        budget.add_bytes(len(chunk))
        out += chunk
        if isinstance(dec, (bz2.BZ2Decompressor, lzma.LZMADecompressor)):
            pending = b""  # these keep unconsumed input internally
            starved = dec.needs_input
        else:
            pending = dec.unconsumed_tail
            starved = not pending
        if not chunk and starved and not dec.eof:
            raise errors.Corrupt("compressed stream truncated")
    return bytes(out)


@contextmanager
def _reader(untrusted: bytes, kind: str) -> Iterator[ArchiveRead]:
    """libarchive's memory reader, plus the header charset option libarchive-c lacks.

    LZH level 0/1 headers carry names in the writer's code page with no marker; in a UTF-8
    locale libarchive fails fatally on CP932 bytes unless told the charset (LHa for
    Windows, the tool everyone in Japan used, writes CP932).
    """
    with new_archive_read("all", "all") as archive_p:
        if kind == "lzh":
            # Explicit c_void_p: a bare int argument would be truncated to a C int.
            ffi.libarchive.archive_read_set_options(
                ctypes.c_void_p(archive_p), ctypes.c_char_p(b"lha:hdrcharset=CP932"))
        buf = ctypes.cast(ctypes.c_char_p(untrusted), ctypes.c_void_p)  # `untrusted` outlives it
        ffi.read_open_memory(archive_p, buf, len(untrusted))
        yield ArchiveRead(archive_p, "utf-8")


def _libarchive_members(untrusted: bytes, kind: str, budget: Budget) -> Iterator[Member]:
    try:
        with _reader(untrusted, kind) as archive:
            for entry in archive:
                if entry.isdir:
                    continue
                budget.add_member()
                path = clean_path(_entry_path(entry))
                if not entry.isfile:
                    budget.notes.append(f"skipped link or device: {path}")
                    continue
                data = bytearray()
                for block in entry.get_blocks():
                    budget.add_bytes(len(block))
                    data += block
                yield Member(path or f"member-{budget.members}", bytes(data))
    except libarchive.exception.ArchiveError as exc:
        text = str(exc).lower()
        if "encrypt" in text or "passphrase" in text or "password" in text:
            raise errors.Encrypted("7z") from exc
        raise errors.Corrupt("archive damaged") from exc


def _entry_path(entry: libarchive.ArchiveEntry) -> str:
    """Path as text; raw bytes (CP932 from Japanese Windows LZH, say) decoded by us."""
    value = entry.pathname  # libarchive-c returns bytes when its UTF-8 decode failed
    if isinstance(value, bytes):
        return decode_name(value)
    return str(value or "")
