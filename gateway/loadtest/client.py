"""The sending side of the load test: C concurrent SMTP sessions, like smtp-source -s C.

Each session keeps its connection for the next message (as an MTA's connection cache
does) unless `new_connection` is set. A temporary failure (4xx, or a dropped connection)
is retried a bounded number of times with a short backoff, as a sending MTA would retry;
the final reply is what the accounting sees.

The client runs in the process (and on the cores) of the gateway's benchmark, so it
speaks through the gateway's own lean client (`gateway.relay.smtpclient`): the same wire as the
gateway's delivery, with PIPELINING where offered.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.loadtest.check import Sent
from gateway.loadtest.mix import Outgoing
from gateway.relay.smtpclient import GarbledReply, Reply, Session, SessionRefused, Transaction

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


async def _open(options: ClientOptions) -> Session:
    return await Session.open(options.host, options.port, helo_name=_HELO_NAME,
                              timeout=options.timeout)


def _reply(transaction: Transaction) -> Reply:
    """The one reply a single-recipient transaction comes to: the final one, or the first
    that refused it."""
    if not transaction.mail.ok:
        return transaction.mail
    for reply in transaction.rcpts.values():
        if not reply.ok:
            return reply
    assert transaction.data is not None, "its recipient was accepted, so the message went"
    return transaction.data


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

    async def _attempt(self, session: Session | None, item: Outgoing,
                       record: Sent) -> Session | None:
        """One try at `item` (opening a session if needed); the session worth keeping."""
        try:
            session = session or await _open(self.options)
            reply = _reply(await session.send(item.mail_from, (item.rcpt,), item.data))
        except SessionRefused as exc:
            reply = exc.reply
        except (OSError, TimeoutError, GarbledReply) as exc:  # a drop, a timeout, a garbled reply
            reply = Reply(0, type(exc).__name__)
        _record(record, reply)
        if session is not None and (not record.accepted or self.options.new_connection):
            session.close()  # a refused session may be in any state: start afresh
            session = None
        return session

    async def _session(self, queue: asyncio.Queue[Outgoing | None]) -> None:
        session: Session | None = None
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
