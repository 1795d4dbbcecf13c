"""Office documents per minute: the warm sandboxed pool vs a plain cold `soffice --convert-to pdf`.

Both run in the same process on the same documents (a 5-page Japanese docx, a two-sheet
xlsx, a 10-slide pptx), so the ratio is meaningful even on a noisy shared machine. The
cold baseline reuses one profile directory (its one-time creation is not counted): that is
how a naive gateway would call LibreOffice. The warm figures exclude the pool's start-up,
which is reported on its own.

Run: `make bench` (or `python -m bench office`); MUGAIKA_BENCH_QUICK=1 does one round.
Target: the warm pool converts at least 3x as many documents per minute as the cold run.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docx
import openpyxl
import pptx

from bench.common import quick, result
from converters.limits import ConversionPolicy
from converters.office import OfficeConverter
from converters.office_pool import OfficeConfig, OfficePool
from converters.package import package

TARGET_RATIO = 3.0


def documents() -> dict[str, bytes]:
    """Realistic small municipal documents, built fresh."""
    d = docx.Document()
    for page in range(5):
        d.add_heading(f"第{page + 1}章 事業計画", level=1)
        for _ in range(12):
            d.add_paragraph("本市は、住民サービスの向上と行政事務の効率化を図るため、" * 3)
        d.add_page_break()
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "予算"
    for row in range(1, 200):
        ws.append([f"項目{row}", row * 1000, row * 1100])
    wb.create_sheet("実績").append(["合計", 12345])
    deck = pptx.Presentation()
    for n in range(10):
        deck.slides.add_slide(deck.slide_layouts[1]).shapes.title.text = f"説明資料 {n + 1}"
    out = {}
    for name, obj in (("plan.docx", d), ("budget.xlsx", wb), ("slides.pptx", deck)):
        buf = io.BytesIO()
        obj.save(buf)
        out[name] = buf.getvalue()
    return out


def _rounds() -> int:
    return 1 if quick() else 3


def _cold(docs: dict[str, bytes], work: Path) -> list[float]:
    profile = f"-env:UserInstallation=file://{work}/profile"

    def once(path: Path) -> float:
        start = time.monotonic()
        subprocess.run(["soffice", profile, "--headless", "--norestore", "--convert-to", "pdf",
                        "--outdir", str(work / "out"), str(path)],
                       check=True, capture_output=True, timeout=300)
        return time.monotonic() - start

    paths = []
    for name, data in docs.items():
        (work / name).write_bytes(data)
        paths.append(work / name)
    once(paths[0])  # creates the profile: a one-time cost, not per document
    return [once(p) for _ in range(_rounds()) for p in paths]


def _warm(docs: dict[str, bytes]) -> dict[str, Any]:
    policy = ConversionPolicy()
    with OfficePool(OfficeConfig(pool_size=1)) as pool:
        start = time.monotonic()
        pool.warm_up()
        startup = time.monotonic() - start
        pdf_only, full = [], []
        for _ in range(_rounds()):
            for name, data in docs.items():
                t = time.monotonic()
                pool.convert(data, Path(name).suffix, policy.limits.max_pages)
                pdf_only.append(time.monotonic() - t)
        converter = OfficeConverter(pool)
        for _ in range(_rounds()):
            for name, data in docs.items():
                t = time.monotonic()
                # The pages render as they are read: packaging is part of the time.
                package(converter.convert(data, name, policy), "doc", policy)
                full.append(time.monotonic() - t)
    return {"startup": startup, "pdf_only": pdf_only, "full": full}


def _per_minute(times: list[float]) -> float:
    return round(60 * len(times) / sum(times), 1)


def run() -> dict[str, Any]:
    docs = documents()
    with tempfile.TemporaryDirectory(prefix="bench-office-") as tmp:
        cold = _cold(docs, Path(tmp))
    warm = _warm(docs)
    warm_rate, cold_rate = _per_minute(warm["pdf_only"]), _per_minute(cold)
    return result(
        "office documents to PDF, warm sandboxed pool", warm_rate, "docs/min",
        f">= {TARGET_RATIO:g}x cold", warm_rate >= TARGET_RATIO * cold_rate,
        baseline=cold_rate, baseline_name="cold soffice --convert-to pdf",
        documents=sorted(docs), rounds=_rounds(),
        cold_median_seconds=round(statistics.median(cold), 3),
        warm_pdf_median_seconds=round(statistics.median(warm["pdf_only"]), 3),
        warm_rendered_docs_per_minute=_per_minute(warm["full"]),
        warm_rendered_median_seconds=round(statistics.median(warm["full"]), 3),
        pool_startup_seconds=round(warm["startup"], 2),
    )


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
