"""Peak memory of the gateway while 20 MB mails with 10 attachments flow through it.

The figure is the peak resident memory of the gateway's whole process tree (sampled every
0.2 s from /proc, so converter children and LibreOffice count), while the load test sends
the corpus' 20 MB mail at the gateway benchmark's concurrency (20). Target: < 1.5 GB.
No baseline ratio: the target is absolute. The run must lose nothing; verdict or
attachment mismatches against the manifest are listed in the details but do not fail a
memory figure (they are the load test's and the converters' business).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    CONCURRENCY,
    corpus,
    free_port,
    gateway,
    load,
    quick,
    result,
    templates,
)

LIMIT = int(1.5 * 2**30)


def run() -> dict[str, Any]:
    count = CONCURRENCY if quick() else 2 * CONCURRENCY
    sink_port = free_port()
    with corpus({"large-20mb"}) as directory, \
            tempfile.TemporaryDirectory(prefix="mugaika-bench-mem-") as tmp, \
            gateway(sink_port, Path(tmp)) as (proc, port):
        through = load(port, templates(directory, {"large-20mb"}), count, sink_port, proc.pid)
    memory = through["memory"] or {}
    peak = memory.get("peak_tree_rss_bytes", 0)
    return result(
        "gateway peak RSS, 20 MB mails with 10 attachments", peak / 2**20, "MiB",
        f"< {LIMIT / 2**20:.0f} MiB", bool(through.get("lost") == 0 and 0 < peak < LIMIT),
        count=count, concurrency=CONCURRENCY, main_hwm_mib=memory.get("main_hwm_bytes", 0)
        / 2**20, delivered_per_s=through.get("delivered_per_s"),
        attachments_per_s=through.get("attachments_per_s"), lost=through.get("lost"),
        mismatches=through.get("mismatches", [])[:5], outcomes=through.get("outcomes"))
