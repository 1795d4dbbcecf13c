"""Archives built byte by byte, so tests control what real tools would not write.

- `build_zip`: raw name bytes without the UTF-8 flag (what Japanese Windows writes),
  and entries that share compressed data (the overlapping-entry bomb).
- `build_lzh`: an LZH level-0 -lh0- archive (lhasa cannot create archives), per the
  LHa header layout: size, checksum, method, sizes, DOS time, attribute, level, name, CRC-16.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

DOS_TIME = (0x6000, 0x5B79)  # 2025-11-25 12:00


@dataclass(frozen=True)
class RawEntry:
    name: bytes
    data: bytes = b""
    flags: int = 0  # 0x800 = UTF-8 names
    method: int = 0  # 0 stored, 8 deflate
    #: Pre-compressed data with its true size and CRC (bombs are built without the data).
    packed: tuple[bytes, int, int] | None = None


def _packed(entry: RawEntry) -> tuple[bytes, int, int]:
    if entry.packed is not None:
        return entry.packed
    if entry.method == 8:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = c.compress(entry.data) + c.flush()
    else:
        body = entry.data
    return body, len(entry.data), zlib.crc32(entry.data)


def _local(entry: RawEntry, body: bytes, size: int, crc: int) -> bytes:
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, entry.flags, entry.method,
                       *DOS_TIME, crc, len(body), size, len(entry.name), 0) + entry.name + body


def _central(entry: RawEntry, body: bytes, size: int, crc: int, offset: int) -> bytes:
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, entry.flags,
                       entry.method, *DOS_TIME, crc, len(body), size, len(entry.name),
                       0, 0, 0, 0, 0, offset) + entry.name


def _eocd(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)


def build_zip(entries: list[RawEntry]) -> bytes:
    out = bytearray()
    central = bytearray()
    for entry in entries:
        body, size, crc = _packed(entry)
        central += _central(entry, body, size, crc, len(out))
        out += _local(entry, body, size, crc)
    cd_offset = len(out)
    return bytes(out + central + _eocd(len(entries), len(central), cd_offset))


def zeros_deflated(size: int) -> tuple[bytes, int, int]:
    """`size` zero bytes, deflated raw, without ever holding them all in memory."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1024 * 1024)
    parts = []
    crc = 0
    left = size
    while left:
        n = min(left, len(block))
        parts.append(c.compress(block[:n]))
        crc = zlib.crc32(block[:n], crc)
        left -= n
    parts.append(c.flush())
    return b"".join(parts), size, crc


def overlapping_bomb(kernel_size: int, entries: int) -> bytes:
    """Many central-directory entries all pointing at one deflated kernel."""
    body, size, crc = zeros_deflated(kernel_size)
    kernel = RawEntry(b"k", method=8, packed=(body, size, crc))
    local = _local(kernel, body, size, crc)
    central = b"".join(
        _central(kernel, body, size, crc, 0) for _ in range(entries)
    )
    return local + central + _eocd(entries, len(central), len(local))


def crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0xA001 reflected), the checksum LHa stores per member."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def build_lzh(members: list[tuple[bytes, bytes]]) -> bytes:
    """Level-0, stored (-lh0-) LZH archive of (raw CP932 name, data) pairs."""
    out = bytearray()
    for name, data in members:
        rest = struct.pack("<5sIIHHBBB", b"-lh0-", len(data), len(data), *DOS_TIME, 0x20, 0,
                           len(name)) + name + struct.pack("<H", crc16(data))
        out += bytes([len(rest), sum(rest) & 0xFF]) + rest + data
    return bytes(out + b"\x00")
