"""PDF → page images (an image-only PDF by default), plus the text layer as UTF-8.

pypdfium2 renders (the pdfium in its wheels has no JavaScript or XFA engine, so nothing
in the file runs). Pages are rendered at the policy DPI by as many processes as there
are idle CPUs (this one and forked renderers), each encoding its own pages
(`converters.encode`): encoding costs as much as rendering, and it parallelises cleanly.
Text comes from pdfium too: about 800 pages/s against pdfminer.six's 24 on the same
Japanese PDF with the same text (bench/bench_pdf.py).

Caps: `max_pages` pages are rendered, the rest are named in a note; a page whose pixels
at the policy DPI would exceed `max_page_pixels` is rendered at a lower DPI (and noted).
Active content (JavaScript, OpenAction, Launch, ...) is reported, never carried over:
only pixels leave.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from converters import pdfscan
from converters.base import Conversion, Rendering
from converters.encode import Encoded, Kind, encode, is_grey, look, to_grey4, to_jpeg
from converters.errors import Corrupt, Encrypted, LimitExceeded, SandboxFailure
from converters.framing import read_frame, write_frame
from converters.limits import ConversionPolicy
from converters.names import stem
from converters.pdfwrite import Page, write_pdf

#: Renderer processes per PDF; two cores measured 1.9-2.0x one (docs/MEASURED.md).
MAX_RENDER_PROCESSES = 4
#: A forked renderer costs about a page of work before its first page (page faults, this
#: document's fonts), so a process is worth forking only for at least this many pages.
MIN_PAGES_PER_PROCESS = 2
#: A preview this small (about 24 DPI for A4) tells grey pages from colour ones in ~1 ms.
PREVIEW_PIXELS = 60_000
#: How deep into nested form XObjects to look for images.
IMAGE_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class RenderedPage:
    index: int
    image: Encoded
    width_pt: float
    height_pt: float
    text: str
    reduced: bool


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


def render_page(doc: pdfium.PdfDocument, index: int, policy: ConversionPolicy,
                prefer: Kind | None) -> RenderedPage:
    page = doc[index]
    width_pt, height_pt = page.get_size()
    if width_pt <= 0 or height_pt <= 0:
        raise Corrupt("page without size")
    scale, reduced = page_scale(width_pt, height_pt, policy.dpi, policy.limits.max_page_pixels)
    encoded = _render_encoded(page, scale, width_pt * height_pt, prefer)
    text = ""
    if policy.extract_text:
        text = page.get_textpage().get_text_bounded().replace("\r\n", "\n").replace("\r", "\n")
        links = pdfscan.link_targets(doc, page)
        if links:
            text = text.rstrip() + "\n\n[links]\n" + "\n".join(links)
    return RenderedPage(index, encoded, width_pt, height_pt, text, reduced)


def _render_encoded(page: pdfium.PdfPage, scale: float, area_pt: float, prefer: Kind | None
                    ) -> Encoded:
    """Grey pages are rendered grey (pdfium draws them 3-5x faster than colour) and, for
    the image-only PDF, stored as 4-bit grey; everything else goes through `encode`.

    Pages with images skip the preview: it would decode every image twice (16 ms for a
    photo page, measured), and `encode` classifies the full rendering anyway.

    Colour is rendered as RGBX, which PIL takes without a copy: 3-byte RGB costs a
    conversion to PIL's 4-byte layout (measured 45 -> 28 ms on a photo page)."""
    if prefer is None and not _has_images(page):
        preview_scale = math.sqrt(PREVIEW_PIXELS / area_pt)
        if is_grey(_render_colour(page, preview_scale)):
            grey = page.render(scale=scale, may_draw_forms=True, grayscale=True).to_pil()
            return to_grey4(grey) if look(grey).flat else to_jpeg(grey)
    return encode(_render_colour(page, scale), prefer)


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
                  prefer: Kind | None, write_fd: int) -> None:
    """In a forked renderer: render our pages and stream them back as frames."""
    code = 0
    try:
        with os.fdopen(write_fd, "wb") as out:
            for index in indexes:
                p = render_page(doc, index, policy, prefer)
                header = {"index": p.index, "kind": p.image.kind, "w": p.image.width,
                          "h": p.image.height, "grey": p.image.grey,
                          "at": p.image.placement, "wpt": p.width_pt, "hpt": p.height_pt,
                          "reduced": p.reduced}
                write_frame(out, header, (p.image.data, p.text.encode("utf-8")))
    except BaseException:  # a renderer reports failure by its exit status
        code = 1
    os._exit(code)


def _collect(read_fd: int, policy: ConversionPolicy) -> list[RenderedPage]:
    pages: list[RenderedPage] = []
    with os.fdopen(read_fd, "rb") as inp:
        while True:
            try:
                h, (data, text) = read_frame(inp, policy.limits.max_output_bytes)
            except EOFError:
                return pages
            image = Encoded(h["kind"], data, h["w"], h["h"], h["grey"], tuple(h["at"]))
            pages.append(RenderedPage(h["index"], image, h["wpt"], h["hpt"],
                                      text.decode("utf-8"), h["reduced"]))


def _start_renderers(doc: pdfium.PdfDocument, count: int, procs: int,
                     policy: ConversionPolicy, prefer: Kind | None) -> list[tuple[int, int]]:
    """Fork renderers for shares 1..procs-1 (share 0 is ours); (pid, read fd) for each."""
    children: list[tuple[int, int]] = []
    for k in range(1, procs):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for _, other_fd in children:
                os.close(other_fd)
            _render_share(doc, range(k, count, procs), policy, prefer, write_fd)
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


def render_all(doc: pdfium.PdfDocument, count: int, policy: ConversionPolicy,
               prefer: Kind | None) -> list[RenderedPage]:
    """Render pages 0..count-1, in page order, on every idle CPU.

    This process renders one share itself: it is warm (this document's fonts, its heap),
    while a forked renderer pays 10-15 ms of page faults and font set-up before its first
    page. Threads drain the renderers' pipes meanwhile, so none blocks on a full pipe."""
    procs = max(1, min(count // MIN_PAGES_PER_PROCESS, free_cpus(), MAX_RENDER_PROCESSES))
    if procs == 1:
        return [render_page(doc, i, policy, prefer) for i in range(count)]
    children = _start_renderers(doc, count, procs, policy, prefer)  # before any thread
    with ThreadPoolExecutor(len(children)) as readers:
        shares = [readers.submit(_collect, read_fd, policy) for _, read_fd in children]
        try:
            pages = [render_page(doc, i, policy, prefer) for i in range(0, count, procs)]
            for share in shares:
                pages.extend(share.result())
        except BaseException:
            _reap(children, kill=True)
            raise
    if not _reap(children, kill=False) or len(pages) != count:
        raise SandboxFailure("a PDF renderer failed")
    return sorted(pages, key=lambda p: p.index)


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
    """PDF to an image-only PDF (or PNG/JPEG per page) and a UTF-8 text file."""

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
                render_page(doc, index, policy, None)

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
        prefer: Kind | None = None if policy.pdf_output == "pdf" else policy.pdf_output
        pages = render_all(doc, count, policy, prefer)
        notes = _notes(pages, count, total)
        outputs = _outputs(pages, stem(filename), policy)
        return Conversion(outputs=outputs, findings=findings, notes=notes, pages=count,
                          extra={"total_pages": str(total)})


def _notes(pages: list[RenderedPage], count: int, total: int) -> tuple[str, ...]:
    notes = []
    if total > count:
        notes.append(f"pages {count + 1}-{total} of {total} not rendered (page cap {count})")
    reduced = [str(p.index + 1) for p in pages if p.reduced]
    if reduced:
        notes.append(f"pages rendered at reduced resolution (pixel cap): {', '.join(reduced)}")
    return tuple(notes)


def _outputs(pages: list[RenderedPage], base: str, policy: ConversionPolicy
             ) -> tuple[Rendering, ...]:
    outputs: list[Rendering] = []
    if policy.pdf_output == "pdf":
        doc = write_pdf([Page(p.image, p.width_pt, p.height_pt) for p in pages])
        outputs.append(Rendering(f"{base}.pdf", "application/pdf", doc))
    else:
        for p in pages:
            ext = "png" if p.image.kind == "png" else "jpg"
            outputs.append(Rendering(f"{base}_p{p.index + 1:03d}.{ext}",
                                     f"image/{p.image.kind}", p.image.data))
    if policy.extract_text:
        text = io.StringIO()
        for p in pages:
            text.write(f"--- page {p.index + 1} ---\n{p.text.strip()}\n\n")
        outputs.append(Rendering(f"{base}.txt", "text/plain", text.getvalue().encode("utf-8")))
    return tuple(outputs)
