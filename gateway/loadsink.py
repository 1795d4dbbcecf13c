"""The load test's own receiving server: it stands where the LGWAN-side server would.

Each message that arrives is reduced at once to an `Arrival` (who it answers, how it is
classified, what the gateway says it did), so a run of 20 MB mails does not keep them in
memory. Faults can be injected to prove the gateway's retry path: answer 4xx for the
first seconds or the first N deliveries, then accept.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.parser
import email.policy
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP

from gateway.loadmix import TOKEN_RE

_QUEUE_ID = re.compile(r"^[\w.\-]+$")
#: Messages up to this size are classified on the event loop (well under a millisecond).
INLINE_CLASSIFY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Arrival:
    """What the sink learned from one delivered message."""

    received_at: float
    kind: str  # "delivered" | "quarantined_notice" | "bounced"
    token: str | None
    queue_id: str | None
    verdict: str | None
    actions_header: str | None
    attachments: int
    size: int


@dataclass
class SinkFaults:
    """Injected refusals: 451 for `tempfail_seconds` after start or for the first
    `tempfail_first` deliveries; 550 at RCPT for recipients containing `reject_rcpt`
    (the gateway must then bounce them to the sender)."""

    tempfail_seconds: float = 0.0
    tempfail_first: int = 0
    reject_rcpt: str | None = None


@dataclass
class SinkState:
    arrivals: list[Arrival] = field(default_factory=list)
    refused: int = 0
    rejected_rcpts: int = 0
    started: float = field(default_factory=time.monotonic)


def _token(data: bytes) -> str | None:
    match = TOKEN_RE.search(data)
    return f"lt.{match.group(1).decode()}.{match.group(2).decode()}" if match else None


def _token_in_parts(msg: email.message.Message) -> str | None:
    """The token inside an encoded part (a DSN may base64 the returned headers)."""
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() not in ("text", "message"):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and (token := _token(payload[:2**20])):
            return token
    return None


def classify(untrusted: bytes, mail_from: str, received_at: float) -> Arrival:
    """Reduce one delivered message to an `Arrival`; never raises on odd input.

    Only a multipart message is parsed whole (to count its attachments and find a DSN):
    a single-part one is read from its header block alone, so that the sink does not
    take the CPU the gateway under test needs (it shares the machine's cores)."""
    head = untrusted.split(b"\r\n\r\n", 1)[0]
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    whole = msg.get_content_maintype() == "multipart"
    attachments = 0
    if whole:
        msg = email.message_from_bytes(untrusted, policy=email.policy.compat32)
        attachments = sum(1 for part in msg.walk()
                          if not part.is_multipart() and part.get_filename() is not None)
    token = _token(head) or _token(untrusted) or _token_in_parts(
        msg if whole else email.message_from_bytes(untrusted, policy=email.policy.compat32))
    queue_id = (msg.get("X-Mugaika-Queue-Id") or "").strip() or None
    if queue_id is not None and not _QUEUE_ID.match(queue_id):
        queue_id = None
    verdict = (msg.get("X-Mugaika-Verdict") or "").strip().lower() or None
    report = msg.get_content_type() == "multipart/report"
    if report or mail_from in ("", "<>"):
        kind = "bounced"
    elif verdict == "quarantined":
        kind = "quarantined_notice"
    else:
        kind = "delivered"
    return Arrival(received_at, kind, token, queue_id, verdict,
                   msg.get("X-Mugaika-Actions"), attachments, len(untrusted))


class SinkHandler:
    """aiosmtpd handler: accept (or refuse, while a fault lasts) and record arrivals."""

    def __init__(self, state: SinkState, faults: SinkFaults | None = None) -> None:
        self.state = state
        self.faults = faults or SinkFaults()

    def _refusing(self) -> bool:
        faults = self.faults
        if faults.tempfail_first and self.state.refused < faults.tempfail_first:
            return True
        elapsed = time.monotonic() - self.state.started
        return faults.tempfail_seconds > 0 and elapsed < faults.tempfail_seconds

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.faults.reject_rcpt and self.faults.reject_rcpt in address:
            self.state.rejected_rcpts += 1
            return "550 5.1.1 no such mailbox (load test fault injection)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._refusing():
            self.state.refused += 1
            return "451 4.3.2 sink refusing for now (load test fault injection)"
        received_at = time.monotonic()
        content: bytes = envelope.original_content or envelope.content
        # Parsing a 20 MB message takes a while: keep the loop (and the client) moving.
        # A small one is quicker classified here than handed to a thread.
        if len(content) > INLINE_CLASSIFY_BYTES:
            arrival = await asyncio.to_thread(classify, content, envelope.mail_from or "",
                                              received_at)
        else:
            arrival = classify(content, envelope.mail_from or "", received_at)
        self.state.arrivals.append(arrival)
        return "250 2.0.0 accepted by the load test sink"


async def start_sink(host: str, port: int, state: SinkState,
                     faults: SinkFaults | None = None) -> asyncio.Server:
    """Listen on host:port in the running loop; close the returned server to stop."""
    handler = SinkHandler(state, faults)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, hostname="loadtest-sink", data_size_limit=64 * 2**20,
                     timeout=120), host, port)
