"""Japanese legacy encodings the way real mailers write them.

The stdlib `iso2022_jp` codec refuses the NEC row-13 characters (①, ㈱, ㍻, Ⅲ) that
Japanese Windows mailers emit all the time (the "CP50220" family). We build such bytes
from CP932: every double-byte CP932 code maps arithmetically to its JIS X 0208 row and
cell, which is exactly what those mailers send between `ESC $ B` and `ESC ( B`.
"""

from __future__ import annotations

import base64

_ESC_KANJI = b"\x1b$B"
_ESC_ASCII = b"\x1b(B"


def _sjis_to_jis(lead: int, trail: int) -> bytes:
    """One CP932 double-byte code to its two 7-bit JIS bytes (rows 1-94)."""
    if lead >= 0xE0:
        lead -= 0x40
    row = (lead - 0x81) * 2 + 0x21
    if trail >= 0x9F:
        return bytes((row + 1, trail - 0x7E))
    return bytes((row, trail - 0x1F if trail < 0x7F else trail - 0x20))


def encode_iso2022jp_cp932(text: str) -> bytes:
    """Encode `text` as ISO-2022-JP with the NEC extensions (CP50220-style).

    Raises ValueError for characters outside JIS X 0208 + NEC row 13 (half-width kana,
    IBM extensions), which ISO-2022-JP cannot carry.
    """
    out = bytearray()
    kanji = False
    for char in text:
        if char in "\r\n" or ord(char) < 0x80:
            if kanji:
                out += _ESC_ASCII
                kanji = False
            out += char.encode("ascii")
            continue
        sjis = char.encode("cp932")
        if len(sjis) != 2 or sjis[0] >= 0xED:
            raise ValueError(f"not representable in ISO-2022-JP: U+{ord(char):04X}")
        if not kanji:
            out += _ESC_KANJI
            kanji = True
        out += _sjis_to_jis(sjis[0], sjis[1])
    if kanji:
        out += _ESC_ASCII
    return bytes(out)


def encoded_word_iso2022jp(text: str) -> str:
    """An RFC 2047 B-encoded word in ISO-2022-JP, as Japanese mailers put in Subject."""
    raw = encode_iso2022jp_cp932(text)
    return f"=?ISO-2022-JP?B?{base64.b64encode(raw).decode('ascii')}?="
