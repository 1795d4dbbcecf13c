"""ZIP members with the checks zipfile (3.11.7) does not make: overlaps, names, encryption.

- Overlapping entries: the "better zip bomb" (Fifield 2019) points many central-directory
  entries at one compressed kernel; each entry is small, the sum is gigabytes. We read
  every local header and refuse any two entries whose data ranges overlap.
- Names: without the UTF-8 flag (bit 11) the bytes are whatever the writer's code page
  was. Japanese Windows writes CP932; macOS writes UTF-8 without the flag; the spec's
  default is CP437. We try the Info-ZIP Unicode Path field, then UTF-8, then CP932, then
  CP437, all strictly, on the raw bytes.
- Encryption (ZipCrypto flag bit 0, WinZip AES method 99): the whole archive is held as
  PPAP, never partly delivered.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from itertools import pairwise

from converters import errors
from converters.archive_common import Budget, clean_path, decode_name
from converters.base import Member

EOCD = b"PK\x05\x06"
LOCAL = b"PK\x03\x04"
AES_METHOD = 99
UNICODE_PATH_EXTRA = 0x7075
READ_CHUNK = 1024 * 1024


def zip_members(untrusted: bytes, budget: Budget) -> list[Member]:
    """Every file member, decoded and bounded; raise Encrypted, Bomb, LimitExceeded, Corrupt."""
    _precheck_count(untrusted, budget.limits.archive_max_members)
    try:
        zf = zipfile.ZipFile(io.BytesIO(untrusted))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise errors.Corrupt("zip unreadable") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > budget.limits.archive_max_members:
            raise errors.LimitExceeded("too many archive members")
        _refuse_encrypted(infos)
        _refuse_overlaps(untrusted, zf.infolist())
        return [_read_member(zf, info, budget) for info in infos]


def _precheck_count(untrusted: bytes, max_members: int) -> None:
    """Refuse an absurd entry count before zipfile builds an object per entry."""
    at = untrusted.rfind(EOCD, max(0, len(untrusted) - 65557))
    if at < 0 or at + 22 > len(untrusted):
        return  # zipfile will report the damage
    (total,) = struct.unpack_from("<H", untrusted, at + 10)
    if total != 0xFFFF and total > max_members * 2:  # directories count too
        raise errors.LimitExceeded("too many archive members")


def _refuse_encrypted(infos: list[zipfile.ZipInfo]) -> None:
    if any(i.compress_type == AES_METHOD for i in infos):
        raise errors.Encrypted("zip-aes")
    if any(i.flag_bits & 0x1 for i in infos):
        raise errors.Encrypted("zip-zipcrypto")


def _refuse_overlaps(untrusted: bytes, infos: list[zipfile.ZipInfo]) -> None:
    spans: list[tuple[int, int]] = []
    for info in infos:
        start = info.header_offset
        if start < 0 or start + 30 > len(untrusted) or untrusted[start:start + 4] != LOCAL:
            raise errors.Corrupt("zip local header missing")
        name_len, extra_len = struct.unpack_from("<HH", untrusted, start + 26)
        end = start + 30 + name_len + extra_len + info.compress_size
        if end > len(untrusted):
            raise errors.Corrupt("zip entry beyond end of file")
        spans.append((start, end))
    spans.sort()
    for (_, prev_end), (start, _) in pairwise(spans):
        if start < prev_end:
            raise errors.Bomb("overlapping zip entries")


def member_name(info: zipfile.ZipInfo) -> str:
    """The real name: UTF-8 flag, Unicode Path extra, else the raw bytes decoded strictly."""
    if info.flag_bits & 0x800:
        return clean_path(info.filename)
    unicode_path = _unicode_path_extra(info.extra)
    if unicode_path is not None:
        return clean_path(unicode_path)
    # Without the flag, zipfile decoded the raw bytes as CP437, which maps all 256 byte
    # values one to one: encoding back gives the exact bytes the writer stored.
    return clean_path(decode_name(info.orig_filename.encode("cp437")))


def _unicode_path_extra(extra: bytes) -> str | None:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        if tag == UNICODE_PATH_EXTRA and len(body) > 5 and body[0] == 1:
            try:
                return body[5:].decode("utf-8")
            except UnicodeDecodeError:
                return None
        pos += 4 + size
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> Member:
    budget.add_member()
    data = bytearray()
    try:
        with zf.open(info) as stream:
            while chunk := stream.read(READ_CHUNK):
                budget.add_bytes(len(chunk))
                data += chunk
    except NotImplementedError as exc:  # deflate64, PPMd, ...
        raise errors.Unsupported("zip compression method not supported") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise errors.Corrupt("zip member damaged") from exc
    return Member(member_name(info) or f"member-{budget.members}", bytes(data))
