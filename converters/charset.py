"""Bytes of unknown or doubtful encoding to text, with Japanese encodings first-class.

Used for mail bodies, headers and text attachments alike, so that a file and a body with
the same bytes decode the same way.

Decisions:
- Labels name the Windows superset real mailers use: Shift_JIS is CP932, ISO-2022-JP is
  the CP50220 family (NEC row 13 ①㈱Ⅲ㍻ and the NEC-selected IBM rows 89-92 such as 髙),
  EUC-JP falls back to CP51932 (the same extensions) when strict EUC-JP fails.
- A label is trusted only as far as the bytes agree with it: a strict decode failure,
  or 8-bit bytes under an ASCII/Latin-1 label, sends the bytes to detection.
- Detection is Japanese-first (ESC sequences → ISO-2022-JP; unmistakable UTF-7; UTF-8;
  then CP932 vs EUC-JP scored by how Japanese the result looks) and only then
  charset-normalizer.
- U+FFFD appears only when no candidate decodes the bytes strictly.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from charset_normalizer import from_bytes

from converters.emoji import KDDI_MAIL_ERRORS, current_carrier, replace_emoji
from converters.jis import decode_cp50220, decode_cp51932, encode_cp50220

__all__ = ["decode_bytes", "encode_iso2022jp", "normalize_label"]

# Labels that real mail uses, mapped to the decoder we apply ("cp50220" and "cp51932" are
# ours, in converters/jis.py; everything else is a Python codec name).
_ALIASES = {
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "windows-31j": "cp932", "ms_kanji": "cp932", "csshiftjis": "cp932", "cp932": "cp932",
    "iso-2022-jp": "cp50220", "csiso2022jp": "cp50220", "iso-2022-jp-ms": "cp50220",
    "cp50220": "cp50220", "cp50221": "cp50220", "cp50222": "cp50220", "jis": "cp50220",
    "iso-2022-jp-1": "cp50220", "iso-2022-jp-2": "iso2022_jp_2",
    "euc-jp": "cp51932", "x-euc-jp": "cp51932", "eucjp": "cp51932", "cp51932": "cp51932",
    "eucjp-ms": "cp51932", "euc-jp-ms": "cp51932",
    "utf-7": "utf_7", "unicode-1-1-utf-7": "utf_7", "utf7": "utf_7",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "ascii",
    "ascii": "ascii", "ansi_x3.4-1968": "ascii", "gb2312": "gb18030", "gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "iso-8859-8-i": "iso8859_8",
}
#: Python codecs that are not character sets a sender can legitimately name.
_REFUSED = {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "charmap"}
#: Labels whose codec decodes any byte string, so a "successful" decode proves nothing.
_PERMISSIVE = {"ascii", "cp1252", "iso8859_1", "latin_1"}
_PLAUSIBLE = ("gb", "big5", "cp949", "euc_kr", "cp125", "koi8", "iso8859", "utf", "cp874")
_OURS = {"cp50220": decode_cp50220, "cp51932": decode_cp51932}

_HALF_WIDTH_KANA = re.compile("[\uff61-\uff9f]+")
_KANA = re.compile("[\u3040-\u30ff]")
_ESC_JIS = re.compile(rb"\x1b(?:\$[@B]|\$\(D|\(J|\(I|&@)")
#: A UTF-7 shift sequence long enough to hold one UTF-16 unit (16 bits: 3 base64 digits).
_UTF7_SHIFT = re.compile(rb"\+[A-Za-z0-9/][A-Za-z0-9+/]{2}")


def normalize_label(untrusted_label: str | None) -> str | None:
    """The decoder name for a declared charset, or None when it is missing or unusable."""
    if not untrusted_label:
        return None
    label = untrusted_label.strip().strip("\"'").lower()
    if not label or len(label) > 40:
        return None
    if label in _ALIASES:
        return _ALIASES[label]
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):  # ValueError: a NUL in the label (found by make fuzz)
        return None
    # codecs.lookup also finds str->str and bytes->bytes transforms (rot13, base64): never.
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    return _ALIASES.get(info.name, info.name)


def _strict(untrusted: bytes, codec: str) -> str | None:
    try:
        if codec in _OURS:
            return _OURS[codec](untrusted)
        if codec == "cp932" and current_carrier() == "kddi":
            return untrusted.decode(codec, KDDI_MAIL_ERRORS)
        return untrusted.decode(codec)
    except (UnicodeDecodeError, LookupError, ValueError):
        return None


def decode_bytes(untrusted: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode `untrusted`; return the text and the decoder actually used.

    Carrier emoji come out as Unicode emoji (`converters.emoji`).
    """
    text, codec = _decode(untrusted, declared)
    return replace_emoji(text, codec), codec


def _decode(untrusted: bytes, declared: str | None) -> tuple[str, str]:
    """The text of `untrusted` and the decoder used.

    Order: the declared charset strictly; a confident Japanese or UTF-8 reading (labels
    lie); the declared charset with a few U+FFFD when only a few bytes are broken (one
    bad byte must not turn a whole UTF-8 mail into mojibake); other scripts by
    charset-normalizer; UTF-8 with U+FFFD as the last resort.
    """
    codec = normalize_label(declared)
    if codec is not None and not (codec in _PERMISSIVE and not untrusted.isascii()):
        text = _strict(untrusted, codec)
        if text is not None:
            return text, codec
        if codec == "cp50220":  # ISO-2022-JP-2/2004 escapes our decoder does not know
            for alt in ("iso2022_jp_2", "iso2022_jp_2004"):
                if (text := _strict(untrusted, alt)) is not None:
                    return text, alt
    confident = detect(untrusted, trust_latin=False)
    if confident is not None:
        return confident
    if codec is not None:
        nearly = _strict(untrusted, codec) or _nearly(untrusted, codec)
        if nearly is not None:
            return nearly, codec
    guess = detect(untrusted, trust_latin=True)
    if guess is not None:
        return guess
    return untrusted.decode("utf-8", errors="replace"), "utf-8"


def _nearly(untrusted: bytes, codec: str) -> str | None:
    """The declared decoding with U+FFFD, if at most 2% of the characters are broken."""
    python_codec = {"cp50220": "iso2022_jp_ext", "cp51932": "euc_jp"}.get(codec, codec)
    try:
        text = untrusted.decode(python_codec, errors="replace")
    except LookupError:
        return None
    return text if text.count("\ufffd") <= max(1, len(text) // 50) else None


def detect(untrusted: bytes, trust_latin: bool = True) -> tuple[str, str] | None:
    """Guess the encoding of unlabelled or mislabelled bytes, Japanese first.

    With `trust_latin` False (a Latin label was declared) only a Japanese or UTF-8 reading
    is returned; the caller then keeps its label.
    """
    if untrusted.isascii():
        if _ESC_JIS.search(untrusted) and (text := _strict(untrusted, "cp50220")) is not None:
            return text, "cp50220"
        if (text := _utf7(untrusted)) is not None:
            return text, "utf_7"
        return untrusted.decode("ascii"), "ascii"
    text = _strict(untrusted, "utf-8")
    if text is not None:
        return text, "utf-8"
    score, best = _best_japanese(untrusted)
    if best is not None and score >= 0.6:
        return best
    return _detect_other_than_japanese(untrusted, score, best) if trust_latin else None


def _utf7(untrusted: bytes) -> str | None:
    """Unlabelled 7-bit bytes as UTF-7 (`+ZeVnLIqe-` is 日本語), only when unmistakable.

    Plain ASCII uses "+" too (C++, 1+1, +81-3-..., user+tag@): the whole text must decode
    strictly, which such uses almost never survive, to at least two characters outside
    ASCII that read as Japanese and all exist in CP932. A stray decodable run yields
    random code points (Hangul, rare CJK, private use), which fail the last test.
    Mail in other scripts sent as unlabelled UTF-7 therefore stays ASCII.
    """
    if _UTF7_SHIFT.search(untrusted) is None:
        return None
    text = _strict(untrusted, "utf_7")
    if text is None:
        return None
    shifted = "".join(ch for ch in text if not ch.isascii())
    if len(shifted) < 2 or japanese_score(shifted) < 0.6:
        return None
    try:
        shifted.encode("cp932")
    except UnicodeEncodeError:
        return None
    return text


def _detect_other_than_japanese(untrusted: bytes, score: float,
                                best: tuple[str, str] | None) -> tuple[str, str] | None:
    """Kanji-only Japanese (a CSV of names) scores 0.5 and still wins: this gateway's mail
    is Japanese, and Chinese or Korean bytes read as CP932 turn into half-width katakana,
    which scores far lower. charset-normalizer guesses cp949 for such short rosters."""
    if best is not None and score >= 0.45:
        return best
    return _detect_other(untrusted) or best


def _best_japanese(untrusted: bytes) -> tuple[float, tuple[str, str] | None]:
    best: tuple[float, tuple[str, str] | None] = (-1.0, None)
    for codec in ("cp932", "cp51932"):
        candidate = _strict(untrusted, codec)
        if candidate is not None and (score := japanese_score(candidate)) > best[0]:
            best = (score, (candidate, codec))
    return best


def _detect_other(untrusted: bytes) -> tuple[str, str] | None:
    """charset-normalizer for other scripts, kept to codecs mail really uses.

    On short Latin text it likes exotic code pages (cp1006, mac_*); CP1252 reads those
    bytes the way the sender most likely meant them.
    """
    guess = from_bytes(untrusted[:65536]).best()
    if guess is not None and guess.encoding and guess.encoding.startswith(_PLAUSIBLE):
        text = _strict(untrusted, guess.encoding)
        if text is not None:
            return text, guess.encoding
    for codec in ("cp1252", "latin_1"):
        text = _strict(untrusted, codec)
        if text is not None:
            return text, codec
    return None


def japanese_score(text: str) -> float:
    """Share of non-ASCII characters that are ordinary Japanese (1.0 = all of them).

    Hiragana weighs double: misdecoded CP932/EUC-JP produces kanji and half-width
    katakana soup but hardly ever runs of hiragana.
    """
    total = 0
    good = 0.0
    for ch in text[:65536]:  # a sample is enough, and keeps 25 MB bodies cheap
        if ch < "\x80":
            continue
        total += 1
        if "\u3040" <= ch <= "\u309f":
            good += 2
        elif ("\u30a0" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff"
              or "\u3000" <= ch <= "\u303f" or "\uff01" <= ch <= "\uff5e"
              or "\u2460" <= ch <= "\u24ff" or "\u3200" <= ch <= "\u33ff"
              or "\u2150" <= ch <= "\u218f"):
            good += 1
    if not total:
        return 1.0
    if total > 8 and not _KANA.search(text[:65536]):
        good /= 2  # long Japanese text without any kana is more likely Chinese
    return min(1.0, good / total)


def encode_iso2022jp(text: str) -> bytes | None:
    """Encode for legacy clients as CP50220 (ISO-2022-JP plus NEC/IBM characters).

    Half-width katakana becomes full-width (ISO-2022-JP has no place for it, CP50220 does
    the same). Returns None when a character has no JIS form (emoji, JIS X 0213 kanji):
    the caller then keeps UTF-8 rather than lose text.
    """
    widened = _HALF_WIDTH_KANA.sub(lambda m: unicodedata.normalize("NFKC", m[0]), text)
    return encode_cp50220(widened)
