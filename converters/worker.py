"""The sandboxed converter worker: a small fork server speaking framed JSON on stdin/stdout.

Started once by `converters.sandbox` inside bubblewrap, it imports every converter up
front (pypdfium2, Pillow, ...), lets those with a `warm()` method pay their first-use
costs, and then forks one child per attachment, so a small file pays a fork (about a
millisecond), not an interpreter start-up. Each child sets its own
rlimits (address space, CPU seconds, file size, processes) before it touches a byte of
the attachment, converts, and sends its answer through a pipe; the server relays a
well-formed frame or an error code. A child that dies (CPU limit, segfault, killed)
becomes an error frame, and the server stays clean for the next attachment.

Usage (by the sandbox only): python -m converters.worker NAME=module:Class ...
"""

from __future__ import annotations

import io
import os
import resource
import signal
import sys
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
    FramingError,
    conversion_to_frame,
    error_to_frame,
    policy_from_json,
    read_frame,
    write_frame,
)
from converters.limits import ConversionPolicy
from converters.registry import load_converter

#: Largest attachment the gateway will ever send; the SMTP size cap is far below it.
MAX_INPUT_BYTES = 1024 * 1024 * 1024


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


def _convert(converter: Converter, data: bytes, filename: str, policy: ConversionPolicy
             ) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    try:
        conversion = converter.convert(data, filename, policy)
        header, blobs = conversion_to_frame(conversion)
        if sum(len(b) for b in blobs) > policy.limits.max_output_bytes:
            raise LimitExceeded("renderings exceed max_output_bytes")
        return header, blobs
    except ConversionError as err:
        return error_to_frame(err), ()
    except MemoryError:
        return error_to_frame(LimitExceeded("memory")), ()
    except RecursionError:
        return error_to_frame(Corrupt("nesting too deep")), ()
    except Exception as exc:  # a parser choking on hostile input: refuse the file, keep going
        return error_to_frame(Corrupt(type(exc).__name__)), ()


def _run_child(write_fd: int, converter: Converter, data: bytes, filename: str,
               policy: ConversionPolicy) -> None:
    """In the forked child: limit, convert, answer, exit without cleanup handlers."""
    code = 0
    try:
        _apply_limits(policy)
        header, blobs = _convert(converter, data, filename, policy)
        with os.fdopen(write_fd, "wb") as out:
            write_frame(out, header, blobs)
    except BaseException:  # the child must never fall back into the server loop
        code = 1
    os._exit(code)


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
               out: IO[bytes]) -> None:
    name = str(header.get("converter", ""))
    converter = converters.get(name)
    if converter is None or len(blobs) != 1:
        write_frame(out, error_to_frame(SandboxFailure("unknown converter")))
        return
    policy = policy_from_json(header["policy"])
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(write_fd, converter, blobs[0], str(header.get("filename", "")), policy)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read(policy.limits.max_output_bytes + 8 * 1024 * 1024)
        overflow = bool(pipe.read(1))
    if overflow:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    if overflow:
        write_frame(out, error_to_frame(LimitExceeded("renderings exceed max_output_bytes")))
        return
    try:
        answer, answer_blobs = read_frame(io.BytesIO(raw), policy.limits.max_output_bytes)
    except (FramingError, EOFError):
        write_frame(out, error_to_frame(_child_failure(status)))
        return
    answer = {k: v for k, v in answer.items() if k != "blobs"}
    if answer.get("ok") and isinstance(answer.get("extra"), dict):
        # What the conversion cost, renderers included: for metrics and the bench.
        answer["extra"]["cpu_ms"] = str(round((usage.ru_utime + usage.ru_stime) * 1000))
        answer["extra"]["max_rss_kb"] = str(usage.ru_maxrss)
    write_frame(out, answer, tuple(answer_blobs))


def main(argv: list[str]) -> int:
    inp, out = _protocol_streams()
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
            return 0
        try:
            _serve_one(converters, header, blobs, out)
        except (KeyError, TypeError, ValueError):  # a malformed request from the gateway
            write_frame(out, error_to_frame(SandboxFailure("bad request")))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
