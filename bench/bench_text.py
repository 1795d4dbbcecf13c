"""Text and HTML mail through sanitize + rebuild, and HTML→text on a 100 KB newsletter.

Every figure is printed beside a baseline measured in the same run (the machines are
noisy; compare ratios, not absolute times across runs):
- pipeline: mugaika sanitize+rebuild vs a naive stdlib gateway (parse with
  policy.default, take the first text part, build a new text/plain message);
- HTML→text: mugaika's converter vs a bare lexbor parse with scripts/styles stripped
  (selectolax `text()`, no layout, hidden text kept), timed in alternation after a
  gc.collect()/gc.freeze(), plus inscriptis and html2text when they are installed;
- nested-div bomb: mugaika's converter (depth guard: flattened beyond MAX_NESTING) vs a
  bare lexbor parse of the same 20,000 nested <div>s (about 100 KB; quadratic time).

Run: `.venv/bin/python -m bench.bench_text` (or `make bench`).
"""

from __future__ import annotations

import email
import email.policy
import gc
import statistics
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from converters.html import html_to_text
from gateway.pipeline.notice import load_templates
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.bodies_helpers import (
    b_word,
    base_headers,
    message,
    multipart,
    newsletter,
    text_part,
)

NEWSLETTER_BYTES = 100_000
BOMB_DEPTH = 20_000


def corpus() -> list[bytes]:
    """Typical text/HTML-only traffic: legacy Japanese text, alternative, HTML-only."""
    jis_text = "お世話になっております。①の件、髙橋より回答いたします。㈱テスト\n" * 20
    alt = multipart("alternative", "alt", [
        text_part("会議のご案内です。\n" * 100, "utf-8"),
        text_part("<p>会議のご案内です。</p>" * 100, "utf-8", subtype="html"),
    ])
    return [
        message(base_headers(subject=b_word("①ご案内", "ISO-2022-JP"),
                             Content_Type="text/plain; charset=ISO-2022-JP"),
                text_part(jis_text, "iso-2022-jp").split(b"\n\n", 1)[1]),
        message(base_headers(Content_Type='multipart/alternative; boundary="alt"'), alt),
        message(base_headers(Content_Type="text/html; charset=utf-8",
                             Content_Transfer_Encoding="8bit"),
                newsletter(20_000).encode()),
    ]


def _naive_gateway(raw: bytes) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = msg.get_body(preferencelist=("plain", "html"))
    text = str(body.get_content()) if body is not None else ""
    out = EmailMessage()
    out["Subject"] = str(msg.get("Subject", ""))
    out.set_content(text)
    return out.as_bytes()


def _per_second(func: Callable[[bytes], Any], items: list[bytes], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for raw in items:
            func(raw)
        done += len(items)
    return done / (time.perf_counter() - start)


def _median_ms(func: Callable[[], Any], repeat: int = 30) -> float:
    """Median wall time in ms (the machines are shared: medians, never single runs)."""
    func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _lexbor_plain(html: str) -> str:
    """The baseline: a bare lexbor parse, scripts and styles stripped, `text()`."""
    tree = LexborHTMLParser(html)
    tree.strip_tags(["script", "style"])
    return tree.body.text() if tree.body is not None else ""


def _html_ms(html: str, repeat: int = 60) -> tuple[float, float]:
    """Median ms of ours and of the baseline, timed in alternation so that load from
    other sessions falls on both alike.

    The pipeline measured before leaves a heap full of garbage and long-lived objects;
    collecting and freezing them (a worker's steady state after start-up) keeps that
    state out of both figures instead of charging it to whichever runs first.
    """
    gc.collect()
    gc.freeze()
    try:
        html_to_text(html)
        _lexbor_plain(html)
        ours: list[float] = []
        plain: list[float] = []
        for _ in range(repeat):
            for func, times in ((html_to_text, ours), (_lexbor_plain, plain)):
                start = time.perf_counter()
                func(html)
                times.append(time.perf_counter() - start)
    finally:
        gc.unfreeze()
    return statistics.median(ours) * 1000, statistics.median(plain) * 1000


def _html_baselines(html: str) -> dict[str, float]:
    """The converters mugaika does not use, when installed (too slow: see MEASURED.md)."""
    out: dict[str, float] = {}
    try:
        from inscriptis import get_text  # type: ignore[import-not-found]

        out["inscriptis_ms"] = _median_ms(lambda: get_text(html), repeat=5)
    except ImportError:
        pass
    try:
        import html2text  # type: ignore[import-not-found]

        out["html2text_ms"] = _median_ms(lambda: html2text.html2text(html), repeat=5)
    except ImportError:
        pass
    return out


def _bomb_ms() -> tuple[float, float]:
    """Median ms of ours and of a bare parse on a nested-div bomb (the bare parse takes
    about a second: few repeats)."""
    bomb = "<div>" * BOMB_DEPTH + "本文" + "</div>" * BOMB_DEPTH
    return (_median_ms(lambda: html_to_text(bomb), repeat=5),
            _median_ms(lambda: LexborHTMLParser(bomb), repeat=3))


def run(seconds: float = 3.0) -> dict[str, Any]:
    """Measure and print; returns the figures for `make bench`."""
    settings = Settings()
    templates = load_templates(settings)  # as the worker does: once, not per message
    items = corpus()
    ours = _per_second(
        lambda raw: rebuild(sanitize(raw, "BENCH", settings), settings, templates),
        items, seconds)
    naive = _per_second(_naive_gateway, items, seconds)
    html = newsletter(NEWSLETTER_BYTES * 7 // 10)  # characters; about 100 KB as UTF-8
    html_ms, plain_ms = _html_ms(html)
    figures: dict[str, Any] = {
        "text_html_messages_per_s": round(ours, 1),
        "baseline_stdlib_messages_per_s": round(naive, 1),
        "newsletter_bytes": len(html.encode()),
        "html_to_text_ms": round(html_ms, 2),
        "selectolax_plain_ms": round(plain_ms, 2),
        "html_to_text_vs_plain": round(html_ms / plain_ms, 2),
    }
    figures.update({k: round(v, 2) for k, v in _html_baselines(html).items()})
    print("text/HTML mail through sanitize+rebuild: "
          f"{figures['text_html_messages_per_s']} msg/s "
          f"(baseline naive stdlib gateway: {figures['baseline_stdlib_messages_per_s']} msg/s)")
    baselines = ", ".join(f"{k.removesuffix('_ms')} {v} ms" for k, v in figures.items()
                          if k.endswith("_ms") and k != "html_to_text_ms")
    print(f"HTML→text, {figures['newsletter_bytes']} byte newsletter: "
          f"{figures['html_to_text_ms']} ms, {figures['html_to_text_vs_plain']}x the bare "
          f"parse (baselines: {baselines})")
    bomb_ms, bomb_plain_ms = _bomb_ms()
    figures |= {"nested_div_bomb_ms": round(bomb_ms, 1),
                "nested_div_bomb_bare_parse_ms": round(bomb_plain_ms, 1)}
    print(f"nested-div bomb ({BOMB_DEPTH:,} levels): {figures['nested_div_bomb_ms']} ms "
          f"(baseline bare lexbor parse: {figures['nested_div_bomb_bare_parse_ms']} ms)")
    return figures


if __name__ == "__main__":
    run()
