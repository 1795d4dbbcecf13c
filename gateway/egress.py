"""Where mail leaves: the only code that speaks outbound SMTP.

A `Forwarder` delivers one message to the one configured next hop and says, per
recipient, whether it was accepted, refused for now (4xx, connection trouble) or refused
for good (5xx). Retry timing and bounces are decided by the worker from that answer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosmtplib
import structlog

from gateway.settings import Settings

log = structlog.get_logger("mugaika.egress")


@dataclass(frozen=True)
class DeliveryResult:
    delivered: tuple[str, ...] = ()
    #: recipient → the reply that refused it for now (retry later)
    temporary: dict[str, str] = field(default_factory=dict)
    #: recipient → the reply that refused it for good (bounce)
    permanent: dict[str, str] = field(default_factory=dict)
    remote: str = ""


class Forwarder(Protocol):
    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult: ...

    async def close(self) -> None: ...


def retry_delay(attempts: int, settings: Settings) -> float:
    """Postfix-like backoff: the first retry after minutes, doubling up to about an hour."""
    delay = settings.retry_first_seconds * (2 ** max(0, attempts - 1))
    return float(min(delay, settings.retry_max_seconds))


def _all(rcpts: Sequence[str], reply: str, permanent: bool, remote: str) -> DeliveryResult:
    bucket = {r: reply for r in rcpts}
    return DeliveryResult(permanent=bucket, remote=remote) if permanent else DeliveryResult(
        temporary=bucket, remote=remote)


class SMTPForwarder:
    """Delivers over SMTP with STARTTLS per policy, reusing a small pool of connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.downstream_host is not None
        self.host = settings.downstream_host
        self.port = settings.downstream_port
        self.remote = f"{self.host}:{self.port}"
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.downstream_pool_size)

    async def _connect(self) -> aiosmtplib.SMTP:
        mode = self.settings.downstream_starttls
        start_tls: bool | None = {"opportunistic": None, "required": True, "off": False}[mode]
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.settings.downstream_timeout,
            start_tls=start_tls,
            validate_certs=self.settings.downstream_verify_cert,
            local_hostname=self.settings.hostname,
        )
        await client.connect()
        return client

    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                result = await self._send(client, mail_from, rcpts, data)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await _quietly_close(client)
                return self._refused(exc.recipients)
            except aiosmtplib.SMTPResponseException as exc:
                await _quietly_close(client)
                client = None
                reply = f"{exc.code} {exc.message}"
                return _all(rcpts, reply, exc.code >= 500, self.remote)
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await _quietly_close(client)
                client = None
                reply = f"451 4.4.1 connection to {self.remote} failed: {type(exc).__name__}"
                return _all(rcpts, reply, False, self.remote)
            if client is not None and client.is_connected:
                self._idle.append(client)
            return result

    async def _send(self, client: aiosmtplib.SMTP, mail_from: str, rcpts: Sequence[str],
                    data: bytes) -> DeliveryResult:
        errors, _ = await client.sendmail(mail_from, list(rcpts), data)
        temporary = {r: f"{e.code} {e.message}" for r, e in errors.items() if e.code < 500}
        permanent = {r: f"{e.code} {e.message}" for r, e in errors.items() if e.code >= 500}
        delivered = tuple(r for r in rcpts if r not in errors)
        return DeliveryResult(delivered, temporary, permanent, self.remote)

    def _refused(self, refused: list[aiosmtplib.SMTPRecipientRefused]) -> DeliveryResult:
        temporary = {e.recipient: f"{e.code} {e.message}" for e in refused if e.code < 500}
        permanent = {e.recipient: f"{e.code} {e.message}" for e in refused if e.code >= 500}
        return DeliveryResult((), temporary, permanent, self.remote)

    async def close(self) -> None:
        while self._idle:
            await _quietly_close(self._idle.pop())


async def _quietly_close(client: aiosmtplib.SMTP | None) -> None:
    if client is None or not client.is_connected:
        return
    try:
        await client.quit()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        client.close()


class MaildirForwarder:
    """No downstream configured: deliver into a Maildir so a newcomer can read the result.

    One file per message (not per recipient): this is a demonstration sink, not a mailbox.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult:
        await asyncio.get_running_loop().run_in_executor(None, self._write, data)
        return DeliveryResult(delivered=tuple(rcpts), remote=f"maildir:{self.root}")

    def _write(self, data: bytes) -> None:
        name = f"{time.time_ns()}.{os.getpid()}.{socket.gethostname()}"
        tmp = self.root / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.root / "new" / name)

    async def close(self) -> None:
        return None


def forwarder_from_settings(settings: Settings) -> Forwarder:
    if settings.downstream_host:
        return SMTPForwarder(settings)
    log.warning("no_downstream", maildir=str(settings.maildir))
    return MaildirForwarder(settings.maildir)
