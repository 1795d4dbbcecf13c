"""Trusted code: the files delivered, encoded from the pixels and text a converter returned.

This runs in the gateway. It never sees an original: only `Pixels` that passed
`converters.pixels.checked` and text that passes `clean_text` here. Every image and PDF
that reaches the LGWAN side is written by this module (with `converters.encode` and
`converters.pdfwrite`), named from the attachment's cleaned name, never from anything a
converter said. A compromised converter can draw wrong pixels or write wrong words; it
cannot hand over a file.
"""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from converters.base import Conversion, Rendering
from converters.encode import Encoded, encode, look, to_grey4, to_jpeg
from converters.errors import SandboxFailure
from converters.limits import ConversionPolicy
from converters.pdftext import PlacedWord
from converters.pdfwrite import Page, write_pdf
from converters.pixels import Pixels, clean_text

#: The text a converter may return, by content type, and the extension it is named with.
TEXT_TYPES = {"text/plain": "txt", "text/csv": "csv", "text/tab-separated-values": "tsv"}


def encode_pixels(pixels: Pixels, policy: ConversionPolicy) -> Encoded:
    """The encoding the policy and the content call for (docs/converters.md)."""
    img = pixels.image()
    if pixels.picture:
        photo = pixels.photo and img.mode not in {"RGBA", "LA"}
        return encode(img, "jpeg" if photo else None)
    if policy.pdf_output != "pdf":
        return encode(img, policy.pdf_output)
    if img.mode == "L":  # rendered grey: 4-bit grey in the PDF unless it is a photograph
        return to_grey4(img) if look(img).flat else to_jpeg(img)
    return encode(img)


def package(conversion: Conversion, stem: str, policy: ConversionPolicy
            ) -> tuple[Rendering, ...]:
    """The files for a conversion made in this process (its images read as they come)."""
    with Packager(stem, policy) as packager:
        return packager.finish(conversion)


@dataclass(frozen=True)
class _Encoded:
    image: Encoded
    width_pt: float
    height_pt: float
    picture: bool
    text: str
    words: tuple[PlacedWord, ...] = ()


def placed_words(pixels: Pixels) -> tuple[PlacedWord, ...]:
    """OCR's word boxes, from the page's pixels to its points."""
    sx, sy = pixels.width_pt / pixels.width, pixels.height_pt / pixels.height
    return tuple(PlacedWord(w.text, w.left * sx, w.top * sy, w.width * sx, w.height * sy,
                            w.vertical) for w in pixels.words)


class Packager:
    """Encodes each page as it arrives, on two threads of its own, while the next pages
    are read (Pillow's encoders and zlib release the GIL; one thread fell behind the
    sandbox's two renderers: 0.62-0.72 of the raw renderer's speed against 0.89-0.94),
    then writes the files. Raw pages do not pile up: each is dropped once encoded. Use
    it as a context manager: leaving it ends the threads, also when the conversion
    failed half-way."""

    def __init__(self, stem: str, policy: ConversionPolicy) -> None:
        self.stem = stem
        self.policy = policy
        self._encoder = ThreadPoolExecutor(2, thread_name_prefix="mugaika-encode")
        self._images: list[Future[_Encoded]] = []

    def __enter__(self) -> Packager:
        return self

    def __exit__(self, *exc: object) -> None:
        self._encoder.shutdown(wait=True, cancel_futures=True)

    def add(self, pixels: Pixels) -> None:
        if len(self._images) >= self.policy.limits.max_pages:
            raise SandboxFailure("more pages than the page cap")
        self._images.append(self._encoder.submit(self._encode, pixels))

    def _encode(self, pixels: Pixels) -> _Encoded:
        layer = self.policy.ocr.text_layer and self.policy.pdf_output == "pdf"
        return _Encoded(encode_pixels(pixels, self.policy), pixels.width_pt, pixels.height_pt,
                        pixels.picture, pixels.text,
                        placed_words(pixels) if layer and not pixels.picture else ())

    def finish(self, conversion: Conversion) -> tuple[Rendering, ...]:
        """The files for `conversion`: its images (those not added yet are added now) and
        its text, checked."""
        for pixels in conversion.images:
            self.add(pixels)
        images = [future.result() for future in self._images]
        pages = [e for e in images if not e.picture]
        pictures = [e for e in images if e.picture]
        files = [*self._document(pages), *self._numbered(pictures), *self._page_text(pages),
                 *self._picture_text(pictures)]
        return (*files, *(self._text(r) for r in conversion.outputs))

    def _page_text(self, pages: list[_Encoded]) -> list[Rendering]:
        """One text file from the pages' text layers, page by page."""
        if not pages or not self.policy.extract_text:
            return []
        text = io.StringIO()
        for n, page in enumerate(pages, 1):
            text.write(f"--- page {n} ---\n{page.text.strip()}\n\n")
        return [Rendering(f"{self.stem}.txt", "text/plain", text.getvalue().encode("utf-8"))]

    def _picture_text(self, pictures: list[_Encoded]) -> list[Rendering]:
        """Text OCR read in pictures (photos of documents), when there is any."""
        if not self.policy.extract_text or not any(p.text.strip() for p in pictures):
            return []
        if len(pictures) == 1:
            text = pictures[0].text.strip() + "\n"
        else:
            text = "".join(f"--- image {n} ---\n{p.text.strip()}\n\n"
                           for n, p in enumerate(pictures, 1))
        return [Rendering(f"{self.stem}.txt", "text/plain", text.encode("utf-8"))]

    def _document(self, pages: list[_Encoded]) -> list[Rendering]:
        if not pages:
            return []
        if self.policy.pdf_output == "pdf":
            pdf = write_pdf([Page(p.image, p.width_pt, p.height_pt, p.words) for p in pages])
            return [Rendering(f"{self.stem}.pdf", "application/pdf", pdf)]
        return self._numbered(pages, always=True)

    def _numbered(self, images: list[_Encoded], always: bool = False) -> list[Rendering]:
        files = []
        for n, item in enumerate(images, 1):
            ext = "png" if item.image.kind == "png" else "jpg"
            name = (f"{self.stem}_p{n:03d}.{ext}" if always or len(images) > 1
                    else f"{self.stem}.{ext}")
            files.append(Rendering(name, f"image/{item.image.kind}", item.image.data))
        return files

    def _text(self, untrusted: Rendering) -> Rendering:
        ext = TEXT_TYPES.get(untrusted.content_type)
        if ext is None:
            raise SandboxFailure("a converter returned a file that is not text")
        return Rendering(f"{self.stem}.{ext}", untrusted.content_type,
                         clean_text(untrusted.data).encode("utf-8"))
