"""`make bench`: run every benchmark present, print figures beside same-run baselines.

Modules run in order (those not present yet are listed as such); each `run()` returns a
dict (see bench/common.py `result`: name, value, unit, baseline, ratio, target, pass,
details). The table goes to stdout and everything, with the machine it ran on, to
bench/results/latest.json. `python -m bench gateway memory` runs a subset;
MUGAIKA_BENCH_QUICK=1 makes a smaller, noisier smoke run.
Exit status: 0 when every benchmark met its target, 1 otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODULES = ("text", "pdf", "office", "cdr", "ocr", "auth", "gateway", "memory", "console",
           "cluster")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Enough to tell two machines apart when comparing results."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) * 1024 for line in
                Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
            "python": platform.python_version(), "kernel": platform.release(),
            "quick": os.environ.get("MUGAIKA_BENCH_QUICK", "") not in ("", "0")}


def run_one(short: str) -> dict[str, Any]:
    name = f"bench.bench_{short}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return {"status": "not present"}
    started = time.monotonic()
    try:
        outcome: dict[str, Any] = module.run()
    except Exception:  # a broken benchmark must not hide the others' figures
        return {"status": "error", "error": traceback.format_exc(limit=5)}
    return {"status": "ran", "seconds": round(time.monotonic() - started, 1), **outcome}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("bench", "figure", "baseline", "ratio", "target", "ok")]
    for short, r in results.items():
        if r.get("status") != "ran":
            rows.append((short, r.get("status", "?"), "", "", "", ""))
            continue
        if "value" not in r:  # a module with its own figures: one line per scalar figure
            rows += [(short if i == 0 else "", f"{k} = {_fmt(v)}", "", "", "", "")
                     for i, (k, v) in enumerate(
                         (k, v) for k, v in r.items()
                         if k not in ("status",) and isinstance(v, int | float | str))]
            continue
        unit = r.get("unit", "")
        rows.append((short, f"{_fmt(r.get('value'))} {unit}".strip(),
                     f"{_fmt(r.get('baseline'))} {r.get('baseline_name', '')}".strip(),
                     _fmt(r.get("ratio")), str(r.get("target", "")),
                     {True: "yes", False: "NO", None: "-"}[r.get("pass")]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def main(argv: list[str]) -> int:
    wanted = argv or list(MODULES)
    unknown = set(wanted) - set(MODULES)
    if unknown:
        print(f"unknown benchmark(s): {sorted(unknown)}; known: {MODULES}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    for short in wanted:
        print(f"[bench] {short} ...", file=sys.stderr, flush=True)
        results[short] = run_one(short)
        if results[short].get("status") == "error":
            print(results[short]["error"], file=sys.stderr)
    print(table(results))
    RESULTS.mkdir(exist_ok=True)
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "results": results}
    (RESULTS / "latest.json").write_text(json.dumps(report, ensure_ascii=False, indent=2)
                                         + "\n", encoding="utf-8")
    failed = [s for s, r in results.items()
              if r.get("status") == "error" or r.get("pass") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
