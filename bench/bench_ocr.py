"""OCR pages/s through the sandboxed pipeline against bare tesseract on the same pages.

A scanned PDF (no text layer) of the test set's pages (tests/ocr_helpers.py: horizontal,
vertical, table, each twice, A4 at 150 DPI) goes through sanitize on a warm converter
pool: rendering, OCR in the sandbox (one tesseract per CPU), encoding, PDF and `.txt`.
The baseline, in the same rounds (interleaved, medians): the same pages as PNG files,
one `tesseract` command after another as a user would run it (its OpenMP threads on),
and, for the record, the same pages two at a time with one thread each.

Run: `.venv/bin/python -m bench.bench_ocr` (or `make bench`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import quick, result
from converters.ocr import PAGE_SEGMENTATION
from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.convert_helpers import mail
from tests.ocr_helpers import DPI, cer, png, samples, scanned_pdf

TARGET_RATIO = 0.9
LANGUAGES = "jpn+jpn_vert+eng"


def _bare(path: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(["tesseract", str(path), "stdout", "-l", LANGUAGES, "--psm",
                    PAGE_SEGMENTATION, "--dpi", str(DPI), "tsv"], capture_output=True,
                   check=True, env=env)


def _timed(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def run() -> dict[str, Any]:
    pages = samples() * 2
    raw = mail([("scan.pdf", "application/pdf", scanned_pdf([s.image for s in pages]))])
    settings = Settings(workers=1)
    rounds = 1 if quick() else 3
    single = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    times: dict[str, list[float]] = {"bare": [], "bare_parallel": [], "pipeline": []}
    with tempfile.TemporaryDirectory() as tmp, AttachmentContext.from_settings(settings) as ctx:
        ctx.pool.warm()
        files = [Path(tmp, f"p{i}.png") for i in range(len(pages))]
        for path, page in zip(files, pages, strict=True):
            path.write_bytes(png(page.image))
        sanitized = sanitize(raw, "BENCH", settings, ctx)  # warm-up, and the text to check
        with ThreadPoolExecutor(2) as two:
            for _ in range(rounds):
                times["bare"].append(_timed(lambda: [_bare(f) for f in files]))
                times["pipeline"].append(_timed(lambda: sanitize(raw, "BENCH", settings, ctx)))
                times["bare_parallel"].append(_timed(
                    lambda: list(two.map(lambda f: _bare(f, single), files))))
    text = {r.filename: r.data for r in sanitized.outputs}["scan.txt"].decode()
    rate = {k: len(pages) / statistics.median(v) for k, v in times.items()}
    ratio = rate["pipeline"] / rate["bare"]
    return result(
        "OCR pages/s through the sandboxed pipeline (scanned A4, 150 DPI, median round)",
        round(rate["pipeline"], 2), "pages/s", f">= {TARGET_RATIO:g}x bare tesseract",
        ratio >= TARGET_RATIO, baseline=round(rate["bare"], 2),
        baseline_name="bare tesseract, page after page (its OpenMP threads on)",
        pages=len(pages), languages=LANGUAGES,
        bare_two_at_a_time_pages_per_s=round(rate["bare_parallel"], 2),
        pipeline_vs_bare_two_at_a_time=round(rate["pipeline"] / rate["bare_parallel"], 2),
        pipeline_seconds_per_page=round(1 / rate["pipeline"], 2),
        bare_seconds_per_page=round(1 / rate["bare"], 2),
        cer_all_pages=round(cer("\n".join(s.truth for s in pages), text), 3),
        load_average_1min=round(os.getloadavg()[0], 2), cpus=len(os.sched_getaffinity(0)))


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1, ensure_ascii=False))
