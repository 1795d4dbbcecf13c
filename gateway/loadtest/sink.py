"""The load test's own receiving server: it stands where the LGWAN-side server would.

Each message that arrives is reduced at once to an `Arrival` (who it answers, how it is
classified, what the gateway says it did), so a run of 20 MB mails does not keep them in
memory. Faults can be injected to prove the gateway's retry path: answer 4xx for the
first seconds or the first N deliveries, then accept.

It is a small asyncio.Protocol, not a general SMTP server: it runs in the load test's
process, on the cores the gateway under test needs, and the gateway delivers to it with
`gateway.relay.smtpclient` (PIPELINING as offered here; STARTTLS is not offered).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from gateway.loadtest.mix import TOKEN_RE
from gateway.pipeline.headers import parse_params, read_header_block
from gateway.relay.smtpd import DATA_END, unstuff

#: The largest message the sink takes (the gateway's own default limit is lower).
SIZE_LIMIT = 64 * 2**20
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
    the header block is read with the gateway's own reader, not the stdlib's feedparser,
    which was half of the sink's CPU; the sink shares the machine's cores with the
    gateway under test."""
    head = untrusted.split(b"\r\n\r\n", 1)[0]
    fields = _fields(head)
    content_type = parse_params(fields.get("content-type", "text/plain")).value
    whole = content_type.startswith("multipart/")
    attachments = 0
    msg = email.message_from_bytes(untrusted, policy=email.policy.compat32) if whole else None
    if msg is not None:
        attachments = sum(1 for part in msg.walk()
                          if not part.is_multipart() and part.get_filename() is not None)
    token = _token(head) or _token(untrusted) or _token_in_parts(
        msg or email.message_from_bytes(untrusted, policy=email.policy.compat32))
    queue_id = fields.get("x-mugaika-queue-id", "").strip() or None
    if queue_id is not None and not _QUEUE_ID.match(queue_id):
        queue_id = None
    verdict = fields.get("x-mugaika-verdict", "").strip().lower() or None
    if content_type == "multipart/report" or mail_from in ("", "<>"):
        kind = "bounced"
    elif verdict == "quarantined":
        kind = "quarantined_notice"
    else:
        kind = "delivered"
    return Arrival(received_at, kind, token, queue_id, verdict,
                   fields.get("x-mugaika-actions"), attachments, len(untrusted))


def _fields(head: bytes) -> dict[str, str]:
    """A header block's fields by lower-case name (the first of each), unfolded."""
    lf = head.replace(b"\r\n", b"\n")
    fields: dict[str, str] = {}
    for name, value in read_header_block(lf, 0, len(lf)).fields:
        fields.setdefault(name.lower(), value.decode("latin-1"))
    return fields


def _arrive(content: bytes, mail_from: str, received_at: float) -> Arrival:
    return classify(unstuff(content), mail_from, received_at)


class SinkHandler:
    """The sink's policy, apart from the protocol: whom it refuses, and what it records."""

    def __init__(self, state: SinkState, faults: SinkFaults | None = None) -> None:
        self.state = state
        self.faults = faults or SinkFaults()

    def _refusing(self) -> bool:
        faults = self.faults
        if faults.tempfail_first and self.state.refused < faults.tempfail_first:
            return True
        elapsed = time.monotonic() - self.state.started
        return faults.tempfail_seconds > 0 and elapsed < faults.tempfail_seconds

    def rcpt_refusal(self, address: str) -> bytes | None:
        if self.faults.reject_rcpt and self.faults.reject_rcpt in address:
            self.state.rejected_rcpts += 1
            return b"550 5.1.1 no such mailbox (load test fault injection)\r\n"
        return None

    def data_refusal(self) -> bytes | None:
        if self._refusing():
            self.state.refused += 1
            return b"451 4.3.2 sink refusing for now (load test fault injection)\r\n"
        return None


_EHLO = (b"250-loadtest-sink\r\n250-PIPELINING\r\n" + f"250-SIZE {SIZE_LIMIT}\r\n".encode()
         + b"250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
_OK = b"250 2.0.0 OK\r\n"
_ACCEPTED = b"250 2.0.0 accepted by the load test sink\r\n"
_SYNTAX = b"501 5.5.4 syntax error in parameters\r\n"
_TOO_BIG = b"552 5.3.4 message size exceeds fixed maximum message size\r\n"
#: A command line longer than this is not SMTP (RFC 5321 allows 512 octets).
_MAX_LINE = 4096
IDLE_TIMEOUT = 120.0


def _path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """The address of "FROM:<a> ..." / "TO:<a> ..." without brackets, and its parameters."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword):].lstrip()
    close = rest.find(">")
    if not rest.startswith("<") or close < 0:
        return None
    return rest[1:close], rest[close + 1:].split()


class _SinkSession(asyncio.Protocol):
    """One SMTP connection to the sink.

    Every command in a read is answered in one write (PIPELINING), and DATA is found by
    searching the accumulated buffer for its end rather than reading it line by line:
    the sink shares the machine's cores with the gateway it measures."""

    def __init__(self, handler: SinkHandler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.out: list[bytes] = []
        self.greeted = self.in_data = self.too_big = self.busy = self.quitting = False
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.scan = 0  # where the search for the end of DATA resumes
        self.last_active = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.classifying: asyncio.Future[Arrival] | None = None  # held: the loop keeps weak refs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"220 loadtest-sink ESMTP load test sink\r\n")
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.buffer += data
        self._process()

    def _idle(self) -> None:
        """One timer per connection, re-armed for what is left (not reset on every read)."""
        assert self.transport is not None
        left = self.last_active + IDLE_TIMEOUT - time.monotonic()
        if left > 0:
            self.timer = asyncio.get_running_loop().call_later(left, self._idle)
            return
        self.transport.write(b"421 4.4.2 loadtest-sink idle too long, closing\r\n")
        self.transport.close()

    def _process(self) -> None:
        """Handle what the buffer holds, until a message must wait for its classification."""
        assert self.transport is not None
        while not (self.busy or self.quitting) and (
                self._message() if self.in_data else self._command()):
            pass
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()
        if self.quitting:
            self.transport.close()

    def _command(self) -> bool:
        """Answer the next complete command line; False when there is none yet."""
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_LINE:
                self.out.append(b"500 5.5.2 line too long\r\n")
                self.quitting = True
            return False
        line = self.buffer[:end].decode("utf-8", "replace")
        del self.buffer[:end + 2]
        verb, _, arg = line.partition(" ")
        answer = _VERBS.get(verb.upper())
        self.out.append(answer(self, arg.strip()) if answer else
                        b"500 5.5.1 command not recognized\r\n")
        return True

    def _data_end(self) -> int:
        """Where the message in DATA ends (after its last CRLF), or -1 while it has not."""
        if self.scan == 0 and not self.too_big and self.buffer.startswith(b".\r\n"):
            return 0  # an empty message
        found = self.buffer.find(DATA_END, self.scan)
        if found >= 0:
            return found + 2
        self.scan = max(0, len(self.buffer) - len(DATA_END) + 1)
        if self.too_big or len(self.buffer) > SIZE_LIMIT:  # keep what may start the end
            self.too_big = True
            del self.buffer[:-4]
            self.scan = 0
        return -1

    def _message(self) -> bool:
        """Take the message in DATA once it is complete; False while more must come."""
        end = self._data_end()
        if end < 0:
            return False
        with memoryview(self.buffer) as view:
            content = bytes(view[:end])
        del self.buffer[:end + 3]
        mail_from, too_big = self.mail_from or "", self.too_big or end > SIZE_LIMIT
        self._reset()
        refusal = _TOO_BIG if too_big else self.handler.data_refusal()
        if refusal is not None:
            self.out.append(refusal)
        elif len(content) <= INLINE_CLASSIFY_BYTES:
            self.handler.state.arrivals.append(_arrive(content, mail_from, time.monotonic()))
            self.out.append(_ACCEPTED)
        else:  # parsing 20 MB takes a while: keep the loop (and the client) moving
            assert self.transport is not None
            self.busy = True
            self.transport.pause_reading()
            self.classifying = asyncio.ensure_future(
                asyncio.to_thread(_arrive, content, mail_from, time.monotonic()))
            self.classifying.add_done_callback(self._classified)
        return True

    def _classified(self, done: asyncio.Future[Arrival]) -> None:
        assert self.transport is not None
        self.busy, self.classifying = False, None
        if done.cancelled():  # the loop is shutting down
            return
        self.handler.state.arrivals.append(done.result())
        self.out.append(_ACCEPTED)
        if not self.transport.is_closing():
            self.transport.resume_reading()
            self._process()

    def _reset(self) -> None:
        self.mail_from, self.rcpts = None, []
        self.in_data = self.too_big = False

    def _ehlo(self, arg: str) -> bytes:
        if not arg:
            return b"501 5.5.4 EHLO needs a hostname\r\n"
        self.greeted = True
        self._reset()
        return _EHLO

    def _helo(self, arg: str) -> bytes:
        if not arg:
            return b"501 5.5.4 HELO needs a hostname\r\n"
        self.greeted = True
        self._reset()
        return b"250 loadtest-sink\r\n"

    def _mail(self, arg: str) -> bytes:
        if not self.greeted:
            return b"503 5.5.1 send HELO/EHLO first\r\n"
        if self.mail_from is not None:
            return b"503 5.5.1 nested MAIL command\r\n"
        parsed = _path(arg, "FROM:")
        sizes = [p[5:] for p in parsed[1] if p[:5].upper() == "SIZE="] if parsed else []
        if parsed is None or not all(s.isdigit() for s in sizes):
            return _SYNTAX
        if any(int(s) > SIZE_LIMIT for s in sizes):
            return _TOO_BIG
        self.mail_from = parsed[0]
        return _OK

    def _rcpt(self, arg: str) -> bytes:
        if self.mail_from is None:
            return b"503 5.5.1 need MAIL command\r\n"
        parsed = _path(arg, "TO:")
        if parsed is None:
            return _SYNTAX
        refusal = self.handler.rcpt_refusal(parsed[0])
        if refusal is not None:
            return refusal
        self.rcpts.append(parsed[0])
        return b"250 2.1.5 OK\r\n"

    def _data(self, arg: str) -> bytes:
        if arg:
            return _SYNTAX
        if not self.rcpts:
            return b"503 5.5.1 need RCPT command\r\n"
        self.in_data, self.scan = True, 0
        return b"354 End data with <CR><LF>.<CR><LF>\r\n"

    def _rset(self, arg: str) -> bytes:
        self._reset()
        return _OK

    def _noop(self, arg: str) -> bytes:
        return _OK

    def _quit(self, arg: str) -> bytes:
        self.quitting = True
        return b"221 2.0.0 Bye\r\n"


_VERBS: dict[str, Callable[[_SinkSession, str], bytes]] = {
    "EHLO": _SinkSession._ehlo, "HELO": _SinkSession._helo, "MAIL": _SinkSession._mail,
    "RCPT": _SinkSession._rcpt, "DATA": _SinkSession._data, "RSET": _SinkSession._rset,
    "NOOP": _SinkSession._noop, "QUIT": _SinkSession._quit,
}


async def start_sink(host: str, port: int, state: SinkState,
                     faults: SinkFaults | None = None) -> asyncio.Server:
    """Listen on host:port in the running loop; close the returned server to stop."""
    handler = SinkHandler(state, faults)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _SinkSession(handler), host, port)
