"""Where mail leaves: delivery to the next hop, over the lean client in `gateway.relay.smtpclient`.

`SMTPForwarder` is the queue's `Forwarder` (`gateway.queue.outlets`): it delivers one
message to the one configured next hop and says, per recipient, whether it was accepted,
refused for now (4xx, connection trouble) or refused for good (5xx). Retry timing and
bounces are decided by the worker from that answer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from gateway.queue.outlets import DeliveryResult, Forwarder
from gateway.relay.smtpclient import (
    GarbledReply,
    Session,
    SessionRefused,
    StartTLSUnavailable,
    Transaction,
    sendable,
)
from gateway.settings import Settings

log = structlog.get_logger("mugaika.egress")


def _all(rcpts: Sequence[str], reply: str, permanent: bool, remote: str) -> DeliveryResult:
    bucket = {r: reply for r in rcpts}
    return DeliveryResult(permanent=bucket, remote=remote) if permanent else DeliveryResult(
        temporary=bucket, remote=remote)


#: Ingress takes no SMTPUTF8 (`gateway.relay.smtpd` refuses non-ASCII commands), so such an address can
#: only come from elsewhere; no retry would make it deliverable.
_UNSENDABLE = "553 5.6.7 address not sendable without SMTPUTF8, which mugaika does not use"


def _context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:  # the operator's choice, e.g. a self-signed certificate inside LGWAN
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SMTPForwarder:
    """Delivers over SMTP with STARTTLS per policy, reusing a small pool of connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.downstream_host is not None
        self.host = settings.downstream_host
        self.port = settings.downstream_port
        self.remote = f"{self.host}:{self.port}"
        mode = settings.downstream_starttls
        self._tls = None if mode == "off" else _context(settings.downstream_verify_cert)
        self._idle: list[Session] = []
        self._slots = asyncio.Semaphore(settings.downstream_pool_size)

    async def _connect(self) -> Session:
        return await Session.open(
            self.host, self.port, helo_name=self.settings.hostname,
            timeout=self.settings.downstream_timeout, tls=self._tls,
            require_tls=self.settings.downstream_starttls == "required")

    def _pooled(self) -> Session | None:
        """An idle connection still open; those the server closed meanwhile are dropped."""
        while self._idle:
            session = self._idle.pop()
            if session.idle:
                return session
            session.close()
        return None

    async def deliver(self, mail_from: str, rcpts: Sequence[str], data: bytes) -> DeliveryResult:
        if not sendable(mail_from):
            return _all(rcpts, _UNSENDABLE, True, self.remote)
        unsendable = {r: _UNSENDABLE for r in rcpts if not sendable(r)}
        wanted = [r for r in rcpts if r not in unsendable]
        if not wanted:
            return DeliveryResult(permanent=unsendable, remote=self.remote)
        async with self._slots:
            result = await self._deliver(mail_from, wanted, data)
        if unsendable:
            result = replace(result, permanent={**result.permanent, **unsendable})
        return result

    async def _deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> DeliveryResult:
        """One try, and one more on a fresh connection if a pooled one failed before it
        answered anything (the server closed it as it was being reused: nothing was sent)."""
        session = self._pooled()
        reused = session is not None
        while True:
            answered = 0
            try:
                session = session or await self._connect()
                answered = session.replies_received
                transaction = await session.send(mail_from, rcpts, data)
                await self._release(session, transaction)
            except SessionRefused as exc:
                # Refusing the session is not refusing the message: bouncing every
                # queued mail for a downstream's 5xx greeting would be worse than waiting.
                reply = f"451 4.4.1 connection to {self.remote} refused: {exc}"
                return _all(rcpts, reply, False, self.remote)
            except StartTLSUnavailable:
                reply = (f"451 4.7.0 {self.remote} does not offer STARTTLS"
                         " (downstream_starttls is required)")
                return _all(rcpts, reply, False, self.remote)
            except (TimeoutError, OSError, GarbledReply) as exc:
                silent = session is not None and session.replies_received == answered
                if session is not None:
                    session.close()
                if reused and silent:
                    session, reused = None, False
                    continue
                reply = f"451 4.4.1 connection to {self.remote} failed: {type(exc).__name__}"
                return _all(rcpts, reply, False, self.remote)
            except BaseException:  # cancelled mid-transaction: its state is unknown
                if session is not None:
                    session.close()
                raise
            return self._result(rcpts, transaction)

    async def _release(self, session: Session, transaction: Transaction) -> None:
        """Back to the pool if the server is known to be between transactions."""
        if transaction.completed or await session.reset():
            self._idle.append(session)
        else:
            session.close()

    def _result(self, rcpts: list[str], transaction: Transaction) -> DeliveryResult:
        temporary: dict[str, str] = {}
        permanent: dict[str, str] = {}
        delivered: list[str] = []
        for rcpt in rcpts:
            reply = transaction.rcpts.get(rcpt, transaction.mail)
            if reply.ok and transaction.data is not None:
                reply = transaction.data
            if reply.ok:
                delivered.append(rcpt)
            else:
                (permanent if reply.code >= 500 else temporary)[rcpt] = f"{reply.code} {reply.text}"
        return DeliveryResult(tuple(delivered), temporary, permanent, self.remote)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().quit()


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
