"""PDF from LibreOffice -> page images: the call-site to switch to `converters.pdf`.

LEAD: issue 4 owns PDF rendering (`converters/pdf.py`). Office output must be rendered
"exactly like PDFs", so once pdf.py is merged, replace the body of `render_office_pdf`
with a call to its renderer (the LibreOffice PDF is trusted-ish: we made it, but it still
carries the document's content, so it goes through the same page cap and output policy).
Until then this is a small, real renderer with the same policy fields: pypdfium2 pages at
`policy.dpi`, JPEG-encoded, delivered as an image-only PDF or as one image per page.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import pypdfium2 as pdfium
from PIL import Image

from converters import errors
from converters.base import Conversion, Rendering
from converters.limits import ConversionPolicy


def render_office_pdf(pdf: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
    """Render the first `max_pages` pages; say in a note when pages were left out."""
    stem = PurePosixPath(filename.replace("\\", "/")).stem or "document"
    try:
        doc = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError as exc:
        raise errors.Corrupt("office pdf unreadable") from exc
    try:
        total = len(doc)
        count = min(total, policy.limits.max_pages)
        pages = [_render(doc[i], policy) for i in range(count)]
        text = _text(doc, count) if policy.extract_text else ""
    finally:
        doc.close()
    outputs = list(_package(pages, stem, policy))
    if text.strip():
        outputs.append(Rendering(f"{stem}.txt", "text/plain", text.encode()))
    notes = (f"pages after {count} not rendered",) if total > count else ()
    return Conversion(outputs=tuple(outputs), notes=notes, pages=count,
                      extra={"total_pages": str(total)})  # the key converters.pdf uses


def _render(page: pdfium.PdfPage, policy: ConversionPolicy) -> Image.Image:
    width, height = page.get_size()  # points
    scale = policy.dpi / 72
    if width * scale * height * scale > policy.limits.max_page_pixels:
        scale = (policy.limits.max_page_pixels / (width * height)) ** 0.5
    image: Image.Image = page.render(scale=scale).to_pil().convert("RGB")
    page.close()
    return image


def _text(doc: pdfium.PdfDocument, count: int) -> str:
    parts = []
    for i in range(count):
        textpage = doc[i].get_textpage()
        parts.append(textpage.get_text_range())
        textpage.close()
    return "\n\f".join(parts)


def _package(pages: list[Image.Image], stem: str,
             policy: ConversionPolicy) -> list[Rendering]:
    if not pages:
        return []
    if policy.pdf_output == "pdf":
        buf = io.BytesIO()
        pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:],
                      resolution=float(policy.dpi), quality=85)
        return [Rendering(f"{stem}.pdf", "application/pdf", buf.getvalue())]
    fmt, ext, ctype = ("PNG", "png", "image/png") if policy.pdf_output == "png" else (
        "JPEG", "jpg", "image/jpeg")
    out = []
    for n, image in enumerate(pages, 1):
        buf = io.BytesIO()
        if fmt == "JPEG":
            image.save(buf, fmt, quality=85)
        else:
            image.save(buf, fmt, compress_level=1)  # level 1: half the time of the default
        out.append(Rendering(f"{stem}-p{n:03d}.{ext}", ctype, buf.getvalue()))
    return out
