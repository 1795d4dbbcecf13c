"""Writing a rebuilt message: header fields, encoded words, base64 bodies, multipart.

Why not the stdlib generator: it parses every value we hand it into a token tree again and
refolds it (`_refold_parse_tree`), and parses each address list twice: two thirds of
`rebuild`'s time, and `rebuild` was the largest single cost of a text mail in the gateway
(docs/performance.md). `gateway.pipeline.rebuild` decides *what* is written (allow-list, values
cleaned of control characters, addresses from the stdlib parser, ids matched); this
module only encodes and folds those values:

- ASCII text is folded at spaces to 78 columns (RFC 5322 2.1.1), never split inside a word;
- text with non-ASCII characters becomes RFC 2047 `B` words, each at most 75 characters
  (UTF-8, or ISO-2022-JP for legacy clients), one per line;
- a display name that is not a plain phrase is quoted; an addr-spec whose local part is
  not a dot-atom is quoted;
- file names with non-ASCII characters use RFC 2231 continuations.

`gateway.pipeline.rebuild.assert_safe_headers` still checks every byte written here.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from converters.charset import encode_iso2022jp

LINESEP = "\r\n"
MAX_LINE = 78
#: RFC 2047 2 allows 75 characters an encoded word; 66 keeps the first line of any of our
#: fields ("Reply-To: " is the longest name) within 78 columns.
MAX_WORD = 66
#: A phrase of atoms and spaces (RFC 5322 3.2.5): written as it is. A dot makes it the
#: obsolete form (`obs-phrase`), which parsers disagree on: such a name is quoted.
_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~ -]+")

_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf(data: bytes) -> bytes:
    """`data` with every bare CR and bare LF made CRLF, as SMTP carries it.

    SMTP ingress normalises what it accepts this way (Postfix's `normalize`: no smuggled line
    end survives); delivery and the load test guard what they send with it. Mail is nearly
    always CRLF already: then three counts (no allocation) say so, and the very same
    bytes come back instead of a copy of a message of up to 25 MB."""
    return data if is_crlf(data) else _LINE_END.sub(b"\r\n", data)


def is_crlf(data: bytes) -> bool:
    """Whether every CR and LF in `data` is part of a CRLF: three counts, no copy."""
    pairs = data.count(b"\r\n")
    return data.count(b"\n") == pairs == data.count(b"\r")



def fold(name: str, tokens: Iterable[str]) -> str:
    """`Name: tokens` joined by spaces, a line break before a token that would pass 78
    columns (an over-long single token stays whole: lines may reach 998 octets)."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if not token:
            line += " "
            continue
        if len(line) + 1 + len(token) > MAX_LINE and line.strip() != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return LINESEP.join(lines) + LINESEP


def encoded_words(text: str, charset: str = "utf-8") -> list[str] | None:
    """`text` as RFC 2047 `B` words of at most `MAX_WORD` characters; None when `charset`
    cannot hold a character (ISO-2022-JP and an emoji): the caller then uses UTF-8."""
    prefix = f"=?{charset.upper()}?B?"
    room = (MAX_WORD - len(prefix) - 2) // 4 * 3  # raw octets per word
    words: list[bytes] = []
    chunk, raw = "", b""
    for char in text:
        longer = _encode(chunk + char, charset)
        if longer is None:
            return None
        if chunk and len(longer) > room:
            words.append(raw)
            chunk, longer = "", _encode(char, charset) or b""
        chunk, raw = chunk + char, longer
    if chunk:
        words.append(raw)
    return [f"{prefix}{base64.b64encode(word).decode('ascii')}?=" for word in words]


def _encode(text: str, charset: str) -> bytes | None:
    return encode_iso2022jp(text) if charset == "iso-2022-jp" else text.encode("utf-8")


def _plain_ascii(text: str) -> bool:
    """ASCII text that can be written as it is. Text holding `=?` is encoded instead: left
    as it is, a reader would decode what looks like an encoded word, one that our decoder
    had refused (`=?utf-8?b?5aSW6`YOo…?=`, invalid base64) and so never cleaned (found
    by fuzz/, issue 17). Encoded, it reads back as the very characters we checked."""
    return text.isascii() and "=?" not in text


def text_tokens(text: str, charset: str = "utf-8") -> list[str]:
    """Tokens for `fold` of an unstructured value (Subject)."""
    if _plain_ascii(text):
        return text.split(" ")
    return encoded_words(text, charset) or encoded_words(text) or []


def mailbox_tokens(display_name: str, addr_spec: str, charset: str = "utf-8") -> list[str]:
    """One mailbox (`Name <local@domain>`, or the bare addr-spec without a name)."""
    local, _, domain = addr_spec.rpartition("@")
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    spec = f"{local}@{domain}"
    if not display_name:
        return [spec]
    if _plain_ascii(display_name):
        name = [display_name if _PHRASE.fullmatch(display_name)
                else '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    else:
        name = encoded_words(display_name, charset) or encoded_words(display_name) or []
    return [*name, f"<{spec}>"]


def address_field(name: str, mailboxes: Sequence[list[str]]) -> str:
    tokens: list[str] = []
    for i, box in enumerate(mailboxes):
        tokens.extend(box[:-1])
        tokens.append(box[-1] + ("," if i < len(mailboxes) - 1 else ""))
    return fold(name, tokens)


def base64_body(data: bytes) -> str:
    """Base64 in 76-character lines (RFC 2045 6.8), each ended by LINESEP.

    `encodebytes` cuts the lines in C; a Python step per line was a third of the time
    of rebuilding a 5 KB text mail."""
    return base64.encodebytes(data).decode("ascii").replace("\n", LINESEP)


def disposition(filename: str) -> str:
    """`Content-Disposition: attachment; filename=...`, RFC 2231 when not plain ASCII."""
    if _TOKEN_NAME.fullmatch(filename) and len(filename) < 60:
        return f'Content-Disposition: attachment; filename="{filename}"{LINESEP}'
    # Cut between characters, never inside one: the stdlib (and some clients) decode
    # each continuation on its own, and a UTF-8 sequence split across two became
    # undecodable bytes in the name (found by fuzz/, issue 17).
    pieces: list[str] = [""]
    for char in filename:
        encoded = quote(char, safe="")
        if pieces[-1] and len(pieces[-1]) + len(encoded) > 54:  # the line fits 78
            pieces.append("")
        pieces[-1] += encoded
    pieces[0] = "utf-8''" + pieces[0]
    params = ";".join(f"{LINESEP} filename*{i}*={p}" for i, p in enumerate(pieces))
    return f"Content-Disposition: attachment;{params}{LINESEP}"


@dataclass(frozen=True)
class Part:
    """One MIME entity: its header lines (each ending CRLF) and its encoded body."""

    headers: str
    body: bytes


def text_part(text: str, iso2022jp: bool) -> Part:
    """The body: UTF-8 base64, or 7-bit ISO-2022-JP when asked and possible."""
    if iso2022jp and (raw := encode_iso2022jp(text)) is not None:
        return Part('Content-Type: text/plain; charset="iso-2022-jp"\r\n'
                    "Content-Transfer-Encoding: 7bit\r\n",
                    raw.replace(b"\n", b"\r\n"))
    return Part('Content-Type: text/plain; charset="utf-8"\r\n'
                "Content-Transfer-Encoding: base64\r\n",
                base64_body(text.encode("utf-8")).encode("ascii"))


def attachment(content_type: str, filename: str, data: bytes) -> Part:
    charset = '; charset="utf-8"' if content_type.startswith("text/") else ""
    if content_type == "message/rfc822":  # RFC 2046 5.2.1: no base64 on a message
        return Part(f"Content-Type: message/rfc822{LINESEP}{disposition(filename)}", data)
    return Part(f"Content-Type: {content_type}{charset}{LINESEP}"
                f"Content-Transfer-Encoding: base64{LINESEP}{disposition(filename)}",
                base64_body(data).encode("ascii"))


def message(header_fields: str, parts: Sequence[Part]) -> bytes:
    """The whole message: our header fields, then one part or multipart/mixed of all."""
    head = header_fields + "MIME-Version: 1.0" + LINESEP
    if len(parts) == 1:
        return (head + parts[0].headers + LINESEP).encode("ascii") + parts[0].body
    boundary = _boundary(parts)
    out = [(head + f'Content-Type: multipart/mixed; boundary="{boundary}"{LINESEP}'
            ).encode("ascii")]
    for part in parts:
        out.append(f"{LINESEP}--{boundary}{LINESEP}{part.headers}{LINESEP}".encode("ascii"))
        out.append(part.body.removesuffix(b"\r\n"))
    out.append(f"{LINESEP}--{boundary}--{LINESEP}".encode("ascii"))
    return b"".join(out)


def _boundary(parts: Sequence[Part]) -> str:
    while True:
        boundary = "=_mugaika_" + secrets.token_hex(12)
        if not any(boundary.encode("ascii") in p.body for p in parts):
            return boundary
