"""Bytes in, a flat message model out: decoded headers and transfer-decoded leaf parts.

Defects are recorded, never raised: a message that cannot be understood safely comes back
with `too_complex` set, and the pipeline quarantines it whole.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.header import decode_header
from email.message import Message

from converters.charset import decode_bytes


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


@dataclass(frozen=True)
class ParsedMessage:
    headers: tuple[tuple[str, str], ...]
    leaves: tuple[Leaf, ...]
    defects: tuple[str, ...] = ()
    #: Non-empty when the message must be quarantined whole (caps exceeded, unreadable).
    too_complex: str = ""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


def decode_header_value(untrusted: str) -> str:
    """RFC 2047 words to text with the same charset logic as bodies."""
    pieces: list[str] = []
    for chunk, charset in decode_header(untrusted):
        if isinstance(chunk, bytes):
            pieces.append(decode_bytes(chunk, charset)[0])
        else:
            pieces.append(chunk)
    return "".join(pieces)


def parse(untrusted: bytes, max_depth: int = 20, max_parts: int = 500) -> ParsedMessage:
    msg = email.message_from_bytes(untrusted, policy=email.policy.compat32)
    headers = tuple((k, decode_header_value(str(v))) for k, v in msg.items())
    leaves: list[Leaf] = []
    defects: list[str] = [type(d).__name__ for d in msg.defects]
    stack: list[tuple[Message, str, int]] = [(msg, "1", 0)]
    count = 0
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if depth > max_depth:
            return ParsedMessage(headers, (), tuple(defects), "mime_depth_exceeded")
        if count > max_parts:
            return ParsedMessage(headers, (), tuple(defects), "mime_parts_exceeded")
        if node.is_multipart():
            children = node.get_payload()
            assert isinstance(children, list)
            for i, child in reversed(list(enumerate(children, 1))):
                stack.append((child, f"{path}.{i}" if depth else str(i), depth + 1))
            continue
        leaves.append(_leaf(node, path))
    leaves.sort(key=lambda leaf: [int(x) for x in leaf.part.split(".")])
    return ParsedMessage(headers, tuple(leaves), tuple(defects))


def _leaf(node: Message, path: str) -> Leaf:
    raw_name = node.get_filename()
    payload = node.get_payload(decode=True)
    return Leaf(
        part=path,
        content_type=node.get_content_type(),
        filename=decode_header_value(raw_name) if raw_name else None,
        disposition=node.get_content_disposition(),
        charset=node.get_content_charset(),
        payload=payload if isinstance(payload, bytes) else b"",
        content_id=node.get("Content-ID"),
    )
