"""The invisible text layer of an image-only PDF: OCR's words where the reader sees them.

Trusted code (the gateway's PDF writer), fed with words that passed
`converters.pixels.checked_words`. Each word is drawn in render mode 3 (neither filled
nor stroked: invisible), stretched over its box, so that a viewer finds it, selects it
where it is on the image and copies it as the right characters.

The font is a Type0 font with Identity-H (and Identity-V for vertical words) that
embeds nothing: glyphs are never drawn, so none are needed. Character codes are
UTF-16 code units, and the ToUnicode map says so (one range per high byte); a character
beyond the BMP gets a code of its own from the surrogate area, which no BMP character
uses, mapped to its surrogate pair. Text is written as hex strings only: no word can
close a string or add an operator.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

#: Objects `font_objects` writes: two Type0 fonts, their CID font, its descriptor, the map.
FONT_OBJECTS = 5
#: Codes for characters beyond the BMP: the surrogate area, unused by BMP characters.
_ASTRAL_FIRST, _ASTRAL_LAST = 0xD800, 0xDFFF
#: A blank's width in em (the CID font's /W): a full em between Latin words made
#: pdftotext split a line into two columns.
_BLANK_EM = 0.25
#: Where a glyph box lies around the baseline, in 1/1000 em (the descriptor says so too).
_DESCENT = 0.12
_CMAP_HEAD = """/CIDInit /ProcSet findresource begin
12 dict begin
begincmap
/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def
/CMapName /Adobe-Identity-UCS def
/CMapType 2 def
1 begincodespacerange
<0000> <FFFF>
endcodespacerange
"""
_CMAP_TAIL = """endcmap
CMapName currentdict /CMap defineresource pop
end
end
"""


@dataclass(frozen=True)
class PlacedWord:
    """A word and its box in points, measured from the page's top left corner."""

    text: str
    left: float
    top: float
    width: float
    height: float
    vertical: bool = False


def astral_codes(words: list[PlacedWord]) -> dict[str, int]:
    """Codes for the document's characters beyond the BMP (at most 2,048: others are
    left out of the layer)."""
    chars = sorted({c for w in words for c in w.text if ord(c) > 0xFFFF})
    room = _ASTRAL_LAST - _ASTRAL_FIRST + 1
    return {c: _ASTRAL_FIRST + i for i, c in enumerate(chars[:room])}


def _codes(text: str, astral: dict[str, int]) -> list[int]:
    return [ord(c) if ord(c) <= 0xFFFF and not 0xD800 <= ord(c) <= 0xDFFF else astral[c]
            for c in text if ord(c) <= 0xFFFF or c in astral]


def text_layer(words: tuple[PlacedWord, ...], page_height: float, astral: dict[str, int]
               ) -> str:
    """Content stream operators drawing `words` invisibly (F1 horizontal, F2 vertical)."""
    ops = ["BT 3 Tr"]
    for word in words:
        codes = _codes(word.text, astral)
        if codes:
            ops.append(_vertical(word, codes, page_height) if word.vertical
                       else _horizontal(word, codes, page_height))
    ops.append("ET")
    return "\n".join(ops)


def _hex(codes: list[int]) -> str:
    return "<" + "".join(f"{c:04X}" for c in codes) + ">"


def _horizontal(word: PlacedWord, codes: list[int], page_height: float) -> str:
    """One em a character (a blank a quarter), squeezed or stretched (Tz) to the box's width."""
    size = max(word.height, 0.1)
    ems = sum(_BLANK_EM if c == 0x20 else 1.0 for c in codes)
    stretch = min(1000.0, max(1.0, 100 * word.width / (ems * size)))
    baseline = page_height - word.top - word.height + _DESCENT * size
    return (f"/F1 {size:.2f} Tf {stretch:.2f} Tz 0 Tc 1 0 0 1 {word.left:.2f} {baseline:.2f} "
            f"Tm {_hex(codes)} Tj")


def _vertical(word: PlacedWord, codes: list[int], page_height: float) -> str:
    """One em wide, each character one em down (less the spacing that fits the box)."""
    size = max(word.width, 0.1)
    spacing = size - word.height / len(codes)  # vertical advance is -(size - Tc)
    centre = word.left + word.width / 2
    return (f"/F2 {size:.2f} Tf 100 Tz {spacing:.2f} Tc 1 0 0 1 {centre:.2f} "
            f"{page_height - word.top:.2f} Tm {_hex(codes)} Tj")


def font_objects(first: int, astral: dict[str, int]) -> list[tuple[bytes, bytes | None]]:
    """The font objects, numbered from `first` (F1, F2, then the shared parts)."""
    cid, descriptor, to_unicode = first + 2, first + 3, first + 4
    type0 = ("<< /Type /Font /Subtype /Type0 /BaseFont /MugaikaOCR /Encoding /Identity-{} "
             f"/DescendantFonts [{cid} 0 R] /ToUnicode {to_unicode} 0 R >>")
    cmap = zlib.compress(to_unicode_cmap(astral).encode("ascii"), 6)
    return [
        (type0.format("H").encode(), None),
        (type0.format("V").encode(), None),
        (f"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /MugaikaOCR /CIDSystemInfo "
         f"<< /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /FontDescriptor "
         f"{descriptor} 0 R /DW 1000 /W [32 [{_BLANK_EM * 1000:.0f}]] /DW2 [880 -1000] "
         "/CIDToGIDMap /Identity >>".encode(), None),
        (b"<< /Type /FontDescriptor /FontName /MugaikaOCR /Flags 4 /FontBBox [0 -120 1000 880]"
         b" /ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 880 /StemV 80 >>", None),
        (b"/Filter /FlateDecode", cmap),
    ]


def to_unicode_cmap(astral: dict[str, int]) -> str:
    """Codes are UTF-16 code units (ranges may only vary in the last byte, at most 100
    to a block), the astral codes map to their surrogate pairs."""
    ranges = [f"<{hi:02X}00> <{hi:02X}FF> <{hi:02X}00>" for hi in range(256)
              if not 0xD8 <= hi <= 0xDF]
    chars = [f"<{code:04X}> <{char.encode('utf-16-be').hex().upper()}>"
             for char, code in astral.items()]
    parts = [_CMAP_HEAD]
    for kind, entries in (("bfrange", ranges), ("bfchar", chars)):
        for i in range(0, len(entries), 100):
            block = entries[i:i + 100]
            parts.append(f"{len(block)} begin{kind}\n" + "\n".join(block) + f"\nend{kind}\n")
    parts.append(_CMAP_TAIL)
    return "".join(parts)
