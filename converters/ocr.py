"""OCR in the sandbox: text for pages that have none (scans, photos of documents).

Runs in the conversion child only (`converters.worker` passes every answer's images
through `OcrStage`), never in the gateway: tesseract parses pixels a hijacked converter
may have drawn, so it stays behind the same walls. Each page is recognized by a
`tesseract` process of its own (Debian's, models jpn + jpn_vert + eng), fed the page as
raw PNM on stdin and read as TSV on stdout: no file is written, the process inherits the
child's rlimits and seccomp filter, and `subprocess.run` kills and reaps it when the
page's time bound passes, so nothing is left running. Pages are recognized in parallel,
one process per CPU (tesseract's own OpenMP threads are off: separate pages scale
better than threads inside one page, measured in docs/ocr.md), and passed on in order.

What comes back is text (the `.txt` beside the rendering) and, for the invisible text
layer `converters.pdfwrite` may write, each recognized line with its box: tesseract's
boxes of Japanese "words" overlap one another, so a layer placed word by word copied out
of order, while Japanese type is even enough to spread a line over its box. The gateway
checks both (`converters.pixels.checked_words`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from converters.limits import OCR_NOTE_CUT as NOTE_CUT
from converters.limits import OCR_NOTE_RAN as NOTE_RAN
from converters.limits import ConversionPolicy, OcrPolicy
from converters.pdf import LINKS_MARK
from converters.pixels import MAX_WORD_CHARS, MAX_WORDS, Pixels, Word

TESSERACT = "/usr/bin/tesseract"
#: Automatic layout with orientation detection: reads horizontal and vertical pages and
#: sideways scans; sparse mode (12) read ruled tables better but lost a vertical page's
#: lines when its pixels were resampled (docs/ocr.md).
PAGE_SEGMENTATION = "1"
#: A text layer with fewer visible characters than this is no text layer (a page number
#: stamped on a scan); the page is recognized instead.
MIN_LAYER_CHARS = 10
#: A page with no pixel darker than this is blank: not worth tesseract's 0.5 s start.
BLANK_LEVEL = 245
#: Pages larger than this are scaled down for recognition (a 12 MP photo is ~300 DPI
#: of A4 already); the boxes are scaled back.
MAX_OCR_PIXELS = 12_000_000
#: Share of the attachment's wall-clock limit OCR may use; the rest is for rendering
#: and answering, so a long scan loses its later pages' text, never its images.
BUDGET_SHARE = 0.75
MAX_PROCESSES = 4
_LANGUAGES = re.compile(r"[a-z_]+(\+[a-z_]+)*")
_LATIN_END = re.compile(r"[0-9A-Za-z.,:;!?%)\]]$")
_LATIN_START = re.compile(r"^[0-9A-Za-z(\[@$]")


@dataclass
class _Tally:
    """What happened to each page, for the notes."""

    recognized: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    over_budget: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def wanted(policy: ConversionPolicy) -> bool:
    """OCR has somewhere to go: the `.txt`, or the PDF's text layer."""
    ocr = policy.ocr
    return ocr.enabled and (policy.extract_text or (ocr.text_layer
                                                     and policy.pdf_output == "pdf"))


def needs_ocr(pixels: Pixels) -> bool:
    """No usable text layer (links listed after it do not count) and some ink."""
    layer = pixels.text.partition(LINKS_MARK)[0]
    if len("".join(layer.split())) >= MIN_LAYER_CHARS:
        return False
    extrema = pixels.image().getextrema()
    if pixels.mode == "L":
        return int(extrema[0]) < BLANK_LEVEL  # type: ignore[arg-type]
    colours = extrema[:1] if pixels.mode == "LA" else extrema[:3]  # not the alpha band
    return min(int(band[0]) for band in colours) < BLANK_LEVEL  # type: ignore[index]


class OcrStage:
    """Pages in, the same pages out in order, those without text recognized on the way."""

    def __init__(self, policy: ConversionPolicy) -> None:
        self.policy = policy.ocr
        self.dpi = policy.dpi
        self.processes = max(1, min(len(os.sched_getaffinity(0)), MAX_PROCESSES))
        self.deadline = time.monotonic() + BUDGET_SHARE * policy.limits.wall_seconds
        self.tally = _Tally()

    def run(self, images: Iterable[Pixels]) -> Iterator[Pixels]:
        """`images` with OCR text; at most `processes` pages are read ahead.

        The thread pool starts after the first page: a PDF's renderers are forked when
        its first page is asked for, and forking must happen before any thread exists."""
        pending: deque[Future[Pixels]] = deque()
        pool: ThreadPoolExecutor | None = None
        try:
            for index, pixels in enumerate(images, 1):
                if pool is None:
                    pool = ThreadPoolExecutor(self.processes, thread_name_prefix="ocr")
                pending.append(pool.submit(self._page, index, pixels))
                while len(pending) > self.processes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _page(self, index: int, pixels: Pixels) -> Pixels:
        if not needs_ocr(pixels):
            return pixels
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.tally.over_budget.append(index)
            return pixels
        try:
            text, words = recognize(pixels, self.policy, self.dpi, min(remaining,
                                                                        self.policy.page_seconds))
        except subprocess.TimeoutExpired:
            self.tally.timed_out.append(index)
            return pixels
        except (OSError, subprocess.CalledProcessError, ValueError):
            self.tally.failed.append(index)
            return pixels
        self.tally.recognized.append(index)
        links = pixels.text.partition(LINKS_MARK)[2]
        text = text + LINKS_MARK + links if links else text
        return dataclasses.replace(pixels, text=text, words=words)

    def notes(self) -> tuple[str, ...]:
        """Facts for the report and notice: which pages were recognized, which not and why."""
        t, notes = self.tally, []
        if t.recognized:
            notes.append(f"{NOTE_RAN}text recognized on {_pages(t.recognized)} "
                         f"({self.policy.languages})")
        if t.timed_out:
            notes.append(f"{NOTE_CUT}{_pages(t.timed_out)} over the time bound "
                         f"({self.policy.page_seconds:g} s a page)")
        if t.over_budget:
            notes.append(f"{NOTE_CUT}{_pages(t.over_budget)} not recognized "
                         "(the attachment's time limit)")
        if t.failed:
            notes.append(f"{NOTE_CUT}{_pages(t.failed)} could not be recognized")
        return tuple(notes)


def _pages(indexes: list[int]) -> str:
    ordered = sorted(indexes)
    label = "page" if len(ordered) == 1 else "pages"
    return f"{label} {', '.join(str(i) for i in ordered)}"


def command(policy: OcrPolicy, dpi: int | None) -> list[str]:
    """The tesseract command line: image on stdin, TSV on stdout."""
    if not _LANGUAGES.fullmatch(policy.languages):
        raise ValueError("OCR languages must be model names joined by +")
    args = [TESSERACT, "stdin", "stdout", "-l", policy.languages, "--psm", PAGE_SEGMENTATION]
    if dpi is not None:
        args += ["--dpi", str(dpi)]
    return [*args, "tsv"]


def recognize(pixels: Pixels, policy: OcrPolicy, dpi: int, seconds: float
              ) -> tuple[str, tuple[Word, ...]]:
    """Text and words of one page, or `subprocess.TimeoutExpired` after `seconds` (the
    process is killed and reaped by then), `CalledProcessError` if tesseract failed."""
    img, scale = _grey(pixels)
    page_dpi = None if pixels.picture else round(dpi * scale)
    pnm = b"P5\n%d %d\n255\n" % img.size + img.tobytes()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_THREAD_LIMIT": "1",
           "HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108 - the scratch dir when set
    done = subprocess.run(command(policy, page_dpi), input=pnm, capture_output=True,
                          timeout=seconds, env=env, check=True)
    return parse_tsv(done.stdout.decode("utf-8", "replace"), 1 / scale, pixels)


def _grey(pixels: Pixels) -> tuple[Image.Image, float]:
    """The page in 8-bit grey (transparency on white), scaled into MAX_OCR_PIXELS."""
    img = pixels.image()
    if img.mode in {"RGBA", "LA"}:
        flat = Image.new("RGB", img.size, "white")
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    if img.mode != "L":
        img = img.convert("L")
    scale = min(1.0, (MAX_OCR_PIXELS / (img.width * img.height)) ** 0.5)
    if scale < 1.0:
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return img, scale


@dataclass
class _Line:
    box: tuple[int, int, int, int]
    words: list[Word] = field(default_factory=list)


def parse_tsv(tsv: str, back: float, pixels: Pixels) -> tuple[str, tuple[Word, ...]]:
    """Lines of text and the lines as placed words, boxes in `pixels`' own
    coordinates (`back` undoes the scaling); a line much taller than wide is vertical."""
    lines: dict[tuple[str, ...], _Line] = {}
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) != 12 or cols[0] not in {"4", "5"}:
            continue
        box = _box(cols[6:10], back, pixels)
        key = tuple(cols[1:5])
        if cols[0] == "4":
            lines[key] = _Line(box)
        elif key in lines and cols[11].strip():
            _, _, width, height = lines[key].box
            vertical = height > 2 * width
            lines[key].words.append(Word(cols[11].strip()[:MAX_WORD_CHARS], *box, vertical))
    placed = [Word(_join(line.words)[:MAX_WORD_CHARS], *line.box, line.words[0].vertical)
              for line in lines.values() if line.words]
    return _text(lines), tuple(placed[:MAX_WORDS])


def _box(cols: list[str], back: float, pixels: Pixels) -> tuple[int, int, int, int]:
    """A box in the page's pixels, clipped to the page (a rounding may reach over)."""
    left, top, width, height = (int(v) for v in cols)
    left = min(int(left * back), pixels.width - 1)
    top = min(int(top * back), pixels.height - 1)
    width = max(1, min(round(width * back), pixels.width - left))
    height = max(1, min(round(height * back), pixels.height - top))
    return left, top, width, height


def _text(lines: dict[tuple[str, ...], _Line]) -> str:
    """One line of text per recognized line, in tesseract's reading order (in sparse
    mode every line is a block of its own, so blocks say nothing about paragraphs)."""
    return "\n".join(_join(line.words) for line in lines.values() if line.words)


def _join(words: list[Word]) -> str:
    """Words of a line: Japanese runs together, a blank only between Latin words
    (tesseract splits Japanese lines into words at arbitrary places)."""
    text = words[0].text
    for word in words[1:]:
        latin = _LATIN_END.search(text) and _LATIN_START.search(word.text)
        text += (" " if latin else "") + word.text
    return text
