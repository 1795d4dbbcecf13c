"""Pixels to compact files: lossless palette/grey PNG for flat pages, JPEG for photos.

Encoding, not rendering, sets the pace (docs/converters.md): Pillow's default PNG costs
about 97 ms for an A4 page at 150 DPI against 6 ms for JPEG, while a text page as JPEG
shows ringing around every character. So each page is classified on a thumbnail: few
distinct colours (text, tables, line art) → a 16-level grey or 64-colour palette PNG at
a fast zlib level; many colours (photos, gradients) → JPEG.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Literal

from PIL import Image

Kind = Literal["png", "jpeg"]
#: `grey4` exists only inside image-only PDFs: 4-bit grey, deflated without PNG framing.
Encoding = Literal["png", "jpeg", "grey4"]

#: A flat page has at most this many distinct colours on its thumbnail...
FLAT_MAX_COLOURS = 2048
#: ...and at most this share of mid-tone pixels (grey levels MIDTONE_LOW..MIDTONE_HIGH).
FLAT_MAX_MIDTONES = 0.12  # measured: text and table pages 0.02-0.05, photo pages 0.2+
MIDTONE_LOW, MIDTONE_HIGH = 48, 208
#: Colours kept for flat colour pages (stamps, coloured headings, charts).
FLAT_PALETTE = 64
JPEG_QUALITY = 85
_GREY16_PALETTE = bytes(v for i in range(16) for v in (i * 17,) * 3)
_GREY16_LEVELS = [(v * 15 + 127) // 255 for v in range(256)]
#: The same 16 levels as ink (0 = white): what is not white is then what getbbox() finds.
_INK16_LEVELS = [15 - level for level in _GREY16_LEVELS]
#: zlib level 1: measured ~3x faster than the default with files ~15% larger.
PNG_LEVEL = 1


@dataclass(frozen=True)
class Encoded:
    """One encoded image and what a PDF writer needs to embed it without re-encoding."""

    kind: Encoding
    data: bytes
    width: int
    height: int
    #: A one-component JPEG (the PDF writer must say /DeviceGray).
    grey: bool = False
    #: Where the image sits on its page, as fractions (left, top, right, bottom): grey4
    #: images are cropped to their ink, the rest of the page being plain white.
    placement: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


def _thumbnail(img: Image.Image) -> Image.Image:
    factor = max(1, min(img.width, img.height) // 200)
    # Nearest-neighbour sampling: 10x cheaper than reduce() and it invents no blended
    # colours, so a text page still counts as flat.
    size = (max(1, img.width // factor), max(1, img.height // factor))
    thumb = img.resize(size, Image.Resampling.NEAREST) if factor > 1 else img
    return thumb if thumb.mode in {"RGB", "L"} else thumb.convert("RGB")


@dataclass(frozen=True)
class Look:
    """What a page looks like, judged on a thumbnail (about 2 ms for an A4 page)."""

    flat: bool  # few colours: text, tables, line art
    grey: bool  # no colour at all


def look(img: Image.Image) -> Look:
    thumb = _thumbnail(img)
    # Few colours alone is not enough: a grey photo has only 256. Text and line art are
    # mostly background and ink, with mid-tones only on glyph edges.
    hist = thumb.convert("L").histogram()
    midtones = sum(hist[MIDTONE_LOW:MIDTONE_HIGH]) / max(1, thumb.width * thumb.height)
    if thumb.getcolors(FLAT_PALETTE) is not None:
        flat = True  # so few colours that a palette holds them exactly
    else:
        flat = midtones <= FLAT_MAX_MIDTONES and thumb.getcolors(FLAT_MAX_COLOURS) is not None
    return Look(flat, is_grey(thumb))


def is_grey(img: Image.Image) -> bool:
    """No colour at all: R, G and B equal on every pixel (0.15 ms on a 60,000-pixel
    preview, a quarter of a full `look`)."""
    if img.mode in {"L", "1"}:
        return True
    bands = (img if img.mode in {"RGB", "RGBX"} else img.convert("RGB")).split()
    return bands[0].tobytes() == bands[1].tobytes() == bands[2].tobytes()


def _grey16(img: Image.Image) -> Image.Image:
    """16 grey levels as a 4-bit palette image: anti-aliased text stays smooth and the PNG
    is about 7x smaller than 8-bit grey (measured 36 KB against 251 KB for an A4 page)."""
    grey = img if img.mode == "L" else img.convert("L")
    levels = grey.point(_GREY16_LEVELS)
    levels.putpalette(_GREY16_PALETTE)  # L with a palette becomes P, no copy
    return levels


def to_png(img: Image.Image, seen: Look | None = None) -> Encoded:
    """Lossless; grey or palette when the content allows, so text stays crisp and small."""
    if img.mode in {"RGBA", "LA", "PA"}:
        prepared = img.convert("RGBA")
    else:
        seen = seen or look(img)
        if seen.flat and seen.grey:
            prepared = _grey16(img)
        elif seen.flat:
            prepared = img.convert("RGB").quantize(FLAT_PALETTE, method=Image.Quantize.FASTOCTREE)
        else:
            prepared = img.convert("L") if seen.grey else img.convert("RGB")
    out = io.BytesIO()
    prepared.save(out, "PNG", compress_level=PNG_LEVEL)
    return Encoded("png", out.getvalue(), img.width, img.height)


def to_grey4(img: Image.Image) -> Encoded:
    """16 grey levels as ink, cropped to the inked area, packed two pixels a byte and
    deflated as is, for the PDF writer (which maps ink back to grey with /Decode).

    Measured on an A4 text page: 1.9 ms against 5.7 ms for the same pixels as a 4-bit
    PNG (whose per-row filter search is the cost), at the same size (36 KB). Deflate is
    most of what remains, so the white margins are left out: -35% on a text page, -60%
    on a half-empty table page. The crop is exact (getbbox on every pixel), so nothing
    on the page is lost."""
    grey = img if img.mode == "L" else img.convert("L")
    ink = grey.point(_INK16_LEVELS)
    box = ink.getbbox() or (0, 0, 1, 1)  # a blank page: one white pixel
    ink = ink.crop(box)
    ink.putpalette(_GREY16_PALETTE)  # P is what the 4-bit packer takes
    packed = ink.tobytes("raw", "P;4")  # rows padded to whole bytes, as PDF wants
    left, top, right, bottom = box
    placement = (left / img.width, top / img.height, right / img.width, bottom / img.height)
    return Encoded("grey4", zlib.compress(packed, 1), ink.width, ink.height, True, placement)


def to_jpeg(img: Image.Image) -> Encoded:
    if img.mode in {"L", "RGB", "RGBX"}:
        prepared = img  # a conversion would copy the page (2 ms for A4 at 150 DPI)
    else:
        prepared = img.convert("L") if img.mode == "1" else img.convert("RGB")
    out = io.BytesIO()
    prepared.save(out, "JPEG", quality=JPEG_QUALITY, optimize=False)
    return Encoded("jpeg", out.getvalue(), img.width, img.height, prepared.mode == "L")


def encode(img: Image.Image, prefer: Kind | None = None) -> Encoded:
    """`prefer` forces a format (policy png/jpeg); None picks by content."""
    if prefer == "jpeg":
        return to_jpeg(img)
    if prefer == "png":
        return to_png(img)
    if img.mode in {"RGBA", "LA", "PA"}:
        return to_png(img)
    seen = look(img)
    return to_png(img, seen) if seen.flat else to_jpeg(img)
