"""The sending side of the load test: C concurrent SMTP sessions, like smtp-source -s C.

Each session keeps its connection for the next message (as an MTA's connection cache
does) unless `new_connection` is set. A temporary failure (4xx, or a dropped connection)
is retried a bounded number of times with a short backoff, as a sending MTA would retry;
the final reply is what the accounting sees.

The client runs in the process (and on the cores) of the gateway's benchmark, so it is a
small asyncio.Protocol rather than a general SMTP library: MAIL, RCPT and DATA go in one
write when the server offers PIPELINING (RFC 2920), and the message in one more.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from gateway.loadcheck import Sent
from gateway.loadmix import Outgoing
from gateway.loadsmtp import Reply, crlf, stuff, take_replies

_QUEUED_AS = re.compile(r"queued as (\S+)", re.I)
_HELO_NAME = "loadtest-client"


@dataclass(frozen=True)
class ClientOptions:
    host: str
    port: int
    concurrency: int = 8
    rate: float | None = None  # messages per second, None for as fast as possible
    duration: float | None = None  # stop producing after this many seconds
    new_connection: bool = False
    tempfail_retries: int = 3
    timeout: float = 120.0


class _Refused(Exception):
    """The server would not open a session (e.g. 421 at the greeting)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class _Wire(asyncio.Protocol):
    """One connection: bytes out, complete replies in (in order) for whoever waits."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: deque[Reply] = deque()
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self.replies.extend(take_replies(self.buffer))
        except ValueError as exc:
            self._fail(exc)
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the server closed the connection"))

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

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(data)

    async def reply(self, timeout: float) -> Reply:
        """The next reply; a timer (not wait_for's task) bounds the wait, as it is per reply."""
        while not self.replies:
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
        return self.replies.popleft()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Session:
    """A greeted SMTP session. After a refused transaction its state is unknown: close it."""

    def __init__(self, wire: _Wire, timeout: float) -> None:
        self.wire = wire
        self.timeout = timeout
        self.extensions: set[str] = set()

    @classmethod
    async def open(cls, options: ClientOptions) -> _Session:
        """Connect, read the greeting, EHLO (HELO if refused); raise _Refused or OSError."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(options.timeout):
            _, wire = await loop.create_connection(_Wire, options.host, options.port)
        session = cls(wire, options.timeout)
        try:
            await session._greet()
        except BaseException:
            wire.close()
            raise
        return session

    async def _greet(self) -> None:
        greeting = await self.wire.reply(self.timeout)
        if greeting.code != 220:
            raise _Refused(greeting)
        ehlo = await self.command(f"EHLO {_HELO_NAME}\r\n".encode())
        if ehlo.code == 250:
            self.extensions = {line.split(" ")[0].upper() for line in ehlo.text.split("\n")[1:]}
            return
        helo = await self.command(f"HELO {_HELO_NAME}\r\n".encode())
        if helo.code != 250:
            raise _Refused(helo)

    async def command(self, line: bytes) -> Reply:
        self.wire.write(line)
        return await self.wire.reply(self.timeout)

    def _envelope(self, item: Outgoing, body: bytes) -> list[bytes]:
        """MAIL, RCPT and DATA, with SIZE and BODY=8BITMIME where offered (as aiosmtplib)."""
        params = f" SIZE={len(body)}" if "SIZE" in self.extensions else ""
        if "8BITMIME" in self.extensions:
            params += " BODY=8BITMIME"
        return [f"MAIL FROM:<{item.mail_from}>{params}\r\n".encode(),
                f"RCPT TO:<{item.rcpt}>\r\n".encode(), b"DATA\r\n"]

    async def send(self, item: Outgoing) -> Reply:
        """One transaction: the final reply, or the first one that refused it."""
        body = crlf(item.data)
        commands = self._envelope(item, body)
        pipelining = "PIPELINING" in self.extensions
        if pipelining:
            self.wire.write(b"".join(commands))
        for command, wanted in zip(commands, (2, 2, 3), strict=True):
            reply = await self.wire.reply(self.timeout) if pipelining \
                else await self.command(command)
            if reply.code // 100 != wanted:
                return reply
        return await self.command(stuff(body))

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT\r\n")
        except (OSError, ValueError):
            pass  # the server went first: nothing is lost
        finally:
            self.wire.close()

    def close(self) -> None:
        self.wire.close()


def _record(record: Sent, reply: Reply) -> None:
    record.code, record.reply = reply
    if record.accepted:
        record.accepted_at = time.monotonic()
        found = _QUEUED_AS.search(reply.text)
        record.queue_id = found.group(1).strip(".") if found else None


class Client:
    """Owns the sessions; `sent` grows as messages are submitted (for progress)."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.sent: list[Sent] = []
        self.started = 0.0
        self.finished = 0.0

    async def _attempt(self, session: _Session | None, item: Outgoing,
                       record: Sent) -> _Session | None:
        """One try at `item` (opening a session if needed); the session worth keeping."""
        try:
            session = session or await _Session.open(self.options)
            reply = await session.send(item)
        except _Refused as exc:
            reply = exc.reply
        except (OSError, ValueError) as exc:  # a drop, a timeout, a garbled reply
            reply = Reply(0, type(exc).__name__)
        _record(record, reply)
        if session is not None and (not record.accepted or self.options.new_connection):
            session.close()  # a refused session may be in any state: start afresh
            session = None
        return session

    async def _session(self, queue: asyncio.Queue[Outgoing | None]) -> None:
        session: _Session | None = None
        while (item := await queue.get()) is not None:
            record = Sent(item)
            self.sent.append(record)
            for attempt in range(1 + self.options.tempfail_retries):
                record.attempts += 1
                session = await self._attempt(session, item, record)
                if record.accepted or record.code >= 500:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
        if session is not None:
            await session.quit()

    async def _produce(self, queue: asyncio.Queue[Outgoing | None],
                       plan: Iterator[Outgoing]) -> None:
        options = self.options
        for number, item in enumerate(plan):
            now = time.monotonic()
            if options.duration is not None and now - self.started >= options.duration:
                break
            if options.rate:
                await asyncio.sleep(max(0.0, self.started + number / options.rate - now))
            await queue.put(item)
        for _ in range(options.concurrency):
            await queue.put(None)

    async def run(self, plan: Iterator[Outgoing]) -> list[Sent]:
        """Send everything `plan` yields (bounded by duration); return the records."""
        queue: asyncio.Queue[Outgoing | None] = asyncio.Queue(maxsize=self.options.concurrency)
        self.started = time.monotonic()
        sessions = [asyncio.create_task(self._session(queue))
                    for _ in range(self.options.concurrency)]
        await self._produce(queue, plan)
        await asyncio.gather(*sessions)
        self.finished = time.monotonic()
        return self.sent
