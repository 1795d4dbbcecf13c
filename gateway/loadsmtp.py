"""SMTP wire pieces the load test's client and sink share: replies, DATA transparency
(the sink undoes it with the gateway's own `ingress.unstuff`).

Both ends of the load test run in one process next to the gateway they measure, so they
work on whole buffers (bytes.find, bytes.replace) rather than line by line.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: The largest message the sink takes (the gateway's own default limit is lower).
SIZE_LIMIT = 64 * 2**20
_LINE_END = re.compile(rb"\r\n|\r|\n")


class Reply(NamedTuple):
    """One complete server reply; a multi-line text is joined with "\\n" (as aiosmtplib)."""

    code: int
    text: str


def take_replies(buffer: bytearray) -> list[Reply]:
    """Remove the complete replies at the front of `buffer` and return them.

    A multi-line reply ("250-..." lines, then "250 ...") is complete only with its last
    line, so a partial one stays in the buffer for the next read. Raises ValueError on a
    line that is not a reply (the session cannot be trusted after it)."""
    replies: list[Reply] = []
    lines: list[str] = []
    start = consumed = 0
    while (end := buffer.find(b"\r\n", start)) >= 0:
        line = bytes(buffer[start:end])
        start = end + 2
        if not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise ValueError(f"not an SMTP reply: {line[:80]!r}")
        lines.append(line[4:].decode("utf-8", "replace"))
        if line[3:4] != b"-":
            replies.append(Reply(int(line[:3]), "\n".join(lines)))
            lines = []
            consumed = start
    del buffer[:consumed]
    return replies


def crlf(data: bytes) -> bytes:
    """`data` with every line ending CRLF, as SMTP carries it (a .eml may use bare LF).

    Counting is much cheaper than the substitution, and corpus mail is CRLF already."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs == data.count(b"\r"):
        return data
    return _LINE_END.sub(b"\r\n", data)


def stuff(data: bytes) -> bytes:
    """CRLF-ended `data` as DATA sends it: lines starting with "." doubled (RFC 5321
    4.5.2), a last line ended, and the terminating "." line, ready for one write."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


