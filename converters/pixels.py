"""Raw pixels: the only form in which a rendering crosses back from the sandbox.

A renderer inside the sandbox turns each page (or picture) into `Pixels`: a mode, a size
and exactly width × height × channels bytes, plus the page's physical size and its text. The gateway
accepts them only through `checked`, which bounds every number before it allocates
anything, and encodes them itself (`converters.package`). A hijacked renderer can
therefore make wrong pixels, never a file: no PDF with JavaScript, no executable
dressed as an image, no oversized bitmap (Dangerzone's pixels boundary).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from converters.errors import SandboxFailure
from converters.limits import Limits

#: Pixel layouts that may cross, with their bytes per pixel. RGBX is pdfium's colour
#: bitmap, taken without the copy a conversion to RGB would cost.
MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "RGBX": 4}
#: The largest page a PDF can describe (PDF 1.7 annex C: 14,400 user units = 200 inches).
MAX_PAGE_POINTS = 14_400.0
#: Recognized words one page may carry (a dense A4 page has about 2,000), and their length.
MAX_WORDS = 20_000
MAX_WORD_CHARS = 100
#: C0 and C1 controls but tab, LF and CR; a form feed becomes a line break first.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]")
#: What a word may not hold: line breaks, controls, and lone surrogates (JSON can carry
#: them, UTF-8 cannot encode them).
_NOT_IN_WORDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Word:
    """A recognized word and its box in the page's pixels (OCR, `converters.ocr`);
    `vertical`: written top to bottom (縦書き)."""

    text: str
    left: int
    top: int
    width: int
    height: int
    vertical: bool = False


@dataclass(frozen=True)
class Pixels:
    mode: str
    width: int
    height: int
    data: bytes
    #: The page's size in PDF points (1/72 inch); a picture's is its pixel size.
    width_pt: float
    height_pt: float
    #: A picture stands alone (an image attachment's frame); otherwise a document's page.
    picture: bool = False
    #: The renderer's hint that this is a photograph (a JPEG source): encode as JPEG.
    photo: bool = False
    #: The page's text layer (the gateway writes one text file from a document's pages).
    text: str = ""
    #: Words recognized on the page with their boxes, for a searchable text layer.
    words: tuple[Word, ...] = ()

    def image(self) -> Image.Image:
        """The pixels as a Pillow image, without a copy."""
        return Image.frombuffer(self.mode, (self.width, self.height), self.data, "raw",
                                self.mode, 0, 1)


def from_image(img: Image.Image, width_pt: float | None = None, height_pt: float | None = None,
               picture: bool = False, photo: bool = False, text: str = "") -> Pixels:
    """A rendered image as `Pixels` (in the sandbox); other modes become RGB(A) or L."""
    if img.mode not in MODES:
        img = img.convert("L" if img.mode == "1" else "RGBA" if "A" in img.mode else "RGB")
    return Pixels(img.mode, img.width, img.height, img.tobytes(),
                  float(width_pt if width_pt is not None else img.width),
                  float(height_pt if height_pt is not None else img.height), picture, photo,
                  text)


def describe(pixels: Pixels) -> dict[str, Any]:
    """The frame header that announces `pixels` (their bytes, then the text as UTF-8,
    follow as its two blobs)."""
    header: dict[str, Any] = {"mode": pixels.mode, "width": pixels.width, "height": pixels.height,
              "width_pt": pixels.width_pt, "height_pt": pixels.height_pt,
              "picture": pixels.picture, "photo": pixels.photo}
    if pixels.words:
        header["words"] = [[w.text, w.left, w.top, w.width, w.height, w.vertical]
                           for w in pixels.words]
    return header


def max_bytes(limits: Limits) -> int:
    """The largest pixel blob one frame may announce under `limits`."""
    return max(limits.max_page_pixels, limits.max_image_pixels) * max(MODES.values())


def clean_text(untrusted: bytes) -> str:
    """UTF-8 text without control characters, or `SandboxFailure` when it is not UTF-8."""
    try:
        text = untrusted.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SandboxFailure("converter text is not UTF-8") from exc
    return _CONTROLS.sub("", text.replace("\f", "\n"))


def checked(untrusted: dict[str, Any], data: bytes, text: bytes, limits: Limits) -> Pixels:
    """`Pixels` from a frame header and its blobs, or `SandboxFailure` for anything off:
    an unknown mode, a size beyond the limits, a byte count that does not match, text
    that is not UTF-8."""
    try:
        mode = str(untrusted["mode"])
        width, height = int(untrusted["width"]), int(untrusted["height"])
        width_pt, height_pt = float(untrusted["width_pt"]), float(untrusted["height_pt"])
        picture, photo = untrusted["picture"] is True, untrusted["photo"] is True
    except (KeyError, TypeError, ValueError) as exc:
        raise SandboxFailure("malformed pixels") from exc
    cap = limits.max_image_pixels if picture else limits.max_page_pixels
    if mode not in MODES or min(width, height) <= 0 or width * height > cap:
        raise SandboxFailure("pixels beyond the limits")
    if len(data) != width * height * MODES[mode]:
        raise SandboxFailure("pixel count does not match the size")
    if not all(math.isfinite(v) and 0 < v <= MAX_PAGE_POINTS for v in (width_pt, height_pt)):
        raise SandboxFailure("page size beyond the limits")
    words = checked_words(untrusted.get("words", []), width, height)
    return Pixels(mode, width, height, data, width_pt, height_pt, picture, photo,
                  clean_text(text), words)


def checked_words(untrusted: Any, width: int, height: int) -> tuple[Word, ...]:
    """Words whose boxes lie inside the page and whose text is short and clean, or
    `SandboxFailure`: the gateway writes them into a PDF (`converters.pdfwrite`)."""
    if not isinstance(untrusted, list) or len(untrusted) > MAX_WORDS:
        raise SandboxFailure("malformed words")
    words = []
    for item in untrusted:
        if not (isinstance(item, list) and len(item) == 6 and isinstance(item[0], str)
                and all(type(v) is int for v in item[1:5]) and isinstance(item[5], bool)):
            raise SandboxFailure("malformed word")
        text, left, top, w, h, vertical = item
        text = _NOT_IN_WORDS.sub("", text).strip()
        if (not text or len(text) > MAX_WORD_CHARS or min(left, top) < 0 or min(w, h) <= 0
                or left + w > width or top + h > height):
            raise SandboxFailure("word beyond the page")
        words.append(Word(text, left, top, w, h, vertical))
    return tuple(words)
