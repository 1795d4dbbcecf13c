"""PDF throughput through the converter pipeline against the raw renderer, in one run.

Figures (ratios matter, absolute numbers move with machine load):
- raw_render_pages_per_s: pypdfium2 rendering at 150 DPI to a PIL image, one process;
- raw/pipeline CPU ms per page: the work itself, which other load on the host barely moves;
- pipeline_pages_per_s: PdfConverter (render to pixels + text) in-process, using every
  core, then the delivered files written from the pixels (`converters.package`: classify
  + encode + image-only PDF); sandboxed_pages_per_s: the same with the rendering in the
  bwrap pool, each page's pixels crossing back raw and encoded as they arrive;
- peak_rss_mb_50_pages: peak resident memory of the converter and its renderers for a
  50-page PDF (measured in a child process via getrusage);
- worker_start_ms vs pooled_small_ms: what a small attachment would pay without the pool;
- text extraction pages/s, pypdfium2 against pdfminer.six, on the same PDF.

Pass/fail: median raw time / median pipeline time over interleaved rounds, in-process and
sandboxed, must both reach TARGET_RATIO (best-of times are in the details). The raw baseline renders 3-byte
RGB; the pipeline renders RGBX (no copy into PIL) and grey pages in grey, so it can beat
the baseline on one core.

Run: .venv/bin/python -m bench pdf (MUGAIKA_BENCH_QUICK=1: 3 rounds instead of 9)
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import quick, result

PAGES = 20
DPI = 150
#: Issue #4: the pipeline keeps at least this share of the raw renderer's page rate.
TARGET_RATIO = 0.8
FONT = "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"


def build_pdf(pages: int) -> bytes:
    """Japanese text pages, table pages and a photo page in turn (like a council report)."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(TTFont("IPAexG", FONT))
    photo = Image.effect_mandelbrot((1200, 900), (-2.0, -1.2, 1.0, 1.2), 200).convert("RGB")
    photo = Image.merge("RGB", (photo.getchannel(0), photo.getchannel(0).rotate(45),
                                Image.effect_noise((1200, 900), 50)))
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for page in range(pages):
        pdf.setFont("IPAexG", 11)
        kind = page % 3
        if kind == 2:
            pdf.drawImage(ImageReader(photo), 60, 300, width=480, height=360)
            pdf.drawString(60, 280, f"写真 {page + 1}: 市内の様子（説明文）")
        for line in range(40 if kind == 0 else 12):
            y = 790 - line * 18
            if kind == 1:
                for col in range(5):
                    pdf.rect(60 + col * 95, y - 4, 95, 18)
                    pdf.drawString(64 + col * 95, y, f"項目{line}-{col} ¥{line * col * 1000:,}")
            elif kind == 0:
                pdf.drawString(60, y, f"第{page + 1}頁 令和6年度 予算の概要について 行{line} "
                                      "住民サービスの向上を図ります。")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def _rate(pages: int, seconds: float) -> float:
    return round(pages / seconds, 1)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the forked renderers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _best_cpu_of(runs: int, fn: Any) -> float:
    """Least CPU time of `runs` calls: unlike wall time, barely moved by other load."""
    best = float("inf")
    for _ in range(runs):
        start = _cpu()
        fn()
        best = min(best, _cpu() - start)
    return best


def _best_of(runs: int, fn: Any) -> float:
    """Best wall time of `runs` calls: the least disturbed by other load on the machine."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def raw_render(data: bytes) -> None:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(data)
    for i in range(len(doc)):
        doc[i].render(scale=DPI / 72, rev_byteorder=True).to_pil()


def pipeline(data: bytes) -> None:
    """Render in this process and write the delivered files from the pixels, as the
    gateway's trusted code does (`converters.package`)."""
    from converters.limits import ConversionPolicy
    from converters.package import package
    from converters.pdf import PdfConverter

    policy = ConversionPolicy(dpi=DPI)
    package(PdfConverter().convert(data, "a.pdf", policy), "a", policy)


def sandboxed(pool: Any, data: bytes, policy: Any) -> None:
    """Render in the sandbox; each page encoded by the gateway as its pixels arrive."""
    from converters.package import Packager

    with Packager("a", policy) as packager:
        packager.finish(pool.convert("pdf", data, "a.pdf", policy, packager.add))


def interleaved(data: bytes, rounds: int) -> dict[str, Any]:
    """Raw, pipeline and sandboxed runs alternate, so load from other processes hits all
    three alike; the median and the best time of each are kept."""
    from converters.limits import ConversionPolicy
    from converters.registry import Registry
    from converters.sandbox import SandboxConfig, SandboxPool

    policy = ConversionPolicy(dpi=DPI)
    times: dict[str, list[float]] = {"raw": [], "pipeline": [], "sandboxed": []}
    with SandboxPool(SandboxConfig(Registry().targets()), 1) as pool:
        pool.warm()
        runs = {"raw": lambda: raw_render(data), "pipeline": lambda: pipeline(data),
                "sandboxed": lambda: sandboxed(pool, data, policy)}
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(_best_of(1, fn))
        cpu = {"sandboxed": min(
            int(pool.convert("pdf", data, "a.pdf", policy).extra["cpu_ms"]) / 1000
            for _ in range(rounds))}
        cpu["raw"] = _best_cpu_of(rounds, runs["raw"])
        cpu["pipeline"] = _best_cpu_of(rounds, runs["pipeline"])
    return {"median": {k: statistics.median(v) for k, v in times.items()},
            "best": {k: min(v) for k, v in times.items()}, "cpu": cpu}


def startup(small: bytes) -> dict[str, float]:
    from converters.limits import ConversionPolicy
    from converters.registry import Registry
    from converters.sandbox import SandboxConfig, SandboxPool, Worker

    config = SandboxConfig(Registry().targets())
    policy = ConversionPolicy(dpi=DPI)
    starts, cold = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        worker = Worker(config)
        worker.convert("text", small, "a.csv", policy)
        cold.append(time.perf_counter() - t0)
        starts.append(worker.startup_seconds)
        worker.stop()
    with SandboxPool(config, 2) as pool:
        pool.warm()
        warm = []
        for _ in range(20):
            t0 = time.perf_counter()
            pool.convert("text", small, "a.csv", policy)
            warm.append(time.perf_counter() - t0)
    return {
        "worker_start_ms": round(statistics.median(starts) * 1000, 1),
        "unpooled_small_ms": round(statistics.median(cold) * 1000, 1),
        "pooled_small_ms": round(statistics.median(warm) * 1000, 2),
    }


def text_extraction(data: bytes) -> dict[str, float]:
    import pypdfium2 as pdfium
    from pdfminer.high_level import extract_text

    def pdfium_text() -> None:
        doc = pdfium.PdfDocument(data)
        for i in range(len(doc)):
            doc[i].get_textpage().get_text_bounded()
    pages = len(pdfium.PdfDocument(data))
    return {
        "text_pypdfium2_pages_per_s": _rate(pages, _best_of(3, pdfium_text)),
        "text_pdfminer_pages_per_s": _rate(pages, _best_of(1, lambda: extract_text(
            io.BytesIO(data)))),
    }


_PEAK = """
import resource, sys
from converters.limits import ConversionPolicy
from converters.pdf import PdfConverter
data = open(sys.argv[1], "rb").read()
for _ in PdfConverter().convert(data, "a.pdf", ConversionPolicy()).images:
    pass  # pages stream out as they are rendered; the gateway's memory is not measured here
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(own, kids)
"""


def peak_memory(pages: int = 50) -> dict[str, float]:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pdf") as tmp:
        tmp.write(build_pdf(pages))
        tmp.flush()
        done = subprocess.run([sys.executable, "-c", _PEAK, tmp.name], capture_output=True,
                              text=True, check=True, timeout=300)
    own, kids = (int(v) for v in done.stdout.split())
    return {"peak_rss_mb_50_pages_converter": round(own / 1024, 1),
            "peak_rss_mb_50_pages_renderer": round(kids / 1024, 1)}


def run() -> dict[str, Any]:
    data = build_pdf(PAGES)
    small = "氏名,金額\n山田,1200\n".encode()
    m = interleaved(data, rounds=3 if quick() else 9)
    median, best, cpu = m["median"], m["best"], m["cpu"]
    pipeline_ratio, sandboxed_ratio = (median["raw"] / median[k] for k in ("pipeline", "sandboxed"))
    return result(
        "PDF pages/s through the sandboxed pipeline at 150 DPI (median round)",
        _rate(PAGES, median["sandboxed"]), "pages/s",
        f">= {TARGET_RATIO:g}x raw render (in-process and sandboxed)",
        min(pipeline_ratio, sandboxed_ratio) >= TARGET_RATIO,
        baseline=_rate(PAGES, median["raw"]), baseline_name="raw pypdfium2 render, 1 process",
        pages=PAGES, dpi=DPI,
        pipeline_pages_per_s=_rate(PAGES, median["pipeline"]),
        pipeline_vs_raw=round(pipeline_ratio, 2), sandboxed_vs_raw=round(sandboxed_ratio, 2),
        best_raw_pages_per_s=_rate(PAGES, best["raw"]),
        best_pipeline_pages_per_s=_rate(PAGES, best["pipeline"]),
        best_sandboxed_pages_per_s=_rate(PAGES, best["sandboxed"]),
        # CPU per page is what load cannot distort; with N idle cores the pipeline's wall
        # rate approaches N x raw_cpu / pipeline_cpu of the one-process raw render rate.
        raw_cpu_ms_per_page=round(cpu["raw"] / PAGES * 1000, 1),
        pipeline_cpu_ms_per_page=round(cpu["pipeline"] / PAGES * 1000, 1),
        sandboxed_cpu_ms_per_page=round(cpu["sandboxed"] / PAGES * 1000, 1),
        load_average_1min=round(os.getloadavg()[0], 2),
        cpus=len(os.sched_getaffinity(0)),
        **startup(small),
        **text_extraction(data),
        **peak_memory(),
    )


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
