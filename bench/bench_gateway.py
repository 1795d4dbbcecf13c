"""Text/HTML mail through the whole gateway against a bare aiosmtpd, same client and load.

Whole gateway: SMTP in -> spool with fsync -> sanitize -> rebuild -> SMTP out to the load
test's sink, which matches every delivery; the figure is messages delivered per second.
Baseline: a bare aiosmtpd (its own process, stdlib loop) that accepts and discards; the
figure is messages accepted per second. Same client, same concurrency (20), same mix
(5 KB Japanese text and an HTML newsletter). Target: gateway >= 0.5 x baseline.

The same pair is also driven by Postfix's own C load client, smtp-source (no pipelining,
sessions kept open, 20 in all), so that the ratio does not rest on our client alone: its
figures are in the details (`smtp_source_*`), and the target holds for both clients.

Both servers stay up and are measured in turns (`ROUNDS` rounds of bare, then gateway);
the figures are the medians. On these shared machines the speed of the whole host drifts
by a third within minutes: one run of each, back to back, measured the drift as much as
the gateway.
"""

from __future__ import annotations

import statistics
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
    smtp_source,
    templates,
)

MIX = {"plain-5kb", "html-newsletter"}
TARGET = 0.5


#: Odd, so that the median is one of the rounds (its latency and memory are reported).
ROUNDS = 3


Runs = dict[str, list[dict[str, Any]]]


def _rounds(mix: Any, count: int) -> Runs:
    """ROUNDS runs against each server with each client, in turns, each server warmed up
    first: "bare"/"through" with the load test's client, "source_bare"/"source_through"
    with smtp-source."""
    bare_port, sink_port = free_port(), free_port()
    runs: Runs = {"bare": [], "through": [], "source_bare": [], "source_through": []}
    with child(["-m", "bench.bare_smtpd", "--port", str(bare_port)], bare_port), \
            tempfile.TemporaryDirectory(prefix="mugaika-bench-gw-") as tmp, \
            gateway(sink_port, Path(tmp)) as (proc, port):
        load(bare_port, mix, min(100, count))  # warm-up: imports, pools, connections
        load(port, mix, min(100, count), sink_port)
        for _ in range(ROUNDS):
            runs["bare"].append(load(bare_port, mix, count))
            runs["through"].append(load(port, mix, count, sink_port, proc.pid))
            runs["source_bare"].append(smtp_source(bare_port, mix, count))
            runs["source_through"].append(smtp_source(port, mix, count, sink_port))
    return runs


def _harness(mix: Any, count: int) -> float | None:
    """The client sending straight to its own sink: the most this harness can measure.

    A gateway figure close to this would be limited by the load test, not the gateway.
    """
    port = free_port()
    rate: float | None = load(port, mix, count, sink_port=port)["delivered_per_s"]
    return rate


def _smtp_source_figures(runs: Runs, count: int) -> dict[str, Any]:
    """smtp-source's medians: delivered through the gateway, accepted by the bare server."""
    through = [r["delivered_per_s"] or 0.0 for r in runs["source_through"]]
    bare = [r["accepted_per_s"] for r in runs["source_bare"]]
    rate, base = statistics.median(through), statistics.median(bare)
    return {"smtp_source_gateway_delivered_per_s": rate,
            "smtp_source_bare_accepted_per_s": base,
            "smtp_source_ratio": rate / base if base else None,
            "smtp_source_gateway_delivered_per_s_rounds": through,
            "smtp_source_bare_accepted_per_s_rounds": bare,
            "smtp_source_gateway_accepted_per_s_rounds": [
                r["accepted_per_s"] for r in runs["source_through"]],
            "smtp_source_lost": sum(count - (r["delivered"] or 0)
                                    for r in runs["source_through"])}


def run() -> dict[str, Any]:
    count = 400 if quick() else 3000
    with corpus(MIX) as directory:
        mix = templates(directory, MIX)
        runs = _rounds(mix, count)
        ceiling = _harness(mix, count)
    bare, through = runs["bare"], runs["through"]
    rates = [r.get("delivered_per_s") or 0.0 for r in through]
    bases = [b["accepted_per_s"] for b in bare]
    rate, base = statistics.median(rates), statistics.median(bases)
    middle = through[rates.index(rate)]  # ROUNDS is odd: the median is one of them
    source = _smtp_source_figures(runs, count)
    ok = bool(all(r["ok"] for r in through) and rate and base and rate / base >= TARGET
              and not source["smtp_source_lost"]
              and (source["smtp_source_ratio"] or 0.0) >= TARGET)
    return result(
        "gateway text/HTML msgs/s (SMTP in -> spool fsync -> sanitize -> SMTP out)", rate,
        "msgs/s", f">= {TARGET} x baseline (with our client and with smtp-source)", ok, base,
        "bare aiosmtpd accept+discard",
        count=count, concurrency=CONCURRENCY, rounds=ROUNDS, harness_ceiling_per_s=ceiling,
        gateway_delivered_per_s_rounds=rates, bare_accepted_per_s_rounds=bases,
        gateway_accepted_per_s=middle["accepted_per_s"],
        latency_s=middle.get("latency_s"), lost=sum(r.get("lost") or 0 for r in through),
        mismatches=sum(r.get("mismatch_count") or 0 for r in through),
        memory=middle.get("memory"),
        bare_replies=bare[0]["smtp_replies"], gateway_replies=middle["smtp_replies"],
        **source)
