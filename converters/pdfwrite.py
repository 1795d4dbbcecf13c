"""A minimal PDF writer for image-only documents: one image per page, nothing else.

We write the file ourselves rather than with Pillow's PDF plugin because Pillow
re-encodes every page as JPEG (text pages blur) or as ASCII hex (twice the size). Here a
JPEG is embedded as is (DCTDecode) and a PNG's IDAT stream is embedded as is
(FlateDecode with the PNG predictor), so no page is encoded twice. The output has no
fonts, no annotations, no actions, no metadata: only pixels, and, when asked for, the
words OCR recognized as invisible text (render mode 3) over them, so that the document
can be searched and copied from (`converters.pdftext`).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from converters.encode import Encoded
from converters.pdftext import FONT_OBJECTS, PlacedWord, astral_codes, font_objects, text_layer

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOURS = {0: ("/DeviceGray", 1), 2: ("/DeviceRGB", 3), 3: ("/Indexed", 1)}


@dataclass(frozen=True)
class Page:
    """One page: its image and its size in PDF points (1/72 inch)."""

    image: Encoded
    width_pt: float
    height_pt: float
    #: Invisible text over the image (OCR), boxes in points from the page's top left.
    words: tuple[PlacedWord, ...] = ()


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    """IHDR, PLTE and the concatenated IDAT of a PNG we encoded ourselves."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG")
    chunks: dict[bytes, bytes] = {b"IDAT": b""}
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        chunks[ctype] = chunks.get(ctype, b"") + body if ctype == b"IDAT" else body
        pos += 12 + length
    return chunks


def _png_image_dict(img: Encoded) -> tuple[bytes, bytes]:
    chunks = _png_chunks(img.data)
    width, height, bits, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    if colour == 6 or interlace:
        return _flatten_rgba(img)
    space, colours = _PNG_COLOURS[colour]
    if colour == 3:
        plte = chunks[b"PLTE"]
        space = f"[/Indexed /DeviceRGB {len(plte) // 3 - 1} <{plte.hex()}>]"
    parms = f"/DecodeParms << /Predictor 15 /Colors {colours} /BitsPerComponent {bits} " \
            f"/Columns {width} >>"
    head = (f"/Type /XObject /Subtype /Image /Width {width} /Height {height} "
            f"/ColorSpace {space} /BitsPerComponent {bits} /Filter /FlateDecode {parms}")
    return head.encode(), chunks[b"IDAT"]


def _flatten_rgba(img: Encoded) -> tuple[bytes, bytes]:
    """Transparency on white, then raw RGB deflated (rare: only for images with alpha)."""
    from PIL import Image

    with Image.open(io.BytesIO(img.data)) as src:
        rgba = src.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    head = (f"/Type /XObject /Subtype /Image /Width {flat.width} /Height {flat.height} "
            "/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /FlateDecode")
    return head.encode(), zlib.compress(flat.tobytes(), 6)


def _image_object(img: Encoded) -> tuple[bytes, bytes]:
    if img.kind == "grey4":
        head = (f"/Type /XObject /Subtype /Image /Width {img.width} /Height {img.height} "
                "/ColorSpace /DeviceGray /BitsPerComponent 4 /Decode [1 0] /Filter /FlateDecode")
        return head.encode(), img.data
    if img.kind == "jpeg":
        space = "/DeviceGray" if img.grey else "/DeviceRGB"
        head = (f"/Type /XObject /Subtype /Image /Width {img.width} /Height {img.height} "
                f"/ColorSpace {space} /BitsPerComponent 8 /Filter /DCTDecode")
        return head.encode(), img.data
    return _png_image_dict(img)


#: pdfium rounds an image's device rectangle outwards, so an edge computed a hair outside
#: a pixel boundary stretches the image by a pixel (measured: twice the pixels differing
#: from the original); edges nudged this far inwards land on the boundary.
_EDGE_NUDGE = 1e-6


def _placement(page: Page) -> str:
    """The content stream: draw the image over its share of the page (PDF y runs up)."""
    left, top, right, bottom = page.image.placement
    left, top, right, bottom = (left + _EDGE_NUDGE, top + _EDGE_NUDGE,
                                right - _EDGE_NUDGE, bottom - _EDGE_NUDGE)
    w, h = page.width_pt, page.height_pt
    return (f"q {(right - left) * w:.6f} 0 0 {(bottom - top) * h:.6f} "
            f"{left * w:.6f} {(1 - bottom) * h:.6f} cm /Im0 Do Q")


def _contents(page: Page, astral: dict[str, int]) -> tuple[bytes, bytes]:
    """The page's content stream: the image, then its invisible text (deflated: a dense
    page's words are some 60 KB of operators)."""
    if not page.words:
        return b"", _placement(page).encode()
    stream = (_placement(page) + "\n" + text_layer(page.words, page.height_pt, astral)).encode()
    return b"/Filter /FlateDecode", zlib.compress(stream, 6)


def pages_words(pages: list[Page]) -> list[PlacedWord]:
    return [word for page in pages for word in page.words]


def write_pdf(pages: list[Page]) -> bytes:
    """An image-only PDF, one page per image, images scaled to fill each page."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []

    def obj(body: bytes, stream: bytes | None = None) -> None:
        offsets.append(out.tell())
        out.write(f"{len(offsets)} 0 obj\n".encode())
        if stream is None:
            out.write(body + b"\nendobj\n")
        else:
            out.write(b"<< " + body + f" /Length {len(stream)} >>\nstream\n".encode())
            out.write(stream + b"\nendstream\nendobj\n")

    kids = " ".join(f"{3 + 3 * i} 0 R" for i in range(len(pages)))
    obj(b"<< /Type /Catalog /Pages 2 0 R >>")
    obj(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    fonts_no = 3 + 3 * len(pages)  # the text layer's fonts follow the pages, once
    text = any(page.words for page in pages)
    astral = astral_codes(pages_words(pages))
    fonts = (f"/Font << /F1 {fonts_no} 0 R /F2 {fonts_no + 1} 0 R >> " if text else "")
    for i, page in enumerate(pages):
        page_no, content_no, image_no = 3 + 3 * i, 4 + 3 * i, 5 + 3 * i
        w, h = round(page.width_pt, 3), round(page.height_pt, 3)
        assert len(offsets) + 1 == page_no
        obj(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] /Resources "
            f"<< {fonts}/XObject << /Im0 {image_no} 0 R >> >> /Contents {content_no} 0 R >>"
            .encode())
        obj(*_contents(page, astral))
        obj(*_image_object(page.image))
    if text:
        for body, stream in font_objects(fonts_no, astral):
            obj(body, stream)
        assert len(offsets) == fonts_no - 1 + FONT_OBJECTS
    xref = out.tell()
    out.write(f"xref\n0 {len(offsets) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(offsets) + 1} /Root 1 0 R >>\n"
              f"startxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()
