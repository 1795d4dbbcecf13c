"""Clean-and-keep-editable vs page images, per document, in the same run.

The same four documents (a 5-page Japanese docx, a two-sheet xlsx, a 10-slide pptx from
bench/bench_office.py, a 10-page Japanese PDF from bench/bench_pdf.py) go through the
whole attachment pipeline (sandbox, warm pools) under the `cdr` treatment (two sandboxed
children: clean, check) and under `render` (LibreOffice and pdfium to page images,
encoded by trusted code). Warm-up first; then rounds interleaved so that drift on the
shared machine hits both alike; the median per document is reported.

Run: `make bench` (or `python -m bench cdr`); MUGAIKA_BENCH_QUICK=1 does one round.
Target: `cdr` takes no longer than `render` for every document (ratio render/cdr >= 1).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_office import documents
from bench.bench_pdf import build_pdf
from bench.common import quick, result
from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.convert_helpers import mail


def _seconds(raw: bytes, settings: Settings, ctx: AttachmentContext, expect: str) -> float:
    start = time.perf_counter()
    out = sanitize(raw, "BENCH", settings, ctx)
    elapsed = time.perf_counter() - start
    codes = {a.code for a in out.report.actions if a.filename}
    if codes != {expect}:
        raise RuntimeError(f"expected {expect!r}, got {codes}")
    return elapsed


def run() -> dict[str, Any]:
    docs = {**documents(), "notice.pdf": build_pdf(10)}
    rounds = 1 if quick() else 5
    with tempfile.TemporaryDirectory() as tmp:
        render = Settings(data_dir=Path(tmp), workers=2)
        cdr = render.model_copy(update={"treatment_office": "cdr", "treatment_pdf": "cdr"})
        with AttachmentContext.from_settings(render) as ctx:
            mails = {name: mail([(name, "application/octet-stream", data)])
                     for name, data in docs.items()}
            for raw in mails.values():  # warm-up: pools started, LibreOffice loaded
                _seconds(raw, render, ctx, "")
                _seconds(raw, cdr, ctx, "cdr")
            times: dict[str, dict[str, list[float]]] = {n: {"cdr": [], "render": []} for n in docs}
            for _ in range(rounds):
                for name, raw in mails.items():
                    times[name]["cdr"].append(_seconds(raw, cdr, ctx, "cdr"))
                    times[name]["render"].append(_seconds(raw, render, ctx, ""))
    per_doc = {name: {kind: round(statistics.median(v) * 1000, 1) for kind, v in t.items()}
               for name, t in times.items()}
    ratios = {name: round(t["render"] / t["cdr"], 2) for name, t in per_doc.items()}
    worst = min(ratios.values())
    total_cdr = sum(t["cdr"] for t in per_doc.values())
    total_render = sum(t["render"] for t in per_doc.values())
    return result("cdr: four documents, median ms (clean + check)", round(total_cdr, 1), "ms",
                  "render/cdr >= 1 for every document", worst >= 1.0,
                  baseline=round(total_render, 1), baseline_name="render (page images)",
                  per_document_ms=per_doc, render_over_cdr=ratios, rounds=rounds)
