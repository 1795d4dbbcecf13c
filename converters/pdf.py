"""PDF → page images (an image-only PDF by default), plus the text layer as UTF-8.

pypdfium2 renders (the pdfium in its wheels has no JavaScript or XFA engine, so nothing
in the file runs). Pages are rendered at the policy DPI by as many processes as there
are idle CPUs (this one and forked renderers) and leave as raw pixels (grey pages as one
byte a pixel): the gateway encodes them (`converters.package`), never this process.
Text comes from pdfium too: about 800 pages/s against pdfminer.six's 24 on the same
Japanese PDF with the same text (bench/bench_pdf.py).

Caps: `max_pages` pages are rendered, the rest are named in a note; a page whose pixels
at the policy DPI would exceed `max_page_pixels` is rendered at a lower DPI (and noted).
Active content (JavaScript, OpenAction, Launch, ...) is reported, never carried over:
only pixels and text leave.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from converters import pdfscan
from converters.base import Conversion
from converters.encode import is_grey, to_grey4, to_jpeg
from converters.errors import Corrupt, Encrypted, LimitExceeded, SandboxFailure
from converters.framing import (
    FramingError,
    frame_bound,
    pixels_frame,
    read_frame,
    widen_pipe,
    write_frame,
)
from converters.limits import ConversionPolicy
from converters.pdfwrite import Page, write_pdf
from converters.pixels import Pixels, checked

#: Renderer processes per PDF; two cores measured 1.9-2.0x one (docs/MEASURED.md).
MAX_RENDER_PROCESSES = 4
#: A forked renderer costs about a page of work before its first page (page faults, this
#: document's fonts), so a process is worth forking only for at least this many pages.
MIN_PAGES_PER_PROCESS = 2
#: A preview this small (about 24 DPI for A4) tells grey pages from colour ones in ~1 ms.
PREVIEW_PIXELS = 60_000
#: How deep into nested form XObjects to look for images.
IMAGE_SEARCH_DEPTH = 3
#: Between a page's text and the link targets listed after it (`converters.ocr` looks
#: for it: the links are not the page's text).
LINKS_MARK = "\n\n[links]\n"


def open_document(untrusted: bytes) -> pdfium.PdfDocument:
    """Open or raise `Encrypted` (a user password is set) or `Corrupt`."""
    try:
        return pdfium.PdfDocument(untrusted)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise Encrypted("PDF needs a password") from exc
        raise Corrupt("PDF could not be opened") from exc


def page_scale(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> tuple[float, bool]:
    """Render scale for a page, reduced so the bitmap stays within `max_pixels`."""
    scale = dpi / 72.0
    pixels = (width_pt * scale) * (height_pt * scale)
    if pixels <= max_pixels:
        return scale, False
    return scale * math.sqrt(max_pixels / pixels) * 0.999, True


def render_page(doc: pdfium.PdfDocument, index: int, policy: ConversionPolicy) -> Pixels:
    """One page's pixels (reduced to the pixel cap) and, by policy, its text and links."""
    page = doc[index]
    width_pt, height_pt = page.get_size()
    if width_pt <= 0 or height_pt <= 0:
        raise Corrupt("page without size")
    scale, _ = page_scale(width_pt, height_pt, policy.dpi, policy.limits.max_page_pixels)
    mode, width, height, data = _render(page, scale, width_pt * height_pt,
                                        grey_ok=policy.pdf_output == "pdf")
    text = ""
    if policy.extract_text:
        text = page.get_textpage().get_text_bounded().replace("\r\n", "\n").replace("\r", "\n")
        links = pdfscan.link_targets(doc, page)
        if links:
            text = text.rstrip() + LINKS_MARK + "\n".join(links)
    return Pixels(mode, width, height, data, width_pt, height_pt, text=text)


def _render(page: pdfium.PdfPage, scale: float, area_pt: float, grey_ok: bool
            ) -> tuple[str, int, int, bytes]:
    """Mode, size and pixels of the page.

    Grey pages are rendered grey (pdfium draws them 3-5x faster than colour, and they
    cross as one byte a pixel) when they may end in the image-only PDF as 4-bit grey.
    Pages with images skip the preview: it would decode every image twice (16 ms for a
    photo page, measured), and the encoder classifies the full rendering anyway.
    Colour crosses as 3-byte RGB straight from pdfium's bitmap, never through PIL here."""
    if grey_ok and not _has_images(page):
        preview_scale = math.sqrt(PREVIEW_PIXELS / area_pt)
        if is_grey(_render_colour(page, preview_scale)):
            grey = page.render(scale=scale, may_draw_forms=True, grayscale=True)
            return "L", grey.width, grey.height, _rows(grey, 1)
    colour = page.render(scale=scale, may_draw_forms=True, rev_byteorder=True)
    return "RGB", colour.width, colour.height, _rows(colour, 3)


def _rows(bitmap: pdfium.PdfBitmap, channels: int) -> bytes:
    """The bitmap's pixels without the padding pdfium may put at the end of each row."""
    raw = memoryview(bitmap.buffer).cast("B")
    row = bitmap.width * channels
    if bitmap.stride == row:
        return raw[:row * bitmap.height].tobytes()
    return b"".join(raw[y * bitmap.stride:y * bitmap.stride + row] for y in range(bitmap.height))


def _render_colour(page: pdfium.PdfPage, scale: float) -> Image.Image:
    bitmap = page.render(scale=scale, may_draw_forms=True, rev_byteorder=True,
                         prefer_bgrx=True)
    image: Image.Image = bitmap.to_pil()
    return image


def _has_images(page: pdfium.PdfPage) -> bool:
    return _contains_image(page.raw, pdfium_c.FPDFPage_CountObjects, pdfium_c.FPDFPage_GetObject)


def _contains_image(parent: Any, count: Callable[[Any], int], get: Callable[[Any, int], Any],
                    depth: int = IMAGE_SEARCH_DEPTH) -> bool:
    """An image among a page's (or form XObject's) objects, `depth` forms deep. Raw calls:
    pypdfium2's `get_objects` builds a wrapper per object, 4x slower on a table page."""
    for i in range(count(parent)):
        obj = get(parent, i)
        kind = pdfium_c.FPDFPageObj_GetType(obj)
        if kind == pdfium_c.FPDF_PAGEOBJ_IMAGE:
            return True
        if kind == pdfium_c.FPDF_PAGEOBJ_FORM and depth > 1 and _contains_image(
                obj, pdfium_c.FPDFFormObj_CountObjects, pdfium_c.FPDFFormObj_GetObject, depth - 1):
            return True
    return False


def _render_share(doc: pdfium.PdfDocument, indexes: range, policy: ConversionPolicy,
                  write_fd: int) -> None:
    """In a forked renderer: render our pages and stream them back as frames."""
    code = 0
    try:
        with os.fdopen(write_fd, "wb") as out:
            for index in indexes:
                write_frame(out, *pixels_frame(render_page(doc, index, policy)))
    except BaseException:  # a renderer reports failure by its exit status
        code = 1
    os._exit(code)


def _drain(stream: IO[bytes], pages: queue.SimpleQueue[Pixels | None],
           policy: ConversionPolicy) -> None:
    """On a thread: take a renderer's pages off its pipe as they come, so that it never
    waits for this process to want them; None marks the end (or a broken renderer).
    The frames are the ones that go on to the gateway (`pixels_frame`)."""
    try:
        while True:
            header, (data, text) = read_frame(stream, frame_bound(policy.limits))
            pages.put(checked(header["pixels"], data, text, policy.limits))
    except (EOFError, FramingError, SandboxFailure, ValueError, KeyError):
        pages.put(None)


def _received(pages: queue.SimpleQueue[Pixels | None]) -> Pixels:
    """The next page of a renderer's share, or `SandboxFailure` if it ended early."""
    page = pages.get()
    if page is None:
        raise SandboxFailure("a PDF renderer failed")
    return page


def _start_renderers(doc: pdfium.PdfDocument, count: int, procs: int,
                     policy: ConversionPolicy) -> list[tuple[int, int]]:
    """Fork a renderer for each share; (pid, read fd) for each."""
    children: list[tuple[int, int]] = []
    for k in range(procs):
        read_fd, write_fd = os.pipe()
        widen_pipe(read_fd)
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for _, other_fd in children:
                os.close(other_fd)
            _render_share(doc, range(k, count, procs), policy, write_fd)
        os.close(write_fd)
        children.append((pid, read_fd))
    return children


def _reap(children: list[tuple[int, int]], kill: bool) -> bool:
    """Wait for every renderer (killed first when we gave up); True if all exited cleanly."""
    clean = True
    for pid, _ in children:
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        clean = clean and status == 0
    return clean


def free_cpus() -> int:
    """Our CPUs minus the tasks other than us that are runnable right now (the kernel's
    instantaneous count in /proc/loadavg, not namespaced, so right inside the sandbox too).

    Splitting a document pays only on idle cores: on busy ones (the gateway converting
    other attachments, other load) a forked renderer's start-up and copy-on-write are
    pure cost (measured: 1.3-1.5x the CPU of one process, and no wall time gained)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/proc/loadavg", encoding="ascii") as loadavg:
            runnable = int(loadavg.read().split()[3].partition("/")[0])
    except (OSError, ValueError, IndexError):
        return cpus
    return max(1, cpus - (runnable - 1))


def render_all(doc: pdfium.PdfDocument, count: int, policy: ConversionPolicy
               ) -> Iterator[Pixels]:
    """Pages 0..count-1, in page order, as they are rendered on every idle CPU: the
    caller sends each on while the renderers draw the next ones.

    With more than one CPU, every share goes to a forked renderer and this process only
    passes pages on: passing a page on (copying megabytes of pixels) took as long as
    drawing a share of its own, and a share of its own made the renderers wait (measured
    0.72 against 0.80-0.94 of the raw renderer's speed through the sandbox). Threads take
    the renderers' pages off their pipes meanwhile, so none waits for this process."""
    procs = max(1, min(count // MIN_PAGES_PER_PROCESS, free_cpus(), MAX_RENDER_PROCESSES))
    if procs == 1:
        yield from (render_page(doc, i, policy) for i in range(count))
        return
    children = _start_renderers(doc, count, procs, policy)  # before any thread
    streams = [os.fdopen(read_fd, "rb") for _, read_fd in children]
    shares: list[queue.SimpleQueue[Pixels | None]] = [queue.SimpleQueue() for _ in children]
    drains = [threading.Thread(target=_drain, args=(s, q, policy), daemon=True)
              for s, q in zip(streams, shares, strict=True)]
    for drain in drains:
        drain.start()
    done = False
    try:
        for i in range(count):
            yield _received(shares[i % procs])
        done = True
    finally:
        clean = _reap(children, kill=not done)
        for drain in drains:
            drain.join()
        for stream in streams:
            stream.close()
    if not clean:
        raise SandboxFailure("a PDF renderer failed")


def _text_document() -> pdfium.PdfDocument:
    """A one-page PDF with a line of Helvetica, built with pdfium itself."""
    doc = pdfium.PdfDocument.new()
    page = doc.new_page(144, 72)
    font = pdfium_c.FPDFText_LoadStandardFont(doc.raw, b"Helvetica")
    obj = pdfium_c.FPDFPageObj_CreateTextObj(doc.raw, font, 12.0)
    text = ctypes.create_string_buffer("warm\0".encode("utf-16-le"))
    pdfium_c.FPDFText_SetText(obj, ctypes.cast(text, ctypes.POINTER(pdfium_c.FPDF_WCHAR)))
    pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 10, 10)
    pdfium_c.FPDFPage_InsertObject(page.raw, obj)
    pdfium_c.FPDFPage_GenerateContent(page.raw)
    return doc


class PdfConverter:
    """PDF to the pixels of its pages (the gateway makes the image-only PDF, or PNG/JPEG
    per page, from them) and its text as UTF-8."""

    name = "pdf"

    def warm(self) -> None:
        """Pay once, in the worker that forks every conversion, what each fresh process
        would otherwise pay on its first pages (pdfium's font, image and codec set-up,
        Pillow's encoder plugins): measured 15-20 ms a process, twice per conversion.

        Renders only documents built here, never anything received."""
        policy = ConversionPolicy()
        photo = Image.effect_noise((64, 48), 60).convert("RGB")
        images = write_pdf([Page(to_jpeg(photo), 72, 54),
                            Page(to_grey4(Image.linear_gradient("L")), 72, 72)])
        for doc in (open_document(images), _text_document()):
            for index in range(len(doc)):
                render_page(doc, index, policy)

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        findings = pdfscan.active_features(untrusted)
        doc = open_document(untrusted)
        findings = pdfscan.merge(findings, pdfscan.document_features(doc))
        total = len(doc)
        if total == 0:
            raise Corrupt("PDF without pages")
        count = min(total, policy.limits.max_pages)
        if policy.limits.max_pages <= 0:
            raise LimitExceeded("page cap is zero")
        doc.init_forms()
        return Conversion(images=render_all(doc, count, policy), findings=findings,
                          notes=_notes(doc, count, total, policy), pages=count,
                          extra={"total_pages": str(total)})


def _notes(doc: pdfium.PdfDocument, count: int, total: int, policy: ConversionPolicy
           ) -> tuple[str, ...]:
    """Known before rendering: the page cap, and the pages too large for the pixel cap."""
    notes = []
    if total > count:
        notes.append(f"pages {count + 1}-{total} of {total} not rendered (page cap {count})")
    cap = policy.limits.max_page_pixels
    reduced = []
    for index in range(count):
        width_pt, height_pt = doc[index].get_size()
        if page_scale(width_pt, height_pt, policy.dpi, cap)[1]:
            reduced.append(str(index + 1))
    if reduced:
        notes.append(f"pages rendered at reduced resolution (pixel cap): {', '.join(reduced)}")
    return tuple(notes)
