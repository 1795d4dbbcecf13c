"""The PPAP decrypter the gateway uses: `converters.decrypt` in its own bubblewrap sandbox.

One short-lived sandboxed process per attempt (a password release is rare, so no pool):
the same bwrap confinement and seccomp filter as the converter workers (no network,
read-only system, private /tmp, no capabilities), rlimits inside, the wall-clock timeout
here. The password travels on stdin, never on a command line.

The decrypter parses a hostile file, so it is treated as hostile too: it inherits its
two pipes and nothing else (stderr goes to /dev/null), its output is read only up to a
bound, and its whole process group is killed once it has answered, so nothing it
started outlives the attempt (sandboxed, its PID namespace ends with it anyway).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from converters.decrypt import EXIT_CODES, EXIT_WRONG_PASSWORD
from converters.errors import LimitExceeded, SandboxFailure, Timeout, from_code
from converters.sandbox import PROJECT_ROOT, SandboxConfig, decide_sandboxing
from converters.seccomp import filter_fd
from gateway.custody.quarantine import Decrypter, WrongPassword
from gateway.pipeline.attachments import hidden_paths
from gateway.settings import Settings

_CODES_BY_EXIT = {status: code for code, status in EXIT_CODES.items()}
#: What the sandbox runs, after the interpreter.
DECRYPTER = ("-m", "converters.decrypt")


def output_bound(settings: Settings, encrypted_bytes: int) -> int:
    """The most a decrypted file may be: its members total at most
    `archive_max_total_bytes` (the decrypter refuses more) and everything else in it,
    names and headers, the encrypted file already carried; a decrypted Office file is
    smaller than its encrypted package."""
    return settings.archive_max_total_bytes + encrypted_bytes


def sandboxed_decrypter(settings: Settings, sandboxed: bool | None = None,
                        program: Sequence[str] = DECRYPTER) -> Decrypter:
    """A `Decrypter` for `create_app(decrypt=...)`.

    Raises `converters.sandbox.SandboxUnavailable` when bubblewrap cannot run and
    `allow_unsandboxed` is off, like the converter pool.
    """
    if sandboxed is None:
        sandboxed = decide_sandboxing(settings.allow_unsandboxed)
    config = SandboxConfig(targets={}, sandboxed=sandboxed, hidden=hidden_paths(settings))
    limits = {
        "max_members": settings.archive_max_members,
        "max_bytes": settings.archive_max_total_bytes,
        "max_ratio": settings.archive_max_ratio,
        "memory_bytes": settings.converter_memory_bytes,
        "cpu_seconds": max(1, int(settings.converter_timeout_seconds)),
    }

    def decrypt(untrusted: bytes, _filename: str | None, password: str) -> bytes:
        header = json.dumps({"password": password, "limits": limits}).encode() + b"\n"
        status, output = _run(config, [sys.executable, *program], header + untrusted,
                              output_bound(settings, len(untrusted)),
                              time.monotonic() + settings.converter_timeout_seconds)
        if status == 0:
            return output
        if status == EXIT_WRONG_PASSWORD:
            raise WrongPassword()
        code = _CODES_BY_EXIT.get(status)
        raise from_code(code) if code else SandboxFailure(f"exit {status}")

    return decrypt


def _run(config: SandboxConfig, inner: list[str], data: bytes, max_output: int,
         deadline: float) -> tuple[int, bytes]:
    """Run `inner` in the sandbox with `data` on its stdin: its exit status and its output."""
    seccomp_fd = filter_fd() if config.sandboxed else None
    try:
        proc = subprocess.Popen(
            config.wrap(inner, seccomp_fd), env=config.environment(), cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, pass_fds=(seccomp_fd,) if seccomp_fd is not None else (),
            start_new_session=True,  # its own process group: one killpg ends it all
        )
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
    try:
        output = _exchange(proc, data, max_output, deadline)
        status = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise Timeout("decryption took too long") from None
    finally:
        _end(proc)
    return status, output


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill whatever is left of its process group (it may have answered and left a child
    behind), reap it and close the pipes."""
    with contextlib.suppress(ProcessLookupError):  # nothing of it left
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _exchange(proc: subprocess.Popen[bytes], data: bytes, max_output: int,
              deadline: float) -> bytes:
    """Feed `data` while reading the output to its end, both against the deadline: a
    decrypter that writes before it reads cannot deadlock us, nor one that never stops."""
    assert proc.stdin is not None and proc.stdout is not None
    pending, output = memoryview(data), bytearray()
    os.set_blocking(proc.stdin.fileno(), False)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdin, selectors.EVENT_WRITE)
        selector.register(proc.stdout, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            events = selector.select(remaining) if remaining > 0 else []
            if not events:
                raise Timeout("decryption took too long")
            for key, _ in events:
                if key.fileobj is proc.stdin:
                    pending = _feed(selector, proc, pending)
                else:
                    _take(selector, proc, output, max_output)
    return bytes(output)


def _feed(selector: selectors.BaseSelector, proc: subprocess.Popen[bytes],
          pending: memoryview) -> memoryview:
    """Write what the pipe takes; close stdin when all is written or the reader is gone
    (its exit status then says why)."""
    assert proc.stdin is not None
    try:
        pending = pending[os.write(proc.stdin.fileno(), pending[:1 << 16]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        selector.unregister(proc.stdin)
        with contextlib.suppress(OSError):
            proc.stdin.close()
    return pending


def _take(selector: selectors.BaseSelector, proc: subprocess.Popen[bytes],
          output: bytearray, max_output: int) -> None:
    """Append what the pipe holds, up to `max_output` bytes in all; stop at its end."""
    assert proc.stdout is not None
    chunk = os.read(proc.stdout.fileno(), 1 << 16)
    if not chunk:
        selector.unregister(proc.stdout)
    output += chunk
    if len(output) > max_output:
        raise LimitExceeded(f"the decrypted file is larger than {max_output} bytes")
