"""Figures for a load test run: rates, latency percentiles and the gateway's peak memory."""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (what smtp-source users and most load tools report)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50), "p95": percentile(values, 95),
        "p99": percentile(values, 99), "max": max(values) if values else None,
    }


def _status_kib(pid: int, field_name: str) -> int:
    """A `VmRSS`/`VmHWM` value of /proc/PID/status in KiB (0 when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    """Direct and indirect children of `pid` (converter workers, LibreOffice)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, now."""
    return 1024 * sum(_status_kib(p, "VmRSS") for p in [pid, *_children(pid)])


@dataclass
class RssSampler:
    """Samples the process tree's RSS every `interval` seconds; keeps the peak.

    The process's own high-water mark (VmHWM) is read too: it catches a spike between
    samples in the main process, which a sampler alone would miss.
    """

    pid: int
    interval: float = 0.2
    peak_tree_bytes: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _loop(self) -> None:
        while True:
            rss = await asyncio.to_thread(tree_rss_bytes, self.pid)
            self.peak_tree_bytes = max(self.peak_tree_bytes, rss)
            self.samples += 1
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> dict[str, int]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {"pid": self.pid, "peak_tree_rss_bytes": self.peak_tree_bytes,
                "main_hwm_bytes": 1024 * _status_kib(self.pid, "VmHWM"),
                "samples": self.samples}
