"""ISO-2022-JP and EUC-JP with the Microsoft (NEC/IBM) extensions, which Python lacks.

Python's `iso2022_jp` and `euc_jp` codecs stop at JIS X 0208, but Outlook, Becky! and
Windows mail servers emit the CP50220 family: NEC special characters in row 13 (①㈱Ⅲ㍻)
and NEC-selected IBM extensions in rows 89-92 (髙, 﨑). Each JIS pair maps to exactly one
CP932 code by the Shift_JIS arithmetic, so we decode through CP932 and get the Windows
mapping for every character.

Speed: the pair arithmetic runs as byte-table translations (see `_pairs_to_sjis`), so
decoding stays in C whatever the text contains.
"""

from __future__ import annotations

import re

from converters.emoji import KDDI_MAIL_LEADS, current_carrier

__all__ = ["decode_cp50220", "decode_cp51932", "encode_cp50220"]

_HIGH = bytes.maketrans(bytes(range(0x21, 0x7f)), bytes(range(0xa1, 0xff)))
_LOW = bytes.maketrans(bytes(range(0xa1, 0xff)), bytes(range(0x21, 0x7f)))
_NOT_JIS = re.compile(rb"[^\x21-\x7e]")
_NOT_KANA = re.compile(rb"[^\x21-\x5f]")
_EUC_VALID = re.compile(rb"(?:[\x00-\x7f]|[\xa1-\xfe][\xa1-\xfe]|\x8e[\xa1-\xdf])*")
_EUC_RUN = re.compile(rb"(?:[\xa1-\xfe][\xa1-\xfe])+|\x8e([\xa1-\xdf])")


def _tables() -> tuple[bytes, bytes, bytes]:
    """Byte tables for the JIS → Shift_JIS arithmetic, applied with bytes.translate.

    The lead byte depends on the row alone; the trail byte on the cell and on whether the
    row is odd, which we fold into the cell's high bit before translating.
    """
    lead, odd, trail = bytearray(range(256)), bytearray(256), bytearray(range(256))
    for j in range(0x21, 0x7F):
        lead[j] = ((j + 1) >> 1) + (0x70 if j <= 0x5E else 0xB0)
        odd[j] = 0x80 if j & 1 else 0
        trail[j | 0x80] = j + 0x1F + (1 if j + 0x1F >= 0x7F else 0)
        trail[j] = j + 0x7E
    return bytes(lead), bytes(odd), bytes(trail)


_LEAD, _ODD, _TRAIL = _tables()
#: au phones send their emoji in rows 0x75-0x7C, where CP50220 has NEC-selected IBM kanji
#: (79-7C) or nothing: in mail from au, those rows lead to the handset's emoji codes.
_LEAD_KDDI = _LEAD.translate(
    bytes.maketrans(bytes(KDDI_MAIL_LEADS), bytes(KDDI_MAIL_LEADS.values())))


_ESCAPES = re.compile(rb"(\x1b\$\(D|\x1b\$[@B]|\x1b&@\x1b\$B|\x1b\([BJI]|[\x0e\x0f])")
_ASCII, _JIS0208, _JIS0212, _KANA = range(4)
_MODES = {
    b"\x1b(B": _ASCII, b"\x1b(J": _ASCII, b"\x1b(I": _KANA, b"\x0e": _KANA, b"\x0f": _ASCII,
    b"\x1b$@": _JIS0208, b"\x1b$B": _JIS0208, b"\x1b&@\x1b$B": _JIS0208,
    b"\x1b$(D": _JIS0212,
}
_SEPARATORS = re.compile(rb"(\r\n|\n|\r|[ \t]+)")


def _pairs_to_sjis(untrusted: bytes, lead: bytes = _LEAD) -> bytes:
    """7-bit JIS X 0208 pairs (any row 1-94, NEC and IBM rows included) to CP932 bytes.

    All in C: two translate calls and one big-integer OR, no Python loop per character,
    so a megabyte of JIS costs milliseconds.
    """
    rows, cells = untrusted[0::2], untrusted[1::2]
    flagged = (int.from_bytes(rows.translate(_ODD), "big")
               | int.from_bytes(cells, "big")).to_bytes(len(cells), "big")
    out = bytearray(len(untrusted))
    out[0::2] = rows.translate(lead)
    out[1::2] = flagged.translate(_TRAIL)
    return bytes(out)


def _jis_pairs(untrusted: bytes) -> str:
    """Decode 7-bit JIS X 0208 pairs (with NEC/IBM rows) to text, CP932's mapping."""
    if len(untrusted) % 2 or _NOT_JIS.search(untrusted):
        raise ValueError("broken JIS X 0208 sequence")
    lead = _LEAD_KDDI if current_carrier() == "kddi" else _LEAD
    return _pairs_to_sjis(untrusted, lead).decode("cp932")


def _segment(mode: int, untrusted: bytes) -> str:
    if mode == _ASCII:
        return untrusted.decode("ascii")
    if mode == _KANA:
        if _NOT_KANA.search(untrusted):
            raise ValueError("broken JIS X 0201 katakana")
        return untrusted.translate(_HIGH).decode("cp932")  # 0xA1-0xDF: half-width kana
    if mode == _JIS0212:
        if len(untrusted) % 2 or _NOT_JIS.search(untrusted):
            raise ValueError("broken JIS X 0212 sequence")
        euc = bytearray(len(untrusted) // 2 * 3)
        euc[0::3] = b"\x8f" * (len(untrusted) // 2)
        euc[1::3] = untrusted[0::2].translate(_HIGH)
        euc[2::3] = untrusted[1::2].translate(_HIGH)
        return bytes(euc).decode("euc_jp")
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
    if not _EUC_VALID.fullmatch(untrusted):  # JIS X 0212 (0x8F) has no CP932 form
        raise UnicodeDecodeError("cp51932", untrusted, 0, len(untrusted), "not CP51932")
    sjis = _EUC_RUN.sub(
        lambda m: m[1] if m[1] is not None else _pairs_to_sjis(m[0].translate(_LOW)), untrusted)
    return sjis.decode("cp932")


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
