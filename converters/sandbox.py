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
import itertools
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from converters import cgroup
from converters.base import Conversion
from converters.errors import ConversionError, SandboxFailure, Timeout
from converters.framing import (
    FramingError,
    policy_to_json,
    read_conversion,
    read_frame,
    write_frame,
)
from converters.limits import ConversionPolicy
from converters.pixels import Pixels
from converters.seccomp import filter_fd

log = logging.getLogger("mugaika.sandbox")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Namespaces and capabilities of every sandbox: no network, no other process, no caps,
#: and no further user namespace inside (`--disable-userns` needs `--unshare-user`).
BWRAP_ARGS = ("--unshare-all", "--unshare-user", "--disable-userns", "--new-session",
              "--die-with-parent", "--cap-drop", "ALL")
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


#: POSIX shared memory inside a sandbox (the converters and LibreOffice use little or none).
SHM_BYTES = 64 * 1024 * 1024


def bounded_tmpfs(tmp_bytes: int) -> list[str]:
    """The only writable places inside, each of bounded size: a sized /tmp over the one
    `system_view` made, a small /dev/shm, and /dev itself (bwrap's unsized tmpfs)
    read-only. tmpfs pages are RAM that RLIMIT_AS does not count: unsized, a hijacked
    parser could fill half the host's memory with files."""
    return ["--size", str(tmp_bytes), "--tmpfs", "/tmp",  # noqa: S108 - private
            "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",  # noqa: S108 - private
            "--remount-ro", "/dev"]


def code_binds(project_root: Path = PROJECT_ROOT) -> list[str]:
    """Bind our code, the venv and the interpreter it was made from, read-only (a pyenv
    or a checkout under /tmp is outside `HOST_PATHS`). Real paths: bwrap cannot mount
    onto a symlink (a venv linked into a checkout); the link itself is seen through the
    bind of its parent and leads to the real path bound here."""
    paths = dict.fromkeys(os.path.realpath(p)
                          for p in (project_root, sys.prefix, sys.base_prefix))
    return [arg for path in paths for arg in ("--ro-bind", path, path)]


#: Names each worker's cgroup apart from the others of this process.
_SERIAL = itertools.count()
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
    #: A worker is replaced by a fresh sandbox after this many conversions, so that what
    #: one document may have done to it (beyond what the sweep after each removes) ends.
    max_documents: int = 200
    #: Tasks (processes and threads) a sandbox may hold at once, in its own pids cgroup
    #: where the host allows one (`converters.cgroup`): bwrap, the worker, a conversion
    #: and its PDF renderers need about ten.
    max_tasks: int = 64
    #: Size of the sandbox's /tmp: a conversion's scratch files (the converters keep pages
    #: in memory; archives and Outlook files may spill).
    tmp_bytes: int = 512 * 1024 * 1024

    def command(self, seccomp_fd: int | None = None) -> list[str]:
        inner = [self.python, "-m", "converters.worker", *(["--sandboxed"] if self.sandboxed else [])]
        inner += [f"{name}={target}" for name, target in sorted(self.targets.items())]
        return self.wrap(inner, seccomp_fd)

    def wrap(self, inner: list[str], seccomp_fd: int | None = None) -> list[str]:
        """`inner` under bwrap (unchanged when unsandboxed): the system view, our code,
        the `hidden` paths masked, then everything read-only."""
        if not self.sandboxed:
            return inner
        seccomp = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        masks = [arg for path in self.hidden if os.path.isdir(path) for arg in ("--tmpfs", path)]
        return [self.bwrap, *BWRAP_ARGS, *system_view(), *bounded_tmpfs(self.tmp_bytes),
                *code_binds(self.project_root), *masks, "--remount-ro", "/", *seccomp,
                "--chdir", str(self.project_root), "--", *inner]

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


OnImage = Callable[[Pixels], None]


class _Taker:
    """Hands images to `on_image`; its first failure is raised once the whole answer has
    been read, so the worker's stream stays in step for the next conversion."""

    def __init__(self, on_image: OnImage | None) -> None:
        self.on_image = on_image
        self.failure: Exception | None = None

    def take(self, pixels: Pixels) -> None:
        if self.failure is None and self.on_image is not None:
            try:
                self.on_image(pixels)
            except Exception as exc:  # raised after the answer, by raise_failure
                self.failure = exc

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


class Worker:
    """One sandboxed fork server. Not thread-safe: the pool hands it to one caller at a time."""

    def __init__(self, config: SandboxConfig) -> None:
        started = time.monotonic()
        seccomp_fd = filter_fd() if config.sandboxed else None
        if config.sandboxed and seccomp_fd is None:
            log.warning("libseccomp unavailable: converter sandbox runs without its filter")
        self.cgroup = (cgroup.make(f"worker-{os.getpid()}-{next(_SERIAL)}", config.max_tasks)
                       if config.sandboxed else None)
        try:
            self.proc = subprocess.Popen(
                cgroup.wrap(self.cgroup, config.command(seccomp_fd)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
        self.documents = 0

    @property
    def _stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def alive(self) -> bool:
        return self.proc.poll() is None

    def convert(self, name: str, untrusted: bytes, filename: str, policy: ConversionPolicy,
                on_image: OnImage | None = None) -> Conversion:
        """One conversion; any failure of the worker itself stops it (the caller replaces it).
        Images go to `on_image` as they arrive, checked (`converters.pixels.checked`)."""
        assert self.proc.stdin is not None
        deadline = time.monotonic() + policy.limits.wall_seconds
        request = {"converter": name, "filename": filename, "policy": policy_to_json(policy)}
        self.documents += 1
        taker = _Taker(on_image)
        try:
            write_frame(self.proc.stdin, request, (untrusted,))
            conversion = read_conversion(_DeadlineReader(self._stdout, deadline), policy,
                                         taker.take if on_image is not None else None)
        except Timeout:
            self.stop()
            raise
        except (OSError, EOFError) as exc:
            self.stop()
            raise WorkerDied("converter worker ended") from exc
        except FramingError as exc:
            self.stop()
            raise SandboxFailure(f"converter answer refused: {exc}") from exc
        taker.raise_failure()
        return conversion

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
        cgroup.remove(self.cgroup)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


class SandboxPool:
    """Up to `size` warm workers shared by threads; a broken worker is replaced on demand,
    a worker that converted `config.max_documents` documents too."""

    def __init__(self, config: SandboxConfig, size: int) -> None:
        self.config = config
        self.size = max(1, size)
        self._idle: queue.Queue[Worker | None] = queue.Queue()
        for _ in range(self.size):
            self._idle.put(None)  # a slot: started on first use
        self._closed = False
        #: Workers started so far (a replacement after a death or `max_documents` counts).
        self.started = 0

    def warm(self) -> None:
        """Start every worker now (at gateway start-up) instead of on first use."""
        slots = [self._idle.get() for _ in range(self.size)]
        try:
            for i, slot in enumerate(slots):
                if slot is None or not slot.alive():
                    slots[i] = self._start()
        finally:
            for slot in slots:
                self._idle.put(slot)

    def convert(self, name: str, untrusted: bytes, filename: str, policy: ConversionPolicy,
                on_image: OnImage | None = None) -> Conversion:
        """Convert in a warm worker; raise a `ConversionError` on any failure."""
        if self._closed:
            raise SandboxFailure("the converter pool is closed")
        try:
            return self._convert_once(name, untrusted, filename, policy, on_image)
        except WorkerDied:
            return self._convert_once(name, untrusted, filename, policy, on_image)

    def _convert_once(self, name: str, untrusted: bytes, filename: str,
                      policy: ConversionPolicy, on_image: OnImage | None) -> Conversion:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = self._start()
            return worker.convert(name, untrusted, filename, policy, on_image)
        finally:
            self._idle.put(self._kept(worker))

    def _start(self) -> Worker:
        worker = Worker(self.config)
        self.started += 1
        return worker

    def _kept(self, worker: Worker | None) -> Worker | None:
        """`worker` back in the pool, or an empty slot when it is dead or used up."""
        if worker is None or not worker.alive():
            return None
        if worker.documents >= self.config.max_documents:
            worker.stop()
            return None
        return worker

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
