"""Bytes in, a flat message model out: decoded headers and transfer-decoded leaf parts.

Defects are recorded, never raised. Our own splitter, not `email.message_from_bytes`:
the stdlib recurses once per nesting level (RecursionError at 1,000), takes seconds on
20,000 parts, and silently picks a winner when a part is ambiguous. Here the walk is an
explicit stack over offsets into one buffer, stops at the first cap it exceeds, and
every ambiguity is named.

Outcomes (the report's `defects` carry the codes):
- structure a client could read differently (two different Content-Types or boundaries
  on a multipart) → `too_complex = "ambiguous_mime_structure"`: quarantined whole;
- caps exceeded → `too_complex = "mime_depth_exceeded" | "mime_parts_exceeded" |
  "header_fields_exceeded"`: quarantined whole, in bounded time;
- a multipart that cannot be split (no boundary, boundary never found, encoded with
  base64) → one opaque `application/octet-stream` leaf marked `suspicious`;
- a leaf with conflicting type, names or encoding → `suspicious`: never used as body
  text, handled as an attachment under every name it was given.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from converters.emoji import carrier_for_domain, sender_carrier
from gateway.pipeline.headers import (
    HeaderBlock,
    Params,
    decode_field,
    parse_params,
    read_header_block,
    text_of,
)

_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_QP_BROKEN = re.compile(rb"=(?![0-9A-Fa-f]{2}|\n|$)")
_BOUNDARY_OK = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
_KNOWN_CTE = {"7bit", "8bit", "binary", "base64", "quoted-printable",
              "x-uuencode", "uuencode", "x-uue"}
#: The mbox separator `From sender date` as the first line, or right after the Received
#: fields before it (ingress writes ours in front of what the client sent). Each
#: alternative starts with a different byte, so a failed match backtracks line by line.
#: `From : x` (obsolete syntax, space before the colon) is a header field, not this.
_ENVELOPE_LINE = re.compile(
    rb"((?:(?i:received):[^\n]*\n(?:[ \t][^\n]*\n)*)*)From (?![ \t]*:)[^\n]*\n")


@dataclass(frozen=True)
class Leaf:
    """One non-multipart part. Every field except `part` is untrusted."""

    part: str
    content_type: str
    filename: str | None
    disposition: str | None
    charset: str | None
    payload: bytes
    content_id: str | None = None
    #: Every distinct name the part was given (filename, filename*, name): each must pass
    #: the attachment checks, since a mail client may show any of them.
    names: tuple[str, ...] = ()
    #: Path of the nearest enclosing multipart/alternative ("" when none).
    alternative: str = ""
    #: Why the part was read restrictively (a defect code), "" when it was not.
    suspicious: str = ""
    #: Content-Type parameters other than charset/name/boundary (e.g. format, delsp).
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ParsedMessage:
    #: Top-level fields in order, values decoded to text (RFC 2047, 8-bit detected).
    headers: tuple[tuple[str, str], ...]
    leaves: tuple[Leaf, ...]
    defects: tuple[str, ...] = ()
    #: Non-empty when the message must be quarantined whole (caps exceeded, ambiguous).
    too_complex: str = ""
    #: Top-level fields with encoded words left as they were (for address parsing).
    raw_headers: tuple[tuple[str, str], ...] = ()
    #: The mobile carrier whose phone sent this (From: domain), for its emoji; or None.
    carrier: str | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def raw_header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.raw_headers if k.lower() == wanted), None)


class _TooComplex(Exception):
    """Internal: stop the walk; the message is quarantined with this reason."""


@dataclass
class _Walk:
    data: bytes
    max_depth: int
    max_parts: int
    defects: list[str] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    parts: int = 0

    def defect(self, code: str) -> None:
        if code not in self.defects:
            self.defects.append(code)


def normalize_line_ends(untrusted: bytes, defects: list[str]) -> bytes:
    """CRLF, bare CR and bare LF all become LF; bare CR and mixed endings are defects.

    A bare CR is the SMTP-smuggling carrier and some clients break lines on it, so it
    becomes a line break here too rather than survive inside a line.
    """
    crlf = untrusted.count(b"\r\n")
    data = untrusted.replace(b"\r\n", b"\n") if crlf else untrusted
    if b"\r" in data:
        defects.append("bare_cr")
        data = data.replace(b"\r", b"\n")
    if crlf and data.count(b"\n") > crlf:
        defects.append("bare_lf")
    if b"\x00" in data:
        defects.append("nul_byte")
    return data


def _without_envelope_line(data: bytes, defects: list[str]) -> bytes:
    """Drop a leading mbox `From ` line, as the stdlib parser does (its "unixfrom").

    Exports and mbox files carry it (68 of 875 real mails in public corpora); read as a
    header line it would end the header, and the recipient would see the raw fields, and
    ISO-2022-JP with its escapes stripped, as body text. It is the envelope, not content:
    never shown, only recorded.
    """
    if not data.startswith((b"From ", b"R", b"r")):
        return data
    found = _ENVELOPE_LINE.match(data)
    if found is None:
        return data
    defects.append("mbox_from_line")
    return found[1] + data[found.end():]


def parse(untrusted: bytes, max_depth: int = 20, max_parts: int = 500) -> ParsedMessage:
    """Parse a whole message; never raises on any input."""
    defects: list[str] = []
    data = _without_envelope_line(normalize_line_ends(untrusted, defects), defects)
    walk = _Walk(data, max_depth, max_parts, defects)
    top = read_header_block(data, 0, len(data))
    carrier = _carrier(top)
    header_defects: list[str] = []
    with sender_carrier(carrier):
        headers = tuple((k, decode_field(v, header_defects)) for k, v in top.fields)
        raw_headers = tuple((k, text_of(v)) for k, v in top.fields)
        for code in [*top.defects, *header_defects, *_duplicates(headers)]:
            walk.defect(code)
        reason = ""
        try:
            _walk(walk, top)
        except _TooComplex as stop:
            reason = str(stop)
    leaves = () if reason else tuple(walk.leaves)
    return ParsedMessage(headers, leaves, tuple(walk.defects), reason, raw_headers, carrier)


def top_field_values(untrusted: bytes, name: str) -> list[str]:
    """The values of the top-level `name` fields exactly as `parse` reads them (raw text,
    encoded words kept), from the whole message or any prefix of it that ends after its
    header section. Sender authentication reads From: here, so the domain it checks and
    the From: the rebuilt message shows come from one reading of the same bytes."""
    data = _without_envelope_line(normalize_line_ends(untrusted, []), [])
    wanted = name.lower()
    return [text_of(v) for k, v in read_header_block(data, 0, len(data)).fields
            if k.lower() == wanted]


#: The domain of the last address in a From: field (carrier mail has exactly one).
_FROM_DOMAIN = re.compile(rb"@([A-Za-z0-9.-]+)[>\s]*(?:\([^()]*\)\s*)?$")


def _carrier(top: HeaderBlock) -> str | None:
    """The carrier of the From: address, read from the raw field (no decoding needed)."""
    senders = top.all("from")
    found = _FROM_DOMAIN.search(senders[0].strip()) if len(senders) == 1 else None
    return carrier_for_domain(found[1].decode("ascii")) if found else None


#: Fields a reader sees once; two different values mean clients may show either.
_SINGLETONS = ("from", "sender", "to", "cc", "reply-to", "subject", "date", "message-id")


def _duplicates(headers: tuple[tuple[str, str], ...]) -> list[str]:
    seen: dict[str, str] = {}
    found: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key in _SINGLETONS:
            if key in seen and seen[key] != value:
                found.append(f"{key}_duplicate")
            seen.setdefault(key, value)
    return found


def _ascii(value: bytes) -> str:
    return value.decode("ascii", "replace")


def _walk(walk: _Walk, top: HeaderBlock) -> None:
    """Depth-first over parts with an explicit stack (no recursion, bounded by the caps)."""
    if top.too_many:
        raise _TooComplex("header_fields_exceeded")
    # (header block, body end, part path, depth, default type, enclosing alternative)
    stack: list[tuple[HeaderBlock, int, str, int, str, str]] = [
        (top, len(walk.data), "0", 0, "text/plain", "")
    ]
    while stack:
        block, end, path, depth, default, alternative = stack.pop()
        walk.parts += 1
        if walk.parts > walk.max_parts:
            raise _TooComplex("mime_parts_exceeded")
        if depth > walk.max_depth:
            raise _TooComplex("mime_depth_exceeded")
        ctype = _content_type(walk, block, default)
        if not ctype.value.startswith("multipart/"):
            leaf_path = "1" if path == "0" else path  # a single-part message is part 1
            walk.leaves.append(_leaf(walk, block, end, leaf_path, ctype, alternative=alternative))
            continue
        children = _split(walk, block, end, ctype)
        if isinstance(children, str):
            opaque = Params("application/octet-stream")
            walk.leaves.append(_leaf(walk, block, end, "1" if path == "0" else path, opaque,
                                     alternative=alternative,
                                     suspicious=children, raw_body=True))
            continue
        child_default = "message/rfc822" if ctype.value == "multipart/digest" else "text/plain"
        inner_alt = path if ctype.value == "multipart/alternative" else alternative
        for i, (start, stop) in reversed(list(enumerate(children, 1))):
            child = read_header_block(walk.data, start, stop)
            if child.too_many:
                raise _TooComplex("header_fields_exceeded")
            for code in child.defects:
                walk.defect(code)
            child_path = f"{path}.{i}" if depth else str(i)
            stack.append((child, stop, child_path, depth + 1, child_default, inner_alt))


def _content_type(walk: _Walk, block: HeaderBlock, default: str) -> Params:
    raws = block.all("Content-Type")
    if not raws:
        return Params(default)
    parsed = [parse_params(text_of(r)) for r in raws]
    first = parsed[0]
    for code in first.defects:
        walk.defect(code)
    if len({(p.value, p.params.get("boundary")) for p in parsed}) > 1:
        walk.defect("content_type_duplicate")
        if any(p.value.startswith("multipart/") for p in parsed):
            raise _TooComplex("ambiguous_mime_structure")
        return Params("application/octet-stream", conflicts={"content-type": ["(duplicate)"]})
    if first.value.startswith("multipart/") and "boundary" in first.conflicts:
        walk.defect("boundary_duplicate")
        raise _TooComplex("ambiguous_mime_structure")
    if not _TYPE.fullmatch(first.value):
        walk.defect("content_type_invalid")
        first.value = "text/plain"  # RFC 2045 section 5.2
    return first


def _split(walk: _Walk, block: HeaderBlock, end: int, ctype: Params) -> list[tuple[int, int]] | str:
    """Offsets of each child of a multipart, or the defect code that makes it unsplittable."""
    cte = _single(walk, block, "Content-Transfer-Encoding")
    if cte not in ("", "7bit", "8bit", "binary"):
        walk.defect("multipart_encoded")  # RFC 2045 forbids it; clients disagree
        return "multipart_encoded"
    boundary = ctype.params.get("boundary", "")
    if not boundary:
        walk.defect("multipart_without_boundary")
        return "multipart_without_boundary"
    if not _BOUNDARY_OK.fullmatch(boundary):
        walk.defect("boundary_invalid")
    delimiter = re.compile(rb"^--" + re.escape(boundary.encode("utf-8", "replace"))
                           + rb"(--)?[ \t]*$", re.MULTILINE)
    children: list[tuple[int, int]] = []
    start: int | None = None
    closed = False
    for m in delimiter.finditer(walk.data, block.body_start, end):
        if start is not None:
            children.append((start, max(start, m.start() - 1)))
            if len(children) + walk.parts > walk.max_parts:
                raise _TooComplex("mime_parts_exceeded")
        if m[1]:
            closed = True
            break
        start = min(m.end() + 1, end)
    if start is None:
        walk.defect("multipart_boundary_missing")
        return "multipart_boundary_missing"
    if not closed:
        walk.defect("multipart_unterminated")
        children.append((start, end))
    return children


def _single(walk: _Walk, block: HeaderBlock, name: str) -> str:
    values = {_ascii(v).strip().lower() for v in block.all(name)}
    if len(values) > 1:
        walk.defect(f"{name.lower()}_duplicate")
        return "(ambiguous)"
    return values.pop() if values else ""


def _leaf(walk: _Walk, block: HeaderBlock, end: int, path: str, ctype: Params, *,
          alternative: str, suspicious: str = "", raw_body: bool = False) -> Leaf:
    if raw_body:  # an unsplittable multipart is held as it came, headers and all
        payload, cte_problem = walk.data[block.body_start:end], ""
    else:
        payload, cte_problem = _decode_payload(walk, block, end)
    # Raw 8-bit names (Shift_JIS straight in the header, against RFC, common in Japan)
    # are detected like any text, not replaced by "?".
    dispositions = block.all("Content-Disposition")
    disposition = parse_params(text_of(dispositions[0])) if dispositions else Params("")
    names = _names(ctype, disposition)
    reason = suspicious or cte_problem or _ambiguity(walk, ctype, disposition, names)
    content_type = "application/octet-stream" if reason and ctype.value.startswith("text/") \
        else ctype.value
    cid = block.all("Content-ID")
    return Leaf(
        part=path,
        content_type=content_type,
        filename=names[0] if names else None,
        disposition=disposition.value or None,
        charset=ctype.params.get("charset"),
        params=tuple((k, v[:100]) for k, v in ctype.params.items()
                     if k not in ("charset", "name", "boundary"))[:10],
        payload=payload,
        content_id=decode_field(cid[0]).strip().strip("<>") if cid else None,
        names=names,
        alternative=alternative,
        suspicious=reason,
    )


def _names(ctype: Params, disposition: Params) -> tuple[str, ...]:
    """Every name in the order clients prefer: filename* / filename, then name."""
    found: list[str] = []
    for params, key in ((disposition, "filename"), (ctype, "name")):
        candidates = [params.params.get(key, ""), *params.conflicts.get(key, [])]
        for name in candidates:
            if name and name != "(incomplete)" and name not in found:
                found.append(name)
    return tuple(found)


def _ambiguity(walk: _Walk, ctype: Params, disposition: Params, names: tuple[str, ...]) -> str:
    for code in disposition.defects:
        walk.defect(code)
    if "content-type" in ctype.conflicts:
        return "content_type_duplicate"
    if "rfc2231_gap" in ctype.defects + disposition.defects:
        return "rfc2231_gap"
    if len(names) > 1:
        walk.defect("filename_conflict")
        return "filename_conflict"
    if "charset" in ctype.conflicts:
        walk.defect("charset_duplicate")
        return "charset_duplicate"
    return ""


def _decode_payload(walk: _Walk, block: HeaderBlock, end: int) -> tuple[bytes, str]:
    """Transfer-decode the body; return it and the reason it is suspicious ("" if not)."""
    raw = walk.data[block.body_start:end]
    cte = _single(walk, block, "Content-Transfer-Encoding")
    if cte == "(ambiguous)":
        return raw, "content-transfer-encoding_duplicate"
    if cte == "base64":
        return _base64(walk, raw), ""
    if cte == "quoted-printable":
        if _QP_BROKEN.search(raw):
            walk.defect("quoted_printable_invalid")
        return binascii.a2b_qp(raw), ""
    if cte in ("x-uuencode", "uuencode", "x-uue"):
        return _uudecode(walk, raw), ""
    if cte not in _KNOWN_CTE and cte:
        walk.defect("transfer_encoding_unknown")
        return raw, "transfer_encoding_unknown"
    return raw, ""


def _base64(walk: _Walk, raw: bytes) -> bytes:
    """Lenient like mail clients: junk dropped, padding repaired, each a defect."""
    stripped = b"".join(raw.split())
    body = stripped.rstrip(b"=")
    if _BASE64_JUNK.search(body):
        walk.defect("base64_invalid")
        body = _BASE64_JUNK.sub(b"", body)
    if len(body) % 4 == 1:
        walk.defect("base64_truncated")
        body = body[:-1]
    return binascii.a2b_base64(body + b"=" * (-len(body) % 4))


def _uudecode(walk: _Walk, raw: bytes) -> bytes:
    out = bytearray()
    for line in raw.split(b"\n"):
        if not line or line.startswith((b"begin ", b"end")):
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            walk.defect("uuencode_invalid")
    return bytes(out)
