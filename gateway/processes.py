"""`mugaika serve` as a group of gateway processes sharing one SMTP port and one spool.

One process tops out below one core: its event loop, SMTP in and out and the sanitize
threads share one GIL (docs/performance.md). With `processes` > 1 the command becomes a
small supervisor that starts that many full gateways (`server.serve` with a slot); each
listens on the same port with SO_REUSEPORT, so the kernel spreads SMTP connections over
them, and each claims spool entries into its own `active.N/`.

The supervisor (`python -m gateway.processes`, which `mugaika serve` becomes) migrates the
database and recovers the whole spool once, in a short-lived child, before any gateway
runs; it imports little itself, since it only watches. A gateway that dies is started
again, and takes back only its own claims (`Spool(root, slot)`), so nothing it held is
lost and the others are not disturbed. Only slot 0 serves the HTTP API; counters are
shared through prometheus_client's multiprocess mode (`gateway.metrics`), connection
caps through shared memory (`ingress.ConnectionLimiter`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import time
from collections.abc import MutableSequence
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog

from gateway import loop
from gateway.logs import configure_logging
from gateway.metrics import MULTIPROC_ENV
from gateway.relay.ingress import forget, limit_table
from gateway.settings import LOAD_ERRORS, Settings, load_settings, with_reloadable

log = structlog.get_logger("mugaika.processes")

#: A gateway that dies sooner than this after its start counts toward `MAX_QUICK_DEATHS`.
QUICK_DEATH_SECONDS = 10.0
#: That many quick deaths in a row (a broken install, a port taken): the group stops
#: rather than spin; a systemd unit with Restart= takes it from there.
MAX_QUICK_DEATHS = 5
STOP_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """A `kill -9` of the gateway must not leave its processes behind (Linux prctl).

    `parent`: the pid that started this process. If it died before the prctl (a child
    boots for a second or two), the signal will never come: exit now instead.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: pipes to the parent still end them
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def slot_settings(settings: Settings) -> Settings:
    """One member's share: the converter workers are split, as the cores are. Sanitize
    threads are not: with one per member, delivered msgs/s fell 396 → 337, and the
    memory bench's peak did not move (1,747 → 1,793 MiB)."""
    total = settings.converter_workers or settings.workers
    return settings.model_copy(
        update={"converter_workers": max(1, total // settings.processes)})


def _prepare(settings: Settings) -> None:
    """What must happen once before any member runs (in a child: heavy imports)."""
    from converters.sandbox import SandboxUnavailable, decide_sandboxing
    from gateway.custody.stores import open_stores
    from gateway.queue.spool import Spool

    configure_logging()
    try:
        decide_sandboxing(settings.allow_unsandboxed)  # refuse early, not in every member
    except SandboxUnavailable as exc:
        log.error("sandbox_unavailable", reason=str(exc))
        sys.exit(1)
    open_stores(settings).close()  # migrations run here, never in two members at once
    recovered = Spool(settings.spool_dir).recover()
    log.info("group_prepared", processes=settings.processes, recovered=recovered)


def _member(settings: Settings, slot: int, parent: int, limits: MutableSequence[int]) -> None:
    """The body of one gateway process (spawned: a fresh interpreter)."""
    from gateway.server import serve

    die_with_parent(parent)
    configure_logging(member=slot)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    loop.run(serve(settings, slot=slot, limits=limits))


class Group:
    """Starts, watches and stops the members; `run()` until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.member_settings = slot_settings(settings)
        self.context = multiprocessing.get_context("spawn")
        self.members: dict[int, BaseProcess] = {}
        self.started: dict[int, float] = {}
        self.stopping = False
        #: Open SMTP connections per client, counted over the group (the 421 caps).
        self.limits = limit_table(settings.processes)

    def prepare(self) -> bool:
        """Migrate and recover (in a child), and give the members a metrics directory."""
        child = self.context.Process(target=_prepare, args=(self.settings,),
                                     name="mugaika-prepare")
        child.start()
        child.join()
        if child.exitcode != 0:
            log.error("group_not_started", exitcode=child.exitcode)
            return False
        metrics_dir = self.settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # counters restart with the group
        metrics_dir.mkdir(parents=True)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)  # inherited by every member
        return True

    def start(self, slot: int) -> None:
        args = (self.member_settings, slot, os.getpid(), self.limits)
        member = self.context.Process(target=_member, args=args, name=f"mugaika-{slot}")
        # Started with SIGHUP blocked, so that a reload forwarded while it imports waits
        # for its handler (`gateway.reload.watch`) instead of killing it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            member.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.members[slot] = member
        self.started[slot] = time.monotonic()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._reload)
        if not self.prepare():
            return 1
        for slot in range(self.settings.processes):
            self.start(slot)
        quick_deaths = 0
        while not self.stopping:
            multiprocessing.connection.wait([m.sentinel for m in self.members.values()],
                                            timeout=1.0)
            for slot in [s for s, m in self.members.items() if not m.is_alive()]:
                if self.stopping:
                    break
                quick = time.monotonic() - self.started[slot] < QUICK_DEATH_SECONDS
                quick_deaths = quick_deaths + 1 if quick else 0
                log.error("member_died", slot=slot, exitcode=self.members[slot].exitcode,
                          quick_deaths=quick_deaths)
                if quick_deaths >= MAX_QUICK_DEATHS:
                    self.stopping = True
                    break
                forget(self.limits, slot)
                self.start(slot)  # it takes back its own claims as it starts
        self.stop()
        return 0 if quick_deaths < MAX_QUICK_DEATHS else 1

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _reload(self, signum: int, frame: object) -> None:
        """Each member reads the file again itself (`gateway.reload`); the supervisor
        too, so that a member started again later starts with what the others have."""
        with contextlib.suppress(*LOAD_ERRORS):  # the members say why it failed
            self.settings = with_reloadable(self.settings, load_settings())
            self.member_settings = slot_settings(self.settings)
        for member in self.members.values():
            if member.is_alive() and member.pid is not None:
                os.kill(member.pid, signal.SIGHUP)

    def stop(self) -> None:
        for member in self.members.values():
            if member.is_alive() and member.pid is not None:
                os.kill(member.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for member in self.members.values():
            member.join(max(0.0, deadline - time.monotonic()))
            if member.is_alive():
                log.error("member_killed", name=member.name)
                member.kill()
                member.join()


def main() -> int:
    """`python -m gateway.processes [--config F]`: what `mugaika serve` runs for a group."""
    parser = argparse.ArgumentParser(prog="mugaika serve")
    parser.add_argument("--config", type=Path, default=None)
    config = parser.parse_args().config
    if config is not None:  # the members read it again on SIGHUP (`gateway.reload`)
        os.environ["MUGAIKA_CONFIG"] = str(config.resolve())
    settings = load_settings(config)
    configure_logging()
    return Group(settings).run()


if __name__ == "__main__":
    sys.exit(main())
