"""The sending side of the load test: C concurrent SMTP sessions, like smtp-source -s C.

Each session keeps its connection for the next message (as an MTA's connection cache
does) unless `new_connection` is set. A temporary failure (4xx, or a dropped connection)
is retried a bounded number of times with a short backoff, as a sending MTA would retry;
the final reply is what the accounting sees.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiosmtplib

from gateway.loadcheck import Sent
from gateway.loadmix import Outgoing

_QUEUED_AS = re.compile(r"queued as (\S+)", re.I)


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


async def _submit(smtp: aiosmtplib.SMTP, item: Outgoing, record: Sent) -> bool:
    """One attempt; True when the reply is final (2xx or 5xx), False to retry."""
    try:
        _, reply = await smtp.sendmail(item.mail_from, [item.rcpt], item.data)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0]
        record.code, record.reply = first.code, first.message
    except aiosmtplib.SMTPResponseException as exc:
        record.code, record.reply = exc.code, exc.message
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        record.code, record.reply = 0, type(exc).__name__
    else:
        record.code, record.reply = 250, reply
        record.accepted_at = time.monotonic()
        found = _QUEUED_AS.search(reply)
        record.queue_id = found.group(1).strip(".") if found else None
        return True
    return record.code >= 500


class Client:
    """Owns the sessions; `sent` grows as messages are submitted (for progress)."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.sent: list[Sent] = []
        self.started = 0.0
        self.finished = 0.0

    async def _connect(self, record: Sent) -> aiosmtplib.SMTP | None:
        """A new session, or None with the refusal recorded in `record`."""
        smtp = aiosmtplib.SMTP(hostname=self.options.host, port=self.options.port,
                               timeout=self.options.timeout, start_tls=False)
        try:
            await smtp.connect()
        except aiosmtplib.SMTPResponseException as exc:  # e.g. 421 at the greeting
            record.code, record.reply = exc.code, exc.message
            return None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            record.code, record.reply = 0, type(exc).__name__
            return None
        return smtp

    async def _session(self, queue: asyncio.Queue[Outgoing | None]) -> None:
        smtp: aiosmtplib.SMTP | None = None
        while (item := await queue.get()) is not None:
            record = Sent(item)
            self.sent.append(record)
            for attempt in range(1 + self.options.tempfail_retries):
                record.attempts += 1
                smtp = smtp or await self._connect(record)
                final = smtp is not None and await _submit(smtp, item, record)
                if smtp is not None and (not record.accepted or self.options.new_connection):
                    smtp.close()  # a refused session may be in any state: start afresh
                    smtp = None
                if final or record.code >= 500:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
        if smtp is not None:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()

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
