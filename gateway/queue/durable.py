"""The system calls of a durable write, shared by the spool and the journal."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in `path` (a rename, a new file) survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The most buffers one writev takes (Linux: 1,024).
IOV_MAX = os.sysconf("SC_IOV_MAX")


def write_all(fd: int, buffers: list[bytes]) -> None:
    """All `buffers`, in one system call when the kernel takes them whole (it may not)."""
    for start in range(0, len(buffers), IOV_MAX):
        _write_some(fd, buffers[start:start + IOV_MAX])


def _write_some(fd: int, buffers: list[bytes]) -> None:
    written = os.writev(fd, buffers)
    for buffer in buffers:
        rest = memoryview(buffer)[min(written, len(buffer)):]
        written = max(0, written - len(buffer))
        while rest:
            rest = rest[os.write(fd, rest):]


def out_of_space(error: BaseException) -> bool:
    """Whether `error`, or what caused it (a SpoolError wraps its OSError), is a full
    disk or quota: not the entry's fault, and gone once an operator makes room."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
