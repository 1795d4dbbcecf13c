"""Warm LibreOffice instances inside bubblewrap, restarted after N documents, a crash or a hang.

A cold `soffice --convert-to pdf` costs 1.2-1.8 s per document (MEASURED.md); a listener
that is already up converts the same document in 0.1-0.6 s. Each `OfficeInstance` is one
bwrap sandbox (no network, no capabilities, a seccomp filter, a private /tmp holding its
own profile) running `office_bridge.py` under Debian's python3 with soffice beside it.

We assume a document can take LibreOffice over, so the sandbox shares no directory with
the gateway: the document goes in over the bridge's stdin and the PDF comes back over its
stdout, each as a length-prefixed frame, and the gateway never opens a path the sandbox
could have written (a shared job directory let a hijacked soffice plant symlinks that the
gateway then wrote through and read from). Everything the bridge says is bounded and
checked; an instance that breaks the protocol is killed like one that crashed.

The pool is an object the caller owns (no module-level state): build one at start-up,
pass it to `OfficeConverter`, `close()` it at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import errors
from converters.limits import Limits
from converters.sandbox import BWRAP_ARGS, bounded_tmpfs, system_view
from converters.seccomp import filter_fd

log = logging.getLogger("mugaika.office")

BRIDGE = Path(__file__).with_name("office_bridge.py")
BRIDGE_INSIDE = "/opt/mugaika/office_bridge.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-uno is built for Debian's interpreter only
#: A frame is this length prefix, a JSON header of that length, then `size` raw bytes.
FRAME_PREFIX = struct.Struct(">I")
#: A reply header holds a few names (sheets); anything longer is not the bridge speaking.
MAX_HEADER_BYTES = 1024 * 1024
#: How much of the PDF the gateway accepts when the caller gives no bound of its own.
DEFAULT_MAX_PDF_BYTES = Limits().max_output_bytes


@dataclass(frozen=True)
class OfficeConfig:
    """How the warm pool behaves. Built by the caller from `Settings`."""

    pool_size: int = 1
    #: Recycle an instance after this many documents: bounds leaks and state carried over.
    max_documents: int = 200
    timeout_seconds: float = 60.0
    start_timeout_seconds: float = 60.0
    #: RLIMIT_FSIZE inside the sandbox: no single written file (PDF, temp) may exceed this.
    file_bytes: int = 512 * 1024 * 1024
    #: RLIMIT_AS per process: a runaway document crashes its instance (restart, then the
    #: document fails closed) instead of the host. soffice maps ~1.2 GB before any document;
    #: 2 GiB was enough for every test document, 3 GiB leaves room for large spreadsheets.
    memory_bytes: int = 3 * 1024 * 1024 * 1024
    #: Size of the sandbox's /tmp (profile, one document, its PDF, LibreOffice's temporary
    #: files). tmpfs pages are RAM that RLIMIT_AS does not count: unsized, a hijacked
    #: soffice could fill half the host's memory with files.
    tmp_bytes: int = 1024 * 1024 * 1024
    extra_bwrap_args: tuple[str, ...] = field(default=())
    #: The bridge script run inside (the containment tests give a hijacked one).
    bridge: Path = BRIDGE
    #: False only when the operator allowed unsandboxed conversion (no bubblewrap here):
    #: then each instance still gets its own profile, pipe name and private directory.
    sandboxed: bool = True


class InstanceDied(Exception):
    """The instance crashed, hung, closed its pipe or broke the protocol; the pool restarts it."""


def rlimit_args(config: OfficeConfig) -> list[str]:
    """File size and address-space caps, inherited by everything started inside."""
    return ["prlimit", f"--fsize={config.file_bytes}", f"--as={config.memory_bytes}",
            "--core=0", "--"]


def sandbox_command(config: OfficeConfig, inner: list[str], seccomp_fd: int | None) -> list[str]:
    """`inner` in the sandbox: a minimal read-only file system whose only writable places
    are its own tmpfs mounts, no network, no capabilities, the seccomp filter; unsandboxed,
    `inner` under the rlimits alone."""
    if not config.sandboxed:
        return [*rlimit_args(config), *inner]
    seccomp = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
    return [
        *rlimit_args(config),
        "bwrap", *BWRAP_ARGS, *system_view(), "--ro-bind", str(config.bridge), BRIDGE_INSIDE,
        *bounded_tmpfs(config.tmp_bytes),
        "--remount-ro", "/",  # the root tmpfs bwrap built: nothing may be created there
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",  # noqa: S108 - private
        "--unsetenv", "DISPLAY", "--setenv", "SAL_USE_VCLPLUGIN", "svp",
        *seccomp, *config.extra_bwrap_args, "--", *inner,
    ]


def launch(config: OfficeConfig, inner: list[str], home: Path | None = None
           ) -> subprocess.Popen[bytes]:
    """Start `inner` as every instance is started: its own process group, stdin and stdout
    pipes, stderr to /dev/null and no other descriptor (the seccomp program's is read and
    closed by bwrap). `home` stands in for the sandbox's tmpfs when unsandboxed."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    if home is not None:
        env |= {"HOME": str(home), "TMPDIR": str(home),
                "MUGAIKA_OFFICE_PROFILE": str(home / "p"),
                "MUGAIKA_OFFICE_PIPE": f"mugaika_office_{home.name}"}
    seccomp_fd = filter_fd() if config.sandboxed else None
    if config.sandboxed and seccomp_fd is None:
        log.warning("libseccomp unavailable: LibreOffice sandbox runs without its filter")
    try:
        return subprocess.Popen(
            sandbox_command(config, inner, seccomp_fd), env=env, close_fds=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: one killpg ends it all
            pass_fds=(seccomp_fd,) if seccomp_fd is not None else (),
        )
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill everything `launch` started and reap it.

    Killing bwrap's process group kills bwrap; `--die-with-parent` then kills the PID
    namespace's init, which takes every process inside with it, however it detached. The
    group is killed even when the bridge has already exited: unsandboxed, soffice could
    otherwise outlive it.
    """
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _wait_for(fd: int, deadline: float, *, write: bool = False) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise InstanceDied("timeout")
    watched = ([], [fd]) if write else ([fd], [])
    ready = select.select(*watched, [], remaining)
    if not any(ready):
        raise InstanceDied("timeout")


def _reply_shape_ok(reply: dict[str, Any]) -> bool:
    """The fields the converter reads, with the types the bridge sends, or absent."""
    names = (reply.get(key, []) for key in ("sheets", "hidden_sheets"))
    return (isinstance(reply.get("ok"), bool)
            and all(isinstance(reply.get(key, ""), str) for key in ("kind", "error"))
            and all(isinstance(n, list) and all(isinstance(s, str) for s in n) for n in names))


class OfficeInstance:
    """One sandboxed soffice + bridge. Not thread-safe: the pool hands it to one caller."""

    def __init__(self, config: OfficeConfig) -> None:
        self.config = config
        self.documents = 0
        self.home = None if config.sandboxed else Path(tempfile.mkdtemp(prefix="mugaika-office-"))
        bridge = BRIDGE_INSIDE if config.sandboxed else str(config.bridge)
        self.proc = launch(config, [SYSTEM_PYTHON, "-I", bridge], self.home)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._stdin, False)  # a bridge that stops reading cannot block us
        try:
            ready = self._read_header(time.monotonic() + config.start_timeout_seconds)
        except InstanceDied:
            self.close()
            raise
        if ready.get("ready") is not True:
            self.close()
            raise InstanceDied("bridge did not report ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def reusable(self) -> bool:
        """Running and silent: a bridge that speaks unasked would answer the next document
        with something prepared before it saw it, so it is not given one."""
        if self.proc.poll() is not None:
            return False
        readable, _, _ = select.select([self._stdout], [], [], 0)
        return not readable

    def convert(self, untrusted: bytes, suffix: str, max_pages: int, max_pdf_bytes: int,
                target: str = "pdf") -> tuple[bytes, dict[str, Any]]:
        """Convert one document to PDF (or, `target="ooxml"`, save it as OOXML):
        InstanceDied on a crash, timeout or broken protocol (the caller restarts),
        LimitExceeded when the result is larger than `max_pdf_bytes`."""
        self.documents += 1
        deadline = time.monotonic() + self.config.timeout_seconds
        request = {"suffix": suffix, "max_pages": max_pages, "size": len(untrusted),
                   "target": target}
        self._send(request, untrusted, deadline)
        reply = self._read_header(deadline)
        size = reply.get("size", 0)
        if type(size) is not int or size < 0 or not _reply_shape_ok(reply):
            raise InstanceDied("bridge broke the protocol")
        if size > max_pdf_bytes:
            raise errors.LimitExceeded(f"the PDF is larger than {max_pdf_bytes} bytes")
        return self._read_exactly(size, deadline), reply

    def _send(self, header: dict[str, Any], body: bytes, deadline: float) -> None:
        encoded = json.dumps(header).encode()
        pending = memoryview(FRAME_PREFIX.pack(len(encoded)) + encoded + body)
        while pending:
            _wait_for(self._stdin, deadline, write=True)
            try:
                pending = pending[os.write(self._stdin, pending[:1 << 20]):]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise InstanceDied("bridge pipe closed") from exc

    def _read_header(self, deadline: float) -> dict[str, Any]:
        """A frame's JSON header, bounded, or InstanceDied at EOF, timeout or nonsense."""
        (length,) = FRAME_PREFIX.unpack(self._read_exactly(FRAME_PREFIX.size, deadline))
        if length > MAX_HEADER_BYTES:
            raise InstanceDied("bridge broke the protocol")
        try:
            header = json.loads(self._read_exactly(length, deadline))
        except ValueError as exc:
            raise InstanceDied("bridge broke the protocol") from exc
        if not isinstance(header, dict):
            raise InstanceDied("bridge broke the protocol")
        return header

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        """`size` bytes and not one more: what follows stays in the pipe (see `reusable`)."""
        data = bytearray()
        while len(data) < size:
            _wait_for(self._stdout, deadline)
            chunk = os.read(self._stdout, min(size - len(data), 1 << 20))
            if not chunk:
                raise InstanceDied("bridge exited")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        """Kill the whole sandbox and forget its profile: the next instance starts clean."""
        stop(self.proc)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


class OfficePool:
    """Up to `pool_size` warm instances shared by threads; one document per instance at a time.

    A document whose instance crashes or hangs is retried once on a fresh instance: the
    fault may be the instance's (a leak, an earlier document's state, a killed process),
    and the message must not be lost for it. A second failure is the document's.
    """

    def __init__(self, config: OfficeConfig | None = None) -> None:
        self.config = config or OfficeConfig()
        self._idle: queue.LifoQueue[OfficeInstance | None] = queue.LifoQueue()
        for _ in range(self.config.pool_size):
            self._idle.put(None)  # a slot; the instance starts on first use
        self._lock = threading.Lock()
        self._live: set[OfficeInstance] = set()
        self.restarts = 0
        #: Whether the last attempt to start an instance failed (the console's health).
        self.start_failed = False

    def convert(
        self, untrusted: bytes, suffix: str, max_pages: int,
        max_pdf_bytes: int = DEFAULT_MAX_PDF_BYTES, target: str = "pdf",
    ) -> tuple[bytes, dict[str, Any]]:
        """PDF bytes and the bridge's reply; raise Timeout/SandboxFailure after one retry,
        LimitExceeded at once for a PDF over `max_pdf_bytes` (a retry would make it again)."""
        last: InstanceDied | None = None
        for _attempt in range(2):
            instance = self._acquire()
            try:
                result = instance.convert(untrusted, suffix, max_pages, max_pdf_bytes, target)
            except InstanceDied as exc:
                last = exc
                self._discard(instance)
                self._idle.put(None)
                continue
            except BaseException:
                # Whatever it still has to say is unread: it cannot serve another document.
                self._discard(instance)
                self._idle.put(None)
                raise
            self._release(instance)
            return result
        if last is not None and str(last) == "timeout":
            raise errors.Timeout("office conversion timed out twice")
        raise errors.SandboxFailure(f"office converter failed twice ({last})")

    def warm_up(self) -> None:
        """Start every instance now rather than on the first document."""
        slots = [self._acquire() for _ in range(self.config.pool_size)]
        for instance in slots:
            self._release(instance)

    def healthy(self) -> bool:
        """False once an instance failed to start, until one starts again (instances start
        on first use: an idle pool with none running is healthy)."""
        return not self.start_failed

    def instances(self) -> list[OfficeInstance]:
        """The live instances (for health checks and tests)."""
        with self._lock:
            return list(self._live)

    def _acquire(self) -> OfficeInstance:
        try:
            # Waiting for a busy pool: bounded by what two attempts of other callers can take.
            instance = self._idle.get(timeout=self.config.timeout_seconds * 4)
        except queue.Empty as exc:
            raise errors.Timeout("no office converter became free") from exc
        if instance is not None and instance.reusable():
            return instance
        if instance is not None:
            self._discard(instance)
        try:
            fresh = OfficeInstance(self.config)
        except InstanceDied as exc:
            self._idle.put(None)
            self.start_failed = True
            raise errors.SandboxFailure("office converter did not start") from exc
        except BaseException:
            self._idle.put(None)
            raise
        self.start_failed = False
        with self._lock:
            self._live.add(fresh)
        return fresh

    def _release(self, instance: OfficeInstance) -> None:
        if instance.documents >= self.config.max_documents or not instance.reusable():
            self._discard(instance)
            self._idle.put(None)
        else:
            self._idle.put(instance)

    def _discard(self, instance: OfficeInstance) -> None:
        with self._lock:
            self._live.discard(instance)
            self.restarts += 1
        instance.close()

    def close(self) -> None:
        """Stop every instance; the pool can be used again (instances restart lazily)."""
        drained: list[OfficeInstance | None] = []
        while True:
            try:
                drained.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for instance in drained:
            if instance is not None:
                with self._lock:
                    self._live.discard(instance)
                instance.close()
            self._idle.put(None)

    def __enter__(self) -> OfficePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
