"""The sandboxed converter worker: a small fork server speaking framed JSON on stdin/stdout.

Started once by `converters.sandbox` inside bubblewrap, it imports every converter up
front (pypdfium2, Pillow, ...), lets those with a `warm()` method pay their first-use
costs, and then forks one child per attachment, so a small file pays a fork (about a
millisecond), not an interpreter start-up. Each child sets its own
rlimits (address space, CPU seconds, file size, processes) before it touches a byte of
the attachment, converts, and sends its answer through a pipe; the server relays
well-formed frames or an error code. A child that dies (CPU limit, segfault, killed)
becomes an error frame, and the server stays clean for the next attachment.

Assume the child is hijacked by the attachment it parses. Then it must not be able to
answer for a later one: it keeps only its own answer pipe (every other descriptor is
closed before it reads a byte), works in a scratch directory of its own, cannot read or
write the server's memory (the server is not dumpable, and ptrace is filtered), and
when it has answered, every process in the sandbox but the server is killed and the
scratch areas (/tmp, /dev/shm) are wiped. Should anything be left that cannot be
removed, the server exits and the pool starts a fresh sandbox.

Usage (by the sandbox only): python -m converters.worker [--sandboxed] NAME=module:Class ...
(`--sandboxed`: this process runs in its own PID namespace and tmpfs, so it may kill
every other process it sees and empty /tmp; never given outside bubblewrap.)
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from converters.base import Converter
from converters.errors import (
    ConversionError,
    Corrupt,
    LimitExceeded,
    SandboxFailure,
    Timeout,
)
from converters.framing import (
    Frame,
    FrameTooLarge,
    FramingError,
    conversion_to_frame,
    encode_header,
    error_to_frame,
    frame_bound,
    pixels_frame,
    policy_from_json,
    read_exact,
    read_frame,
    read_header,
    widen_pipe,
    write_frame,
)
from converters.limits import ConversionPolicy
from converters.ocr import OcrStage
from converters.ocr import wanted as ocr_wanted
from converters.registry import load_converter

#: Largest attachment the gateway will ever send; the SMTP size cap is far below it.
MAX_INPUT_BYTES = 1024 * 1024 * 1024
#: Where conversions may write, wiped after each one when sandboxed (private tmpfs there).
SCRATCH_AREAS = ("/tmp", "/dev/shm")  # noqa: S108 - the sandbox's own, never the host's
_PR_SET_DUMPABLE = 4
#: How /proc/self/mountinfo writes a space, tab, newline or backslash in a path.
_OCTAL = re.compile(r"\\([0-7]{3})")


def _protocol_streams() -> tuple[IO[bytes], IO[bytes]]:
    """Move the frame channel off fds 0/1 so a library that prints cannot corrupt it."""
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    return inp, out


def _apply_limits(policy: ConversionPolicy) -> None:
    """Caps for one conversion, set in the child before it reads untrusted bytes."""
    lim = policy.limits
    resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _frames(converter: Converter, data: bytes, filename: str, policy: ConversionPolicy
            ) -> Iterator[Frame]:
    """The answer's frames, each image as soon as the converter has it; an error met on
    the way (also after some images) ends the answer with an error frame."""
    try:
        conversion = converter.convert(data, filename, policy)
        ocr = OcrStage(policy) if ocr_wanted(policy) else None
        for pixels in conversion.images if ocr is None else ocr.run(conversion.images):
            yield pixels_frame(pixels)
        if ocr is not None:  # known only now that every page went through
            conversion = dataclasses.replace(conversion, notes=conversion.notes + ocr.notes())
        last = conversion_to_frame(conversion)
        if sum(len(r.data) for r in conversion.outputs) > policy.limits.max_output_bytes:
            raise LimitExceeded("renderings exceed max_output_bytes")
    except ConversionError as err:
        yield error_to_frame(err), ()
    except MemoryError:
        yield error_to_frame(LimitExceeded("memory")), ()
    except RecursionError:
        yield error_to_frame(Corrupt("nesting too deep")), ()
    except Exception as exc:  # a parser choking on hostile input: refuse the file, keep going
        yield error_to_frame(Corrupt(type(exc).__name__)), ()
    else:
        yield last


def _run_child(write_fd: int, converter: Converter, data: bytes, filename: str,
               policy: ConversionPolicy, scratch: str) -> None:
    """In the forked child: isolate, limit, convert, answer, exit without cleanup handlers."""
    code = 0
    try:
        os.setpgid(0, 0)  # outside a sandbox, the sweep kills this group
        _keep_only(write_fd)
        _enter_scratch(scratch)
        _apply_limits(policy)
        with os.fdopen(write_fd, "wb") as out:
            for header, blobs in _frames(converter, data, filename, policy):
                write_frame(out, header, blobs)
    except BaseException:  # the child must never fall back into the server loop
        code = 1
    os._exit(code)


def _keep_only(write_fd: int) -> None:
    """Close every descriptor but stdin/stdout/stderr (/dev/null here) and the answer
    pipe: above all the server's own pipes to the gateway."""
    os.closerange(3, write_fd)
    os.closerange(write_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _enter_scratch(root: str) -> None:
    """A fresh directory for this conversion's files, as HOME and TMPDIR."""
    job = tempfile.mkdtemp(prefix="job-", dir=root)
    os.chdir(job)
    os.environ["HOME"] = os.environ["TMPDIR"] = job
    tempfile.tempdir = job


def _child_failure(status: int) -> ConversionError:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return Timeout("cpu time limit")
        if sig == signal.SIGXFSZ:
            return LimitExceeded("file size limit")
        return SandboxFailure(f"signal {sig}")
    return SandboxFailure(f"exit status {os.WEXITSTATUS(status)}")


def _serve_one(converters: dict[str, Converter], header: dict[str, Any], blobs: list[bytes],
               out: IO[bytes], scratch: str, sandboxed: bool) -> None:
    name = str(header.get("converter", ""))
    converter = converters.get(name)
    if converter is None or len(blobs) != 1:
        write_frame(out, error_to_frame(SandboxFailure("unknown converter")))
        return
    policy = policy_from_json(header["policy"])
    read_fd, write_fd = os.pipe()
    widen_pipe(read_fd)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(write_fd, converter, blobs[0], str(header.get("filename", "")), policy,
                   scratch)
    os.close(write_fd)
    try:
        last = _relay(read_fd, out, policy)
    finally:
        os.close(read_fd)
    with contextlib.suppress(ProcessLookupError):  # answered or not, its time is over
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    _sweep(pid, scratch, sandboxed)
    if isinstance(last, ConversionError):
        write_frame(out, error_to_frame(last))
    elif last is None:
        write_frame(out, error_to_frame(_child_failure(status)))
    else:
        answer, answer_blobs = last
        if answer.get("ok") and isinstance(answer.get("extra"), dict):
            # What the conversion cost, renderers included: for metrics and the bench.
            answer["extra"]["cpu_ms"] = str(round((usage.ru_utime + usage.ru_stime) * 1000))
            answer["extra"]["max_rss_kb"] = str(usage.ru_maxrss)
        write_frame(out, answer, answer_blobs)


def _relay(fd: int, out: IO[bytes], policy: ConversionPolicy) -> Frame | ConversionError | None:
    """Pass the child's image frames on as they come; return its last frame (not yet
    sent), an error for a malformed or oversized answer, or None when it sent nothing.

    An image's pixels are spliced from the child's pipe into the gateway's: the kernel
    moves them, this process never copies megabytes it does not need to look at."""
    reader = _FdReader(fd)
    for _ in range(policy.limits.max_pages + 1):
        try:
            header, sizes = read_header(reader, frame_bound(policy.limits))
            header.pop("blobs", None)
            if "pixels" not in header:
                return header, tuple(read_exact(reader, n) for n in sizes)
            out.write(encode_header(header, sizes))
            out.flush()
            for size in sizes:
                _splice_all(fd, out.fileno(), size)
        except EOFError:
            return None
        except FrameTooLarge:
            return LimitExceeded("renderings exceed the output cap")
        except FramingError:
            return SandboxFailure("malformed answer from the converter")
    return LimitExceeded("more images than the page cap")


class _FdReader:
    """`read(n)` straight from a file descriptor: no buffer that could read ahead into
    bytes that are spliced on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int, /) -> bytes:
        return os.read(self.fd, n)


def _splice_all(src: int, dst: int, count: int) -> None:
    while count:
        moved = os.splice(src, dst, count)
        if not moved:
            raise FramingError("pipe closed mid-frame")
        count -= moved


def _sweep(child: int, scratch: str, sandboxed: bool) -> None:
    """Nothing of a conversion survives it: no process, no file. Exit (the pool starts a
    fresh sandbox) when that cannot be made sure of."""
    try:
        if sandboxed:
            _kill_all_others()
            for area in SCRATCH_AREAS:
                _empty(Path(area))
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)
            _empty(Path(scratch))
    except (OSError, RecursionError):  # a tree too deep to walk counts as resisting
        os._exit(3)


def _kill_all_others() -> None:
    """SIGKILL to every process of this PID namespace but bwrap's init (PID 1) and us;
    bwrap's init reaps the orphans among them, which takes a moment."""
    for _ in range(100):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        if not _others():
            return
        time.sleep(0.005)
    raise OSError("processes survive the sweep")


def _others() -> list[int]:
    """PIDs other than init and this one; zombies still being reaped are waited for."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    own = {1, os.getpid()}
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in own]


def _empty(area: Path) -> None:
    """Remove everything inside `area`, whatever a conversion did to its permissions.

    Mount points bwrap made there stay: a masked data directory (a writable tmpfs: its
    contents go) or our own code when the checkout lies under /tmp (read-only: left
    alone), with the directories leading to them. Raises OSError if anything resists."""
    mounts = _mounts()
    os.chmod(area, 0o700)  # the sandbox has one user: it needs no more
    _empty_dir(str(area), mounts)


def _empty_dir(path: str, mounts: dict[str, bool]) -> None:
    for entry in os.scandir(path):
        if not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
            continue
        if mounts.get(entry.path) is False:
            continue  # a read-only bind: nothing a conversion could have written
        os.chmod(entry.path, 0o700)
        _empty_dir(entry.path, mounts)
        if not any(m == entry.path or m.startswith(entry.path + "/") for m in mounts):
            os.rmdir(entry.path)


def _mounts() -> dict[str, bool]:
    """Mount point → writable, from /proc/self/mountinfo (octal escapes decoded)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        fields = [line.split() for line in info]
    return {_OCTAL.sub(lambda m: chr(int(m[1], 8)), f[4]): "rw" in f[5].split(",")
            for f in fields}


def main(argv: list[str]) -> int:
    sandboxed = argv[:1] == ["--sandboxed"]
    if sandboxed:
        argv = argv[1:]
    _not_dumpable()
    inp, out = _protocol_streams()
    widen_pipe(out.fileno())
    # Sandboxed, /tmp is this sandbox's own tmpfs, emptied after every conversion.
    scratch = SCRATCH_AREAS[0] if sandboxed else tempfile.mkdtemp(prefix="mugaika-worker-")
    converters = {}
    for arg in argv:
        name, _, target = arg.partition("=")
        converters[name] = load_converter(target)
        warm = getattr(converters[name], "warm", None)
        if callable(warm):  # start-up costs paid here once, not in every forked child
            warm()
    write_frame(out, {"ready": True, "pid": os.getpid(), "converters": sorted(converters)})
    while True:
        try:
            header, blobs = read_frame(inp, MAX_INPUT_BYTES)
        except EOFError:
            if not sandboxed:
                shutil.rmtree(scratch, ignore_errors=True)
            return 0
        try:
            _serve_one(converters, header, blobs, out, scratch, sandboxed)
        except (KeyError, TypeError, ValueError):  # a malformed request from the gateway
            write_frame(out, error_to_frame(SandboxFailure("bad request")))


def _not_dumpable() -> None:
    """A conversion child (same user) can then neither open /proc/<server>/mem or fd/
    nor attach to this process: the kernel's ptrace access check fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
