"""The SMTP client side of the wire: the gateway's delivery and the load test's client.

Both run on the cores the gateway's sanitizing needs, so this is one small
asyncio.Protocol rather than a general SMTP library: whole buffers (bytes.find,
bytes.replace) instead of line by line, MAIL, every RCPT and DATA in one write when the
server offers PIPELINING (RFC 2920), the message in one more, and a timer per awaited
reply instead of a task. It only speaks what mugaika writes: CRLF text it made itself and
ASCII addresses (ingress runs without SMTPUTF8, so no other address ever gets in).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

from gateway.pipeline.mimewrite import crlf

#: A larger message goes out in pieces this big, so that a stalled server is noticed
#: within the reply timeout rather than after the whole message sat in the buffer.
_PIECE = 1 << 20


class Reply(NamedTuple):
    """One complete server reply; a multi-line text is joined with "\\n"."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return self.code // 100 == 2


class GarbledReply(ValueError):
    """The server sent a line that is not a reply: nothing it says can be trusted after it."""


class SessionRefused(Exception):
    """The server would not open a session (greeting, EHLO/HELO or STARTTLS refused)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text}")
        self.reply = reply


class StartTLSUnavailable(Exception):
    """STARTTLS was required but the server does not offer it."""


def take_replies(buffer: bytearray) -> list[Reply]:
    """Remove the complete replies at the front of `buffer` and return them.

    A multi-line reply ("250-..." lines, then "250 ...") is complete only with its last
    line, so a partial one stays in the buffer for the next read. Raises GarbledReply on
    a line that is not a reply."""
    replies: list[Reply] = []
    lines: list[str] = []
    start = consumed = 0
    while (end := buffer.find(b"\r\n", start)) >= 0:
        line = bytes(buffer[start:end])
        start = end + 2
        if not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise GarbledReply(f"not an SMTP reply: {line[:80]!r}")
        lines.append(line[4:].decode("utf-8", "replace"))
        if line[3:4] != b"-":
            replies.append(Reply(int(line[:3]), "\n".join(lines)))
            lines = []
            consumed = start
    del buffer[:consumed]
    return replies


def stuff(data: bytes) -> bytes:
    """CRLF-ended `data` as DATA sends it: lines starting with "." doubled (RFC 5321
    4.5.2), a last line ended, and the terminating "." line, ready for one write."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def sendable(address: str) -> bool:
    """Whether `address` can go in MAIL/RCPT as is: ASCII (no SMTPUTF8) and one line."""
    return address.isascii() and "\r" not in address and "\n" not in address


class _Wire(asyncio.Protocol):
    """One connection: bytes out, complete replies in (in order) for whoever waits."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: deque[Reply] = deque()
        self.received = 0  # replies parsed so far, to tell whether a command got one
        self.error: Exception | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            replies = take_replies(self.buffer)
        except GarbledReply as exc:
            self._fail(exc)
            return
        self.received += len(replies)
        self.replies.extend(replies)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self.error = self.error or exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _time_out(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError("no reply in time"))

    async def _wait(self, timeout: float) -> None:
        """Until something happens on the connection; a timer (not wait_for's task) bounds it."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self._time_out)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    @property
    def idle(self) -> bool:
        """Open, and the server has said nothing unasked (e.g. a 421 before it hung up)."""
        return (self.error is None and not self.replies and not self.buffer
                and self.transport is not None and not self.transport.is_closing())

    def write(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(data)

    async def write_all(self, data: bytes, timeout: float) -> None:
        """`data` in pieces, each waited out while the transport is full."""
        view = memoryview(data)
        for start in range(0, len(data), _PIECE):
            while self.paused:
                await self._wait(timeout)
            self.write(view[start:start + _PIECE])

    async def reply(self, timeout: float) -> Reply:
        while not self.replies:
            await self._wait(timeout)
        return self.replies.popleft()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True)
class Transaction:
    """What the server answered to one MAIL transaction."""

    mail: Reply
    #: each recipient's RCPT reply; empty when MAIL was refused (RCPT replies would then
    #: only say "need MAIL", not what the server thinks of the recipient)
    rcpts: dict[str, Reply]
    #: the reply to the message, or to a refused DATA command; None when no message went
    #: (MAIL or every RCPT refused)
    data: Reply | None

    @property
    def completed(self) -> bool:
        """The server took the message for its accepted recipients."""
        return self.data is not None and self.data.ok


def _any_ok(replies: dict[str, Reply]) -> bool:
    return any(reply.ok for reply in replies.values())


class Session:
    """A greeted SMTP session. After a refused transaction its state is unknown: reset or close it."""

    def __init__(self, wire: _Wire, timeout: float) -> None:
        self.wire = wire
        self.timeout = timeout
        self.extensions: set[str] = set()

    @classmethod
    async def open(cls, host: str, port: int, *, helo_name: str, timeout: float,
                   tls: ssl.SSLContext | None = None, require_tls: bool = False) -> Session:
        """Connect, read the greeting, EHLO (HELO if refused), STARTTLS with `tls` if offered.

        Raises SessionRefused, StartTLSUnavailable (`require_tls`), TimeoutError, OSError
        (ssl.SSLError for a failed handshake) or GarbledReply."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, wire = await loop.create_connection(_Wire, host, port)
        session = cls(wire, timeout)
        try:
            await session._greet(helo_name)
            if tls is not None and "STARTTLS" in session.extensions:
                await session._start_tls(tls, host, helo_name)
            elif require_tls:
                raise StartTLSUnavailable(f"{host}:{port} does not offer STARTTLS")
        except BaseException:
            wire.close()
            raise
        return session

    async def _greet(self, helo_name: str) -> None:
        greeting = await self.wire.reply(self.timeout)
        if greeting.code != 220:
            raise SessionRefused(greeting)
        await self._ehlo(helo_name)

    async def _ehlo(self, helo_name: str) -> None:
        ehlo = await self.command(f"EHLO {helo_name}\r\n".encode())
        if ehlo.code == 250:
            self.extensions = {line.split(" ")[0].upper() for line in ehlo.text.split("\n")[1:]}
            return
        helo = await self.command(f"HELO {helo_name}\r\n".encode())
        if helo.code != 250:
            raise SessionRefused(helo)
        self.extensions = set()

    async def _start_tls(self, context: ssl.SSLContext, host: str, helo_name: str) -> None:
        """STARTTLS, then EHLO again: what the server said in clear no longer counts (RFC 3207)."""
        reply = await self.command(b"STARTTLS\r\n")
        if reply.code != 220:
            raise SessionRefused(reply)
        wire = self.wire
        if wire.replies or wire.buffer:  # sent before the handshake: injected in clear
            raise GarbledReply("the server said more than its STARTTLS reply")
        assert wire.transport is not None
        transport = await asyncio.get_running_loop().start_tls(
            wire.transport, wire, context, server_hostname=host,
            ssl_handshake_timeout=self.timeout)
        if transport is None:  # the server hung up during the handshake
            raise ConnectionResetError("connection closed during the TLS handshake")
        wire.transport = transport
        await self._ehlo(helo_name)

    @property
    def idle(self) -> bool:
        """Still fit for the next transaction (the server may have closed it meanwhile)."""
        return self.wire.idle

    @property
    def replies_received(self) -> int:
        return self.wire.received

    async def command(self, line: bytes) -> Reply:
        self.wire.write(line)
        return await self.wire.reply(self.timeout)

    def _envelope(self, mail_from: str, rcpts: Sequence[str], message: bytes) -> list[bytes]:
        """MAIL (SIZE where offered, BODY=8BITMIME for 8-bit data where offered), RCPTs, DATA."""
        params = f" SIZE={len(message)}" if "SIZE" in self.extensions else ""
        if "8BITMIME" in self.extensions and not message.isascii():
            params += " BODY=8BITMIME"
        return [f"MAIL FROM:<{mail_from}>{params}\r\n".encode(),
                *(f"RCPT TO:<{rcpt}>\r\n".encode() for rcpt in rcpts), b"DATA\r\n"]

    async def send(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> Transaction:
        """One transaction (addresses must be `sendable`); the message only if a RCPT was accepted."""
        message = crlf(data)
        commands = self._envelope(mail_from, rcpts, message)
        if "PIPELINING" in self.extensions:
            self.wire.write(b"".join(commands))
            replies = [await self.wire.reply(self.timeout) for _ in commands]
            mail, go = replies[0], replies[-1]
            answers = dict(zip(rcpts, replies[1:-1], strict=True))
            if not (mail.ok and _any_ok(answers)):
                if go.code == 354:  # RFC 2920 3.1: a DATA accepted regardless gets an empty message
                    await self.command(b".\r\n")
                return Transaction(mail, answers if mail.ok else {}, None)
        else:
            mail = await self.command(commands[0])
            if not mail.ok:
                return Transaction(mail, {}, None)
            answers = {rcpt: await self.command(line)
                       for rcpt, line in zip(rcpts, commands[1:-1], strict=True)}
            if not _any_ok(answers):
                return Transaction(mail, answers, None)
            go = await self.command(commands[-1])
        if go.code != 354:
            return Transaction(mail, answers, go)
        await self.wire.write_all(stuff(message), self.timeout)
        return Transaction(mail, answers, await self.wire.reply(self.timeout))

    async def reset(self) -> bool:
        """RSET after a refused transaction: whether the session is fit for another."""
        try:
            return (await self.command(b"RSET\r\n")).ok
        except (OSError, TimeoutError, GarbledReply):
            return False

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT\r\n")
        except (OSError, TimeoutError, GarbledReply):
            pass  # the server went first, or is gone: nothing is lost
        finally:
            self.wire.close()

    def close(self) -> None:
        self.wire.close()
