"""A tiny store-and-forward relay for load-test tests: the real sanitize/rebuild pipeline
between an aiosmtpd listener and an aiosmtplib forwarder with retry on 4xx.

It has no spool: it stands in for `mugaika serve` where a test needs to control what the
gateway does wrong (drop a message, lie about a verdict) to prove the load test notices.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP

from gateway.loadtest.samples import write_corpus
from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings

#: Corpus entries every build of mugaika handles the same way (no converters needed).
LIGHT_SAMPLES = {
    "iso2022jp-nec", "shift-jis-cp932", "euc-jp", "plain-5kb", "ppap-password",
    "exe-as-pdf", "rtlo-name", "html-attachment", "eicar", "deep-nesting", "relay-attempt",
}


@functools.cache
def shared_context() -> AttachmentContext:
    """One warm converter pool for every relay of the test run, as `mugaika serve` keeps
    one: even a blocked attachment is typed in the sandbox, and a pool per message would
    start a sandbox per message."""
    ctx = AttachmentContext.from_settings(Settings(workers=2))
    atexit.register(ctx.close)
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def light_corpus(directory: Path) -> Path:
    write_corpus(directory, LIGHT_SAMPLES)
    return directory


@dataclass
class Relay:
    """Accept, sanitize, answer `250 queued as ID`, then forward with retries."""

    downstream_port: int
    settings: Settings = field(default_factory=Settings)
    #: Return False to drop a message after accepting it (simulated loss).
    keep: Callable[[int], bool] = lambda n: True
    #: Rewrite the rebuilt message before delivery (simulated wrong verdict).
    mutate: Callable[[bytes], bytes] = lambda b: b
    retry_seconds: float = 0.2
    give_up_after: float = 30.0
    accepted: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if "%" in address or "!" in address:
            return "550 5.7.1 relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted += 1
        queue_id = f"T{self.accepted:06d}"
        if self.keep(self.accepted):
            task = asyncio.create_task(self._forward(queue_id, envelope.mail_from,
                                                     list(envelope.rcpt_tos),
                                                     envelope.original_content))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return f"250 2.0.0 queued as {queue_id}"

    async def _forward(self, queue_id: str, mail_from: str, rcpts: list[str],
                       raw: bytes) -> None:
        result = await asyncio.to_thread(sanitize, raw, queue_id, self.settings,
                                         shared_context())
        message = self.mutate(await asyncio.to_thread(rebuild, result, self.settings))
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            try:
                await aiosmtplib.send(message, sender=mail_from, recipients=rcpts,
                                      hostname="127.0.0.1", port=self.downstream_port,
                                      start_tls=False, timeout=30)
                return
            except aiosmtplib.SMTPException:
                await asyncio.sleep(self.retry_seconds)


async def start_relay(relay: Relay, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(relay, hostname="relay"), "127.0.0.1", port)
