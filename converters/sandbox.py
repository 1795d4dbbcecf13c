"""Run converters in pre-started worker processes confined by bubblewrap.

Each worker is `bwrap ... python -m converters.worker` with no network (its own empty
network namespace), a minimal read-only view of the system (`HOST_PATHS` and our code;
not the data directory, not /etc), a private /tmp, a new session, no
capabilities, and every namespace unshared. Inside, the worker forks one child per
attachment with rlimits on memory, CPU seconds, file size and processes
(`converters.worker`). Here, the parent enforces the wall-clock timeout: a worker that
does not answer in time is killed (SIGTERM to its process group, then SIGKILL), and a
fresh one takes its place. Every failure becomes a `ConversionError`: fail closed.

A pool keeps `size` workers warm, so an attachment pays a fork inside the sandbox,
not bwrap plus an interpreter start-up (measured in docs/converters.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from converters.base import Conversion
from converters.errors import ConversionError, SandboxFailure, Timeout
from converters.framing import (
    FramingError,
    conversion_from_frame,
    policy_to_json,
    read_frame,
    write_frame,
)
from converters.limits import ConversionPolicy
from converters.seccomp import filter_fd

log = logging.getLogger("mugaika.sandbox")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Namespaces and capabilities of every sandbox: no network, no other process, no caps.
BWRAP_ARGS = ("--unshare-all", "--new-session", "--die-with-parent", "--cap-drop", "ALL")
#: The only host paths a sandbox sees (read-only): programs, libraries, fonts and the few
#: configuration files python3 and LibreOffice read. Not the rest of /etc, not /var, /work,
#: /home or the data directory: a converter (or a document that links "file:///…") must
#: not reach another message's files or the gateway's configuration.
HOST_PATHS = (
    "/usr", "/etc/fonts", "/etc/libreoffice", "/etc/python3", "/etc/python3.11",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
    "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
    "/var/cache/fontconfig",  # without it fontconfig rescans Noto CJK at every start
)


def root_links() -> list[str]:
    """/bin, /lib, /lib64, /sbin as on the host: symlinks into /usr (merged /usr) or dirs."""
    args: list[str] = []
    for name in ("/bin", "/lib", "/lib64", "/sbin"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    return args


def system_view() -> list[str]:
    """The minimal read-only system, /dev, /proc and a private /tmp (before `code_binds`,
    which may re-bind a checkout under /tmp, and before `--remount-ro /`)."""
    binds = [arg for path in HOST_PATHS for arg in ("--ro-bind-try", path, path)]
    return [*binds, *root_links(), "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp"]  # noqa: S108 - a fresh tmpfs, private to this sandbox


def code_binds(project_root: Path = PROJECT_ROOT) -> list[str]:
    """Bind our code, the venv and the interpreter it was made from, read-only (a pyenv
    or a checkout under /tmp is outside `HOST_PATHS`). Real paths: bwrap cannot mount
    onto a symlink (a venv linked into a checkout); the link itself is seen through the
    bind of its parent and leads to the real path bound here."""
    paths = dict.fromkeys(os.path.realpath(p)
                          for p in (project_root, sys.prefix, sys.base_prefix))
    return [arg for path in paths for arg in ("--ro-bind", path, path)]


#: Seconds a worker may take to import its converters and say it is ready.
START_TIMEOUT = 30.0
#: Seconds between SIGTERM and SIGKILL when a worker is stopped.
KILL_GRACE = 1.0


class WorkerDied(SandboxFailure):
    """The worker process itself ended (killed, out of memory), not the conversion child.

    Usually not the document's doing (each runs in a forked child), so the pool retries
    once on a fresh worker; a second death fails the attachment closed."""


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here and the operator did not allow unsandboxed conversion."""


@dataclass(frozen=True)
class SandboxConfig:
    """How workers are started. `sandboxed=False` only when the operator allowed it."""

    targets: dict[str, str]
    sandboxed: bool = True
    python: str = sys.executable
    bwrap: str = "bwrap"
    project_root: Path = PROJECT_ROOT
    #: Where workers' stderr goes; DEVNULL keeps untrusted text out of the gateway's log.
    stderr: int | None = subprocess.DEVNULL
    extra_pythonpath: tuple[str, ...] = field(default=())
    #: Host paths the converters must not read although the system is bound read-only:
    #: the data directory (spool, quarantine, database of every other message) and config.
    hidden: tuple[str, ...] = field(default=())

    def command(self, seccomp_fd: int | None = None) -> list[str]:
        inner = [self.python, "-m", "converters.worker"]
        inner += [f"{name}={target}" for name, target in sorted(self.targets.items())]
        return self.wrap(inner, seccomp_fd)

    def wrap(self, inner: list[str], seccomp_fd: int | None = None) -> list[str]:
        """`inner` under bwrap (unchanged when unsandboxed): the system view, our code,
        the `hidden` paths masked, then everything read-only."""
        if not self.sandboxed:
            return inner
        seccomp = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        masks = [arg for path in self.hidden if os.path.isdir(path) for arg in ("--tmpfs", path)]
        return [self.bwrap, *BWRAP_ARGS, *system_view(), *code_binds(self.project_root),
                *masks, "--remount-ro", "/", *seccomp, "--chdir", str(self.project_root),
                "--", *inner]

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join((str(self.project_root), *self.extra_pythonpath))
        private_tmp = "/tmp"  # noqa: S108 - the sandbox's own tmpfs, empty and unshared
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": private_tmp,
                "TMPDIR": private_tmp, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}


def bwrap_problem(bwrap: str = "bwrap") -> str | None:
    """Why bubblewrap cannot confine a process here, or None when it can."""
    try:
        done = subprocess.run(
            [bwrap, *BWRAP_ARGS, *system_view(), "--", "/bin/true"],
            capture_output=True, timeout=15, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap}: {type(exc).__name__}"
    if done.returncode != 0:
        return done.stderr.decode("utf-8", "replace").strip()[:300] or f"exit {done.returncode}"
    return None


def decide_sandboxing(allow_unsandboxed: bool, bwrap: str = "bwrap") -> bool:
    """True when workers run under bwrap; raise when they cannot and that is not allowed."""
    problem = bwrap_problem(bwrap)
    if problem is None:
        return True
    if not allow_unsandboxed:
        raise SandboxUnavailable(
            f"bubblewrap cannot run ({problem}); refusing to convert attachments unsandboxed. "
            "Set MUGAIKA_ALLOW_UNSANDBOXED=true only for development."
        )
    log.critical("SANDBOX DISABLED: converters run WITHOUT bubblewrap (%s). Untrusted "
                 "attachments are parsed with only rlimits between them and this host.", problem)
    return False


class _DeadlineReader:
    """`read(n)` on a pipe that raises `Timeout` once the deadline has passed."""

    def __init__(self, stream: IO[bytes], deadline: float) -> None:
        self._fd = stream.fileno()
        self._deadline = deadline

    def read(self, n: int, /) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("wall-clock limit")
        ready, _, _ = select.select([self._fd], [], [], remaining)
        if not ready:
            raise Timeout("wall-clock limit")
        return os.read(self._fd, min(n, 1 << 20))


class Worker:
    """One sandboxed fork server. Not thread-safe: the pool hands it to one caller at a time."""

    def __init__(self, config: SandboxConfig) -> None:
        started = time.monotonic()
        seccomp_fd = filter_fd() if config.sandboxed else None
        if config.sandboxed and seccomp_fd is None:
            log.warning("libseccomp unavailable: converter sandbox runs without its filter")
        try:
            self.proc = subprocess.Popen(
                config.command(seccomp_fd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=config.stderr, env=config.environment(), cwd=config.project_root,
                start_new_session=True,  # own process group: stop() reaches all it forked
                pass_fds=(seccomp_fd,) if seccomp_fd is not None else (),
            )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        try:
            hello, _ = read_frame(_DeadlineReader(self._stdout, started + START_TIMEOUT), 0)
        except (ConversionError, FramingError, EOFError) as exc:
            self.stop()
            raise SandboxFailure("converter worker did not start") from exc
        if not hello.get("ready"):
            self.stop()
            raise SandboxFailure("converter worker did not start")
        self.startup_seconds = time.monotonic() - started

    @property
    def _stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def alive(self) -> bool:
        return self.proc.poll() is None

    def convert(self, name: str, untrusted: bytes, filename: str, policy: ConversionPolicy
                ) -> Conversion:
        """One conversion; any failure of the worker itself stops it (the caller replaces it)."""
        assert self.proc.stdin is not None
        deadline = time.monotonic() + policy.limits.wall_seconds
        request = {"converter": name, "filename": filename, "policy": policy_to_json(policy)}
        try:
            write_frame(self.proc.stdin, request, (untrusted,))
            header, blobs = read_frame(_DeadlineReader(self._stdout, deadline),
                                       policy.limits.max_output_bytes)
        except Timeout:
            self.stop()
            raise
        except (OSError, EOFError) as exc:
            self.stop()
            raise WorkerDied("converter worker ended") from exc
        except FramingError as exc:
            self.stop()
            raise SandboxFailure("converter worker failed") from exc
        return conversion_from_frame(header, blobs)

    def stop(self) -> None:
        """Terminate then kill the worker's whole process group, and reap it."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


class SandboxPool:
    """Up to `size` warm workers shared by threads; a broken worker is replaced on demand."""

    def __init__(self, config: SandboxConfig, size: int) -> None:
        self.config = config
        self.size = max(1, size)
        self._idle: queue.Queue[Worker | None] = queue.Queue()
        for _ in range(self.size):
            self._idle.put(None)  # a slot: started on first use
        self._closed = False

    def warm(self) -> None:
        """Start every worker now (at gateway start-up) instead of on first use."""
        slots = [self._idle.get() for _ in range(self.size)]
        try:
            for i, slot in enumerate(slots):
                if slot is None or not slot.alive():
                    slots[i] = Worker(self.config)
        finally:
            for slot in slots:
                self._idle.put(slot)

    def convert(self, name: str, untrusted: bytes, filename: str, policy: ConversionPolicy
                ) -> Conversion:
        """Convert in a warm worker; raise a `ConversionError` on any failure."""
        if self._closed:
            raise SandboxFailure("the converter pool is closed")
        try:
            return self._convert_once(name, untrusted, filename, policy)
        except WorkerDied:
            return self._convert_once(name, untrusted, filename, policy)

    def _convert_once(self, name: str, untrusted: bytes, filename: str,
                      policy: ConversionPolicy) -> Conversion:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = Worker(self.config)
            return worker.convert(name, untrusted, filename, policy)
        finally:
            self._idle.put(worker if worker is not None and worker.alive() else None)

    def close(self) -> None:
        """Stop every worker (idle ones now; busy ones are stopped when they come back)."""
        self._closed = True
        for _ in range(self.size):
            worker = self._idle.get()
            if worker is not None:
                worker.stop()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
