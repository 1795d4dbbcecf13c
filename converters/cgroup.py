"""A pids cgroup per sandbox: a fork bomb in a converter stops at its own limit.

RLIMIT_NPROC bounds processes per user on the whole host, and the kernel ignores it for
root: a gateway run as root (as in the tests) would let one hostile document fill the
host's process table. So each sandboxed worker is started inside a cgroup of its own
whose `pids.max` is its limit, when the host lets the gateway make one: cgroup v1's
pids hierarchy, or a cgroup v2 tree where the pids controller is enabled for us (under
systemd: `Delegate=pids` in the unit; deploy/mugaika.service). Without either, the
sandbox starts without it, RLIMIT_NPROC is what is left (effective for a service user),
and `TasksMax=` of the unit bounds the whole service (docs/threat-model.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

V1_PIDS = Path("/sys/fs/cgroup/pids")
V2_ROOT = Path("/sys/fs/cgroup")
#: The shell line that moves itself into the cgroup given as $1, then becomes the sandbox:
#: everything bwrap starts is then born inside it (a cgroup move afterwards would miss
#: the processes bwrap forks at once).
JOIN = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'


def _own_v2() -> Path | None:
    """This process's cgroup v2 directory, when the pids controller can be used under it."""
    try:
        line = next(entry for entry in Path("/proc/self/cgroup").read_text().splitlines()
                    if entry.startswith("0::"))
    except (OSError, StopIteration):
        return None
    own = V2_ROOT / line[3:].lstrip("/")
    try:
        return own if "pids" in (own / "cgroup.subtree_control").read_text().split() else None
    except OSError:
        return None


def make(name: str, max_pids: int) -> Path | None:
    """A fresh cgroup `name` with `pids.max` set, or None where none can be made."""
    for parent in (V1_PIDS / "mugaika", _own_v2()):
        if parent is None:
            continue
        path = parent / name
        try:
            path.mkdir(parents=True, exist_ok=False)
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            remove(path)
            continue
        return path
    return None


def wrap(path: Path | None, command: list[str]) -> list[str]:
    """`command`, started inside the cgroup at `path` (unchanged without one)."""
    if path is None:
        return command
    return ["/bin/sh", "-c", JOIN, "sh", str(path), *command]


def remove(path: Path | None) -> None:
    """Remove the cgroup once its last process is gone (a killed sandbox takes a moment
    to be reaped); best effort."""
    if path is None:
        return
    for _ in range(100):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
        else:
            return
