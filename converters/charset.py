"""Bytes of unknown or doubtful encoding to text, with Japanese encodings first-class.

Used for mail bodies, headers and text attachments alike, so that a file and a body with
the same bytes decode the same way.
"""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

# Labels that real mail uses for a Windows superset of what the label names.
_SUPERSETS = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "ms_kanji": "cp932",
    "euc-jp": "euc_jis_2004",
    "x-euc-jp": "euc_jis_2004",
    "iso-8859-1": "cp1252",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
}


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip('"').lower()
    label = _SUPERSETS.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_bytes(untrusted: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode `untrusted`; return the text and the codec actually used.

    The declared charset is tried strictly first; when it is missing, unknown or wrong,
    the encoding is detected. Undecodable bytes become U+FFFD only as a last resort.
    """
    codec = _codec(declared)
    if codec is not None:
        try:
            return untrusted.decode(codec), codec
        except UnicodeDecodeError:
            pass
    try:
        return untrusted.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = from_bytes(untrusted).best()
    if best is not None and best.encoding:
        return str(best), best.encoding
    return untrusted.decode(codec or "utf-8", errors="replace"), codec or "utf-8"
