"""Text/HTML mail through the whole gateway against a bare aiosmtpd, same client and load.

Whole gateway: SMTP in -> spool with fsync -> sanitize -> rebuild -> SMTP out to the load
test's sink, which matches every delivery; the figure is messages delivered per second.
Baseline: a bare aiosmtpd (its own process, stdlib loop) that accepts and discards; the
figure is messages accepted per second. Same client, same concurrency (20), same mix
(5 KB Japanese text and an HTML newsletter). Target: gateway >= 0.5 x baseline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    CONCURRENCY,
    child,
    corpus,
    free_port,
    gateway,
    load,
    quick,
    result,
    templates,
)

MIX = {"plain-5kb", "html-newsletter"}
TARGET = 0.5


def _bare(mix: Any, count: int) -> dict[str, Any]:
    port = free_port()
    with child(["-m", "bench.bare_smtpd", "--port", str(port)], port):
        load(port, mix, min(100, count))  # warm-up
        return load(port, mix, count)


def _gateway(mix: Any, count: int) -> dict[str, Any]:
    sink_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mugaika-bench-gw-") as tmp, \
            gateway(sink_port, Path(tmp)) as (proc, port):
        load(port, mix, min(100, count), sink_port)  # warm-up: imports, pools, connections
        return load(port, mix, count, sink_port, proc.pid)


def _harness(mix: Any, count: int) -> float | None:
    """The client sending straight to its own sink: the most this harness can measure.

    A gateway figure close to this would be limited by the load test, not the gateway.
    """
    port = free_port()
    rate: float | None = load(port, mix, count, sink_port=port)["delivered_per_s"]
    return rate


def run() -> dict[str, Any]:
    count = 400 if quick() else 3000
    with corpus(MIX) as directory:
        mix = templates(directory, MIX)
        bare = _bare(mix, count)
        through = _gateway(mix, count)
        ceiling = _harness(mix, count)
    rate = through.get("delivered_per_s")
    base = bare["accepted_per_s"]
    ok = bool(through["ok"] and rate and base and rate / base >= TARGET)
    return result(
        "gateway text/HTML msgs/s (SMTP in -> spool fsync -> sanitize -> SMTP out)", rate,
        "msgs/s", f">= {TARGET} x baseline", ok, base, "bare aiosmtpd accept+discard",
        count=count, concurrency=CONCURRENCY, harness_ceiling_per_s=ceiling,
        gateway_accepted_per_s=through["accepted_per_s"],
        latency_s=through.get("latency_s"), lost=through.get("lost"),
        mismatches=through.get("mismatch_count"), memory=through.get("memory"),
        bare_replies=bare["smtp_replies"], gateway_replies=through["smtp_replies"])
