"""Header fields of untrusted mail: the header block, RFC 2047 words, MIME parameters.

Written here rather than taken from `email` because the decisions are ours to make and
to report: which of two `boundary=` wins (neither: it is ambiguous), what a broken
encoded word becomes (its raw text, with a defect), how a ISO-2022-JP word split across
two encoded words is joined (bytes first, then decoded), and what raw 8-bit header
bytes mean (detected like a body, never surrogate-escaped).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from converters.charset import decode_bytes

#: More header fields or bytes than this in one part is not mail but an attack on the parser.
MAX_HEADER_LINES = 2000
MAX_HEADER_BYTES = 1024 * 1024

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t\r\n]*")
_QP_HEX = re.compile(r"=([0-9A-Fa-f]{2})")


@dataclass
class HeaderBlock:
    """The fields of one part in order, values as raw bytes with folding removed."""

    fields: list[tuple[str, bytes]] = field(default_factory=list)
    body_start: int = 0
    defects: list[str] = field(default_factory=list)
    too_many: bool = False

    def all(self, name: str) -> list[bytes]:
        wanted = name.lower()
        return [v for k, v in self.fields if k.lower() == wanted]


def read_header_block(data: bytes, start: int, end: int) -> HeaderBlock:
    """Read fields from `data[start:end]` (LF line ends) up to the blank line.

    A line that is neither a field nor a continuation ends the header, as in the stdlib,
    and is recorded: what follows it is body. Values are sliced once per field (never
    grown line by line), so a field folded over a million lines costs linear time; a
    header block over MAX_HEADER_BYTES is refused like too many fields.
    """
    block = HeaderBlock(body_start=end)
    if start < end and data[start:start + 1] != b"\n" and not _FIELD.match(data, start, end):
        block.defects.append("header_missing")
        block.body_start = start
        return block
    current: tuple[str, int] | None = None  # name, offset where its value starts
    value_end = start
    pos = start
    while pos < end:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl
        if line_end - start > MAX_HEADER_BYTES:
            block.too_many = True
            return block
        if data[pos:pos + 1] in (b" ", b"\t") and current is not None:
            value_end = line_end  # a folded continuation of the current field
        elif line_end == pos:
            block.body_start = min(line_end + 1, end)
            break
        elif (m := _FIELD.match(data, pos, line_end)) is not None:
            _close(block, data, current, value_end)
            if len(block.fields) >= MAX_HEADER_LINES:
                block.too_many = True
                return block
            current, value_end = (m[1].decode("ascii"), m.end()), line_end
        else:
            block.defects.append("header_body_separator_missing")
            block.body_start = pos
            break
        pos = line_end + 1
    _close(block, data, current, value_end)
    return block


def _close(block: HeaderBlock, data: bytes, current: tuple[str, int] | None,
           value_end: int) -> None:
    if current is not None:
        name, value_start = current
        block.fields.append((name, data[value_start:value_end].replace(b"\n", b"").lstrip(b" \t")))


def text_of(untrusted: bytes) -> str:
    """Raw field bytes as text: ASCII as is, 8-bit bytes detected like a body."""
    if untrusted.isascii():
        return untrusted.decode("ascii")
    return decode_bytes(untrusted, None)[0]


def decode_words(untrusted: str, defects: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded words; adjacent words of one charset are joined as bytes.

    Joining before decoding matters for Japanese: mailers split ISO-2022-JP and Shift_JIS
    words in the middle of a character. A word that does not decode stays as its raw
    text and adds `encoded_word_invalid` to `defects`.
    """
    if "=?" not in untrusted:
        return untrusted
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending_charset
        if pending:
            out.append(decode_bytes(b"".join(pending), pending_charset)[0])
            pending.clear()
        pending_charset = None

    after_word = False
    for m in _WORD.finditer(untrusted):
        gap = untrusted[pos:m.start()]
        charset = m[1].split("*", 1)[0].lower()
        raw = _word_bytes(m[2].lower(), m[3])
        pos = m.end()
        if raw is None:
            if defects is not None:
                defects.append("encoded_word_invalid")
            flush()
            out.append(gap + m[0])
            after_word = False
            continue
        if after_word and _BETWEEN_WORDS.fullmatch(gap):
            if charset != pending_charset:
                flush()  # whitespace between two encoded words is dropped (RFC 2047 6.2)
        else:
            flush()
            out.append(gap)
        pending.append(raw)
        pending_charset = charset
        after_word = True
    flush()
    out.append(untrusted[pos:])
    return "".join(out)


def _word_bytes(encoding: str, untrusted: str) -> bytes | None:
    if encoding == "q":
        text = untrusted.replace("_", " ")
        if not text.isascii():
            return None
        return _QP_HEX.sub(lambda m: chr(int(m[1], 16)), text).encode("latin-1")
    cleaned = untrusted.rstrip("=")
    if len(cleaned) % 4 == 1:
        return None
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_field(untrusted: bytes, defects: list[str] | None = None) -> str:
    """A field value as the text a reader should see."""
    return decode_words(text_of(untrusted), defects)


@dataclass
class Params:
    """A structured field (`Content-Type`, `Content-Disposition`): value and parameters."""

    value: str
    params: dict[str, str] = field(default_factory=dict)
    #: Every distinct value seen for a parameter that was given more than once, or both
    #: as `name=` and `name*=` (RFC 2231) with different results.
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


_PARAM = re.compile(
    r'\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)\s*(?:;|$)', re.DOTALL
)
_SECTION = re.compile(r"([^*]+)\*(?:(\d{1,3})\*?|)(\*?)$")


def parse_params(untrusted: str) -> Params:
    """Split `type/subtype; a=b; c*0*=...` into value and decoded parameters."""
    value, _, rest = untrusted.partition(";")
    result = Params(value.strip().lower())
    plain: dict[str, list[str]] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            result.defects.append("param_syntax_invalid")
            break
        pos = m.end()
        name, raw = m[1].lower(), m[2].strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1] if raw.endswith('"') and len(raw) > 1
                         else raw[1:])
        sec = _SECTION.match(name)
        if sec is None:
            plain.setdefault(name, []).append(raw)
            continue
        index = int(sec[2]) if sec[2] else 0
        encoded = name.endswith("*")
        sections.setdefault(sec[1], {})[index] = (raw, encoded)
    for name, values in plain.items():
        decoded = [decode_words(v, result.defects) for v in values]
        result.params[name] = decoded[0]
        if len(set(decoded)) > 1:
            result.conflicts[name] = sorted(set(decoded))
    for name, parts in sections.items():
        _merge_rfc2231(result, name, parts)
    return result


def _merge_rfc2231(result: Params, name: str, parts: dict[int, tuple[str, bool]]) -> None:
    indexes = sorted(parts)
    if indexes != list(range(len(indexes))):
        result.defects.append("rfc2231_gap")
        result.conflicts.setdefault(name, []).append("(incomplete)")
        indexes = [i for n, i in enumerate(indexes) if i == n]  # keep sections 0..gap
    charset = None
    chunks: list[bytes] = []
    for i in indexes:
        raw, encoded = parts[i]
        if encoded:
            if i == 0 and raw.count("'") >= 2:
                charset, _, raw = raw.split("'", 2)
            chunks.append(unquote_to_bytes(raw))
        else:
            chunks.append(raw.encode("utf-8", "surrogateescape"))
    text = decode_bytes(b"".join(chunks), charset or None)[0]
    previous = result.params.get(name)
    if previous is not None and previous != text:
        seen = result.conflicts.setdefault(name, [])
        seen.extend(v for v in (previous, text) if v not in seen)
    result.params[name] = text  # RFC 2231 form wins: it is the one made for non-ASCII
