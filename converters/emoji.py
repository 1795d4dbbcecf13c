"""Emoji of Japanese mobile carriers (docomo, au/KDDI, SoftBank) as Unicode emoji.

Feature phones and carrier mail put emoji in Shift_JIS's user-defined area (and au in
ISO-2022-JP rows 0x75-0x7C). Decoded as CP932 they become private-use code points
(U+E6E2, U+E59F) that no LGWAN-side client shows. Unicode's `EmojiSources.txt`, shipped
by Debian's `unicode-data` package, maps each carrier's Shift_JIS code to its Unicode
emoji; we read it from there rather than keep a copy.

The carriers' codes overlap (SoftBank's F7BC is keycap 1, au's is a ribbon), so the
carrier is taken from the sender's domain when it is a carrier's: the pipeline sets it
for the message it reads (`sender_carrier`). Without that hint, private-use characters
are mapped only when one carrier's table holds every one of them, trying docomo, au and
SoftBank in that order; anything else stays as it was (it may be a company's 外字).
Under a hint, a code in the carrier's emoji area with no Unicode equivalent becomes 〓
(U+3013, GETA MARK), as Japanese mobile-mail libraries do.

Where the bytes come from matters: a code point means one thing after CP932 decoding
(`sjis` keys: U+E000 + the user-defined-area index) and another in UTF-8 mail from the
same phone (`unicode` keys, the carrier's own private-use assignment). UTF-8 is mapped
for docomo and SoftBank, whose assignments follow from the Shift_JIS code by
arithmetic; au's UTF-8 assignment does not, and is left alone.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache
from pathlib import Path

__all__ = ["CARRIERS", "KDDI_MAIL_ERRORS", "KDDI_MAIL_LEADS", "carrier_for_domain", "current_carrier",
           "emoji_sources", "replace_emoji", "sender_carrier"]

EMOJI_SOURCES = Path("/usr/share/unicode/EmojiSources.txt")
CARRIERS = ("docomo", "kddi", "softbank")
GETA = "\u3013"

#: Mail domains of the carriers' phone mail (subdomains included).
_DOMAINS = {
    "docomo.ne.jp": "docomo",
    "ezweb.ne.jp": "kddi", "au.com": "kddi",
    "softbank.ne.jp": "softbank", "i.softbank.jp": "softbank", "vodafone.ne.jp": "softbank",
    "disney.ne.jp": "softbank",
}
#: Each carrier's emoji area, as Shift_JIS code ranges (lead byte, first, last trail).
_AREAS = {
    "docomo": ((0xF8, 0x9F, 0xFC), (0xF9, 0x40, 0xFC)),
    "kddi": ((0xF3, 0x40, 0xFC), (0xF4, 0x40, 0x93), (0xF6, 0x40, 0xFC), (0xF7, 0x40, 0xFC)),
    "softbank": ((0xF7, 0x41, 0x9B), (0xF7, 0xA1, 0xF3), (0xF9, 0x41, 0x9B),
                 (0xF9, 0xA1, 0xED), (0xFB, 0x41, 0x8D), (0xFB, 0xA1, 0xD7)),
}
#: SoftBank's private-use pages (U+E001, U+E101 …) and the Shift_JIS rows they sit in.
_SOFTBANK_PAGES = {(0xF9, False): 0xE000, (0xF7, False): 0xE100, (0xF7, True): 0xE200,
                   (0xF9, True): 0xE300, (0xFB, False): 0xE400, (0xFB, True): 0xE500}
#: au mail's lead bytes (ISO-2022-JP rows 0x75-0x7C in Shift_JIS form) → the handset's.
KDDI_MAIL_LEADS = {0xEB: 0xF6, 0xEC: 0xF7, 0xED: 0xF3, 0xEE: 0xF4}

_PUA = re.compile("[\ue000-\ue757]")
_CARRIER: ContextVar[str | None] = ContextVar("mugaika_sender_carrier", default=None)


def carrier_for_domain(domain: str) -> str | None:
    """The carrier whose phone mail `domain` is (subdomains included), or None."""
    labels = domain.strip().rstrip(".").lower().split(".")
    for i in range(len(labels) - 1):
        carrier = _DOMAINS.get(".".join(labels[i:]))
        if carrier is not None:
            return carrier
    return None


@contextlib.contextmanager
def sender_carrier(carrier: str | None) -> Iterator[None]:
    """Decode text within this block as mail from `carrier`'s phones (None: unknown)."""
    token = _CARRIER.set(carrier)
    try:
        yield
    finally:
        _CARRIER.reset(token)


def current_carrier() -> str | None:
    return _CARRIER.get()


def replace_emoji(text: str, codec: str) -> str:
    """`text`, decoded from bytes with `codec`, with carrier emoji as Unicode emoji."""
    keys = "sjis" if codec in ("cp932", "cp50220") else "unicode" if codec == "utf-8" else ""
    if not keys:
        return text
    carrier = current_carrier()
    if carrier is not None:
        table = _table(carrier, keys)
        return text.translate(table) if table else text
    if keys == "unicode" or not _PUA.search(text):
        return text
    present = {ord(ch) for ch in _PUA.findall(text)}
    for candidate in CARRIERS:
        table = _table(candidate, keys, pua_only=True)
        if table and all(table.get(ch, GETA) != GETA for ch in present):
            return text.translate(table)
    return text


def _kddi_mail_code(error: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: an au mail code (Shift_JIS lead EB/EC, which CP932 leaves
    undefined) as its emoji; anything else stays an error."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    pair = error.object[error.start:error.start + 2]
    handset = KDDI_MAIL_LEADS.get(pair[0]) if len(pair) == 2 else None
    key = _sjis_key(handset << 8 | pair[1]) if handset is not None else None
    emoji = _table("kddi", "sjis").get(ord(key)) if key is not None else None
    if emoji is None:
        raise error
    return emoji, error.start + 2


#: The `errors` name under which CP932 decodes au mail codes (registered on import).
KDDI_MAIL_ERRORS = "mugaika-kddi-mail"
codecs.register_error(KDDI_MAIL_ERRORS, _kddi_mail_code)


@cache
def emoji_sources(path: Path = EMOJI_SOURCES) -> dict[str, dict[int, str]]:
    """carrier → {Shift_JIS code: Unicode emoji}; empty when the file is missing."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    tables: dict[str, dict[int, str]] = {carrier: {} for carrier in CARRIERS}
    for line in lines:
        fields = line.split("#", 1)[0].strip().split(";")
        if len(fields) != 4:
            continue
        emoji = "".join(chr(int(cp, 16)) for cp in fields[0].split())
        for carrier, code in zip(CARRIERS, fields[1:], strict=True):
            if code:
                tables[carrier][int(code, 16)] = emoji
    return tables


def _codes(carrier: str) -> Iterator[int]:
    for lead, first, last in _AREAS[carrier]:
        for trail in range(first, last + 1):
            if trail != 0x7F:
                yield lead << 8 | trail


def _sjis_key(code: int) -> str | None:
    try:
        return code.to_bytes(2, "big").decode("cp932")
    except UnicodeDecodeError:
        return None


def _softbank_key(code: int) -> str:
    lead, trail = code >> 8, code & 0xFF
    upper = trail > 0xA0
    base = _SOFTBANK_PAGES[(lead, upper)]
    return chr(base + (trail - 0xA0 if upper else trail - (0x40 if trail < 0x7F else 0x41)))


def _is_pua(ch: str) -> bool:
    return "\ue000" <= ch <= "\uf8ff"


@cache
def _table(carrier: str, keys: str, pua_only: bool = False) -> dict[int, str]:
    """A str.translate table: `carrier`'s emoji area (as decoded by `keys`) → emoji or 〓.

    SoftBank's rows FB41-FBD7 decode as IBM kanji under CP932: they are mapped only when
    the sender is known to be SoftBank's (`pua_only` False) and when Unicode has the emoji.
    """
    sources = emoji_sources().get(carrier)
    if not sources or (keys == "unicode" and carrier == "kddi"):
        return {}
    table: dict[int, str] = {}
    for code in _codes(carrier):
        key = _softbank_key(code) if keys == "unicode" and carrier == "softbank" \
            else _sjis_key(code)
        if key is None or not (_is_pua(key) or (code in sources and not pua_only)):
            continue
        table[ord(key)] = sources.get(code, GETA)
    return table
