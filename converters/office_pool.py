"""Warm LibreOffice instances inside bubblewrap, restarted after N documents, a crash or a hang.

A cold `soffice --convert-to pdf` costs 1.2-1.8 s per document (MEASURED.md); a listener
that is already up converts the same document in 0.1-0.6 s. Each `OfficeInstance` is one
bwrap sandbox (no network, no capabilities, private /tmp holding its own profile) running
`office_bridge.py` under Debian's python3 with soffice beside it. Documents travel through a
per-instance job directory, the only writable host path bind-mounted inside.

The pool is an object the caller owns (no module-level state): build one at start-up,
pass it to `OfficeConverter`, `close()` it at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import errors
from converters.sandbox import BWRAP_ARGS, system_view

BRIDGE = Path(__file__).with_name("office_bridge.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-uno is built for Debian's interpreter only
JOB_DIR_INSIDE = "/tmp/job"  # noqa: S108 - inside the sandbox's private tmpfs


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
    extra_bwrap_args: tuple[str, ...] = field(default=())
    #: False only when the operator allowed unsandboxed conversion (no bubblewrap here):
    #: then each instance still gets its own profile, pipe name and job directory.
    sandboxed: bool = True


class InstanceDied(Exception):
    """The instance crashed, hung or closed its pipe; the pool restarts it."""


def rlimit_args(config: OfficeConfig) -> list[str]:
    """File size and address-space caps, inherited by everything started inside."""
    return ["prlimit", f"--fsize={config.file_bytes}", f"--as={config.memory_bytes}",
            "--core=0", "--"]


BRIDGE_INSIDE = "/opt/mugaika/office_bridge.py"


def sandbox_args(job_dir: Path, config: OfficeConfig) -> list[str]:
    """The sandbox: a minimal read-only file system, private /tmp, no network, no caps."""
    return [
        *rlimit_args(config),
        "bwrap", *BWRAP_ARGS, *system_view(), "--ro-bind", str(BRIDGE), BRIDGE_INSIDE,
        "--bind", str(job_dir), JOB_DIR_INSIDE,
        "--remount-ro", "/",  # the root tmpfs bwrap built: nothing may be created there
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",  # noqa: S108 - private
        "--unsetenv", "DISPLAY", "--setenv", "SAL_USE_VCLPLUGIN", "svp",
        *config.extra_bwrap_args,
    ]


def bwrap_command(job_dir: Path, config: OfficeConfig) -> list[str]:
    """The bridge (and the soffice it starts) inside the sandbox."""
    return [*sandbox_args(job_dir, config), SYSTEM_PYTHON, "-I", BRIDGE_INSIDE]


class OfficeInstance:
    """One sandboxed soffice + bridge. Not thread-safe: the pool hands it to one caller."""

    def __init__(self, config: OfficeConfig) -> None:
        self.config = config
        self.documents = 0
        self.job_dir = Path(tempfile.mkdtemp(prefix="mugaika-office-"))
        self._buffer = b""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if config.sandboxed:
            command = bwrap_command(self.job_dir, config)
            self.job_inside = JOB_DIR_INSIDE
        else:
            command = [*rlimit_args(config), SYSTEM_PYTHON, "-I", str(BRIDGE)]
            self.job_inside = str(self.job_dir)
            env |= {"HOME": str(self.job_dir), "MUGAIKA_OFFICE_PROFILE": str(self.job_dir / "p"),
                    "MUGAIKA_OFFICE_PIPE": f"mugaika_office_{self.job_dir.name}"}
        self.proc = subprocess.Popen(
            command, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: one killpg ends it all
        )
        try:
            ready = self._read_reply(time.monotonic() + config.start_timeout_seconds)
        except InstanceDied:
            self.close()
            raise
        if not ready.get("ready"):
            self.close()
            raise InstanceDied("bridge did not report ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def convert(
        self, untrusted: bytes, suffix: str, max_pages: int
    ) -> tuple[bytes, dict[str, Any]]:
        """Convert one document; raise InstanceDied on crash or timeout (caller restarts)."""
        self.documents += 1
        src = self.job_dir / f"in-{self.documents}{suffix}"
        dst = self.job_dir / f"out-{self.documents}.pdf"
        src.write_bytes(untrusted)
        try:
            request = {"src": f"{self.job_inside}/{src.name}",
                       "dst": f"{self.job_inside}/{dst.name}", "max_pages": max_pages}
            self._send(request)
            reply = self._read_reply(time.monotonic() + self.config.timeout_seconds)
            pdf = dst.read_bytes() if reply.get("ok") and dst.is_file() else b""
            return pdf, reply
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)

    def _send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise InstanceDied("bridge pipe closed") from exc

    def _read_reply(self, deadline: float) -> dict[str, Any]:
        """One JSON line from the bridge, or InstanceDied at EOF or after the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InstanceDied("timeout")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise InstanceDied("bridge exited")
            self._buffer += chunk
            if len(self._buffer) > 1024 * 1024:
                raise InstanceDied("bridge reply too long")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise InstanceDied("bridge reply unreadable") from exc
        if not isinstance(reply, dict):
            raise InstanceDied("bridge reply unreadable")
        return reply

    def close(self) -> None:
        """Kill the whole sandbox (pid namespace: its init dies, everything inside dies).

        The group is killed even when the bridge has already exited: unsandboxed, soffice
        could otherwise outlive it.
        """
        with contextlib.suppress(ProcessLookupError):  # nothing left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.job_dir, ignore_errors=True)


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

    def convert(
        self, untrusted: bytes, suffix: str, max_pages: int
    ) -> tuple[bytes, dict[str, Any]]:
        """PDF bytes and the bridge's reply; raise Timeout/SandboxFailure after one retry."""
        last: InstanceDied | None = None
        for _attempt in range(2):
            instance = self._acquire()
            try:
                result = instance.convert(untrusted, suffix, max_pages)
            except InstanceDied as exc:
                last = exc
                self._discard(instance)
                self._idle.put(None)
                continue
            self._release(instance)
            return result
        if last is not None and str(last) == "timeout":
            raise errors.Timeout("office conversion timed out twice")
        raise errors.SandboxFailure("office converter crashed twice")

    def warm_up(self) -> None:
        """Start every instance now rather than on the first document."""
        slots = [self._acquire() for _ in range(self.config.pool_size)]
        for instance in slots:
            self._release(instance)

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
        if instance is not None and instance.alive():
            return instance
        if instance is not None:
            self._discard(instance)
        try:
            fresh = OfficeInstance(self.config)
        except InstanceDied as exc:
            self._idle.put(None)
            raise errors.SandboxFailure("office converter did not start") from exc
        except BaseException:
            self._idle.put(None)
            raise
        with self._lock:
            self._live.add(fresh)
        return fresh

    def _release(self, instance: OfficeInstance) -> None:
        if instance.documents >= self.config.max_documents or not instance.alive():
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
