"""ISO-2022-JP and EUC-JP with the Microsoft (NEC/IBM) extensions, which Python lacks.

Python's `iso2022_jp` and `euc_jp` codecs stop at JIS X 0208, but Outlook, Becky! and
Windows mail servers emit the CP50220 family: NEC special characters in row 13 (①㈱Ⅲ㍻)
and NEC-selected IBM extensions in rows 89-92 (髙, 﨑). Each JIS pair maps to exactly one
CP932 code by the Shift_JIS arithmetic, so we decode through CP932 and get the Windows
mapping for every character.

Speed: the common case (no extension characters) goes through the C `euc_jp` codec and a
six-character table that aligns its mapping with CP932's (the wave-dash family); only
text with extension characters takes the pair-by-pair path.
"""

from __future__ import annotations

import re

__all__ = ["decode_cp50220", "decode_cp51932", "encode_cp50220"]

# euc_jp and cp932 map six JIS X 0208 cells to different code points; we use CP932's.
_EUC_TO_CP932 = str.maketrans({
    "\u301c": "\uff5e", "\u2016": "\u2225", "\u2212": "\uff0d",
    "\u00a2": "\uffe0", "\u00a3": "\uffe1", "\u00ac": "\uffe2",
})
_HIGH = bytes.maketrans(bytes(range(0x21, 0x7f)), bytes(range(0xa1, 0xff)))

_ESCAPES = re.compile(rb"(\x1b\$\(D|\x1b\$[@B]|\x1b&@\x1b\$B|\x1b\([BJI]|[\x0e\x0f])")
_ASCII, _JIS0208, _JIS0212, _KANA = range(4)
_MODES = {
    b"\x1b(B": _ASCII, b"\x1b(J": _ASCII, b"\x1b(I": _KANA, b"\x0e": _KANA, b"\x0f": _ASCII,
    b"\x1b$@": _JIS0208, b"\x1b$B": _JIS0208, b"\x1b&@\x1b$B": _JIS0208,
    b"\x1b$(D": _JIS0212,
}
_SEPARATORS = re.compile(rb"(\r\n|\n|\r|[ \t]+)")


def _pair_to_sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
    if j1 & 1:
        s2 = j2 + 0x1F
        if s2 >= 0x7F:
            s2 += 1
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2))


def _jis_pairs(untrusted: bytes) -> str:
    """Decode 7-bit JIS X 0208 pairs (with NEC/IBM rows) to text."""
    if len(untrusted) % 2 or any(b < 0x21 or b > 0x7E for b in untrusted):
        raise ValueError("broken JIS X 0208 sequence")
    try:
        return untrusted.translate(_HIGH).decode("euc_jp").translate(_EUC_TO_CP932)
    except UnicodeDecodeError:
        pass
    sjis = b"".join(_pair_to_sjis(untrusted[i], untrusted[i + 1])
                    for i in range(0, len(untrusted), 2))
    return sjis.decode("cp932")


def _segment(mode: int, untrusted: bytes) -> str:
    if mode == _ASCII:
        return untrusted.decode("ascii")
    if mode == _KANA:
        if any(b < 0x21 or b > 0x5F for b in untrusted):
            raise ValueError("broken JIS X 0201 katakana")
        return "".join(chr(0xFF61 + b - 0x21) for b in untrusted)
    if mode == _JIS0212:
        if len(untrusted) % 2:
            raise ValueError("broken JIS X 0212 sequence")
        return b"".join(b"\x8f" + untrusted[i:i + 2].translate(_HIGH)
                        for i in range(0, len(untrusted), 2)).decode("euc_jp")
    return _jis_pairs(untrusted)


def decode_cp50220(untrusted: bytes) -> str:
    """Decode ISO-2022-JP as Windows does (CP50220/50221/50222), strictly.

    Raises ValueError (UnicodeDecodeError is one) on 8-bit bytes, unknown escapes or
    broken pairs, so that the caller falls back to detection instead of guessing.
    A line break inside a two-byte run ends the run, as most mailers assume.
    """
    if not untrusted.isascii():
        raise UnicodeDecodeError("cp50220", untrusted, 0, 1, "8-bit byte in ISO-2022-JP")
    out: list[str] = []
    mode = _ASCII
    for i, piece in enumerate(_ESCAPES.split(untrusted)):
        if i % 2:
            mode = _MODES[piece]
            continue
        if b"\x1b" in piece:
            raise ValueError("unknown escape sequence")
        if mode == _ASCII:
            out.append(piece.decode("ascii"))
            continue
        for j, token in enumerate(_SEPARATORS.split(piece)):
            if j % 2:  # whitespace stays in the run; a line break ends it
                out.append(token.decode("ascii"))
                if token.strip(b" \t"):
                    mode = _ASCII
            elif token:
                out.append(_segment(mode, token))
    return "".join(out)


def decode_cp51932(untrusted: bytes) -> str:
    """Decode EUC-JP strictly, falling back to CP51932 (NEC/IBM rows) when needed."""
    try:
        return untrusted.decode("euc_jp")
    except UnicodeDecodeError:
        pass
    out = bytearray()
    i, n = 0, len(untrusted)
    while i < n:
        b = untrusted[i]
        if b < 0x80:
            out.append(b)
            i += 1
        elif b == 0x8E and i + 1 < n and 0xA1 <= untrusted[i + 1] <= 0xDF:
            out.append(untrusted[i + 1])  # half-width katakana is one byte in CP932
            i += 2
        elif 0xA1 <= b <= 0xFE and i + 1 < n and 0xA1 <= untrusted[i + 1] <= 0xFE:
            out += _pair_to_sjis(b & 0x7F, untrusted[i + 1] & 0x7F)
            i += 2
        else:
            raise UnicodeDecodeError("cp51932", untrusted, i, i + 1, "invalid EUC-JP byte")
    return out.decode("cp932")


def _sjis_to_pair(s1: int, s2: int) -> bytes:
    s1 -= 0xB0 if s1 >= 0xE0 else 0x70
    j1 = s1 * 2
    if s2 < 0x9F:
        j1 -= 1
        j2 = s2 - 0x1F - (1 if s2 >= 0x80 else 0)
    else:
        j2 = s2 - 0x7E
    return bytes((j1, j2))


def _encode_line(line: str) -> bytes | None:
    try:
        sjis = line.encode("cp932")
    except UnicodeEncodeError:
        return None
    out = bytearray()
    double = False
    i = 0
    while i < len(sjis):
        b = sjis[i]
        if b < 0x80:
            if b in (0x1B, 0x0E, 0x0F):
                return None
            if double:
                out += b"\x1b(B"
                double = False
            out.append(b)
            i += 1
            continue
        if not (0x81 <= b <= 0x9F or 0xE0 <= b <= 0xEF) or i + 1 >= len(sjis):
            return None  # half-width kana (caller widens it) or user-defined area
        if not double:
            out += b"\x1b$B"
            double = True
        out += _sjis_to_pair(b, sjis[i + 1])
        i += 2
    if double:
        out += b"\x1b(B"
    return bytes(out)


def encode_cp50220(text: str) -> bytes | None:
    """Encode text as CP50220 ISO-2022-JP, each line ending in ASCII; None if impossible."""
    lines: list[bytes] = []
    for line in text.split("\n"):
        encoded = _encode_line(line)
        if encoded is None:
            return None
        lines.append(encoded)
    return b"\n".join(lines)
