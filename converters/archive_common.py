"""What every archive reader shares: the running budget and name handling."""

from __future__ import annotations

from dataclasses import dataclass, field

from converters import errors
from converters.limits import Limits

#: Below this many unpacked bytes the ratio is not checked: a 200-byte zip of a 1 MB run
#: of spaces is harmless, and legitimate text compresses far beyond 100:1 at small sizes.
RATIO_FLOOR_BYTES = 8 * 1024 * 1024


@dataclass
class Budget:
    """Running totals checked on every block: members, bytes, expansion ratio."""

    limits: Limits
    packed: int
    members: int = 0
    unpacked: int = 0
    notes: list[str] = field(default_factory=list)

    def add_member(self) -> None:
        self.members += 1
        if self.members > self.limits.archive_max_members:
            raise errors.LimitExceeded("too many archive members")

    def add_bytes(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limits.archive_max_total_bytes:
            raise errors.Bomb("archive expands beyond the total size cap")
        if (self.unpacked > RATIO_FLOOR_BYTES
                and self.unpacked > self.limits.archive_max_ratio * max(self.packed, 1)):
            raise errors.Bomb("archive expansion ratio exceeded")


def clean_path(untrusted_path: str) -> str:
    """A display path: forward slashes, no empty, `.` or `..` parts, no leading slash."""
    parts = [p for p in untrusted_path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts)


def decode_name(raw: bytes) -> str:
    """UTF-8 when valid, else CP932 when valid (Japanese Windows), else CP437 (ZIP default)."""
    for codec in ("utf-8", "cp932"):
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    return raw.decode("cp437")
