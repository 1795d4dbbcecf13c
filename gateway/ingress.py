"""Where mail enters: the aiosmtpd handler and the SMTP server class around it.

The handler is the one place where SMTP meets the pipeline: it enforces the relay policy
at RCPT, and at DATA it answers `250` only after the message is fsynced in the spool.
Everything that can go wrong internally answers `451 4.3.0` with no detail, so the
sending MTA keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
import zlib
from array import array
from collections.abc import Callable, MutableSequence
from concurrent.futures import Executor
from email.utils import formatdate
from typing import Any, cast

import structlog
from aiosmtpd.smtp import MISSING, SMTP, Session, syntax
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from gateway.envelope import Envelope
from gateway.settings import Settings
from gateway.spool import Entry, RetryState, Spool, new_queue_id

log = structlog.get_logger("mugaika.ingress")

REPLY_QUEUED = "250 2.0.0 queued as {queue_id}"
REPLY_TEMPFAIL = "451 4.3.0 Temporary local problem, try again later"
REPLY_RELAY_DENIED = "550 5.7.1 Relaying denied"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address"
REPLY_LINE_TOO_LONG = "500 5.5.6 Message line too long"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
#: The end of DATA (RFC 5321 4.1.1.4), with the CRLF that ends the message's last line.
DATA_END = b"\r\n.\r\n"

# aiosmtpd's own replies carry no enhanced status codes (RFC 3463); mugaika answers with them.
_ENHANCED = {
    b"552 Error: message size exceeds fixed maximum message size":
        b"552 5.3.4 Message size exceeds fixed maximum message size",
    b"552 Error: Too much mail data": b"552 5.3.4 Message size exceeds fixed maximum message size",
    b"500 Line too long (see RFC5321 4.5.3.1.6)": b"500 5.5.6 Message line too long",
    b"503 Error: need MAIL command": b"503 5.5.1 Need MAIL command",
    b"503 Error: need RCPT command": b"503 5.5.1 Need RCPT command",
    b"500 Error: bad syntax": b"500 5.5.2 Syntax error",
    b"503 Error: send HELO first": b"503 5.5.1 Send HELO/EHLO first",
}

_BARE_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
#: `<local@domain>` with a dot-atom local part and a plain domain: what nearly every MTA
#: sends in MAIL FROM and RCPT TO. The stdlib header parser that aiosmtpd runs on every
#: address (5 % of the gateway's time under load) returns exactly these two strings for it.
_PLAIN_PATH = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)", re.S)


def normalize_line_ends(untrusted: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF (Postfix's `normalize`): no smuggling survives."""
    return _BARE_LINE_ENDS.sub(b"\r\n", untrusted)


def relay_refusal(address: str, accepted_domains: list[str]) -> str | None:
    """Why `address` may not be a recipient here, or None when it may.

    Source routes (`%`, `!`), quoted local parts that hide an `@`, and address literals
    are how open-relay probes slip past domain checks: all refused.
    """
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        return "no domain"
    if any(c in local for c in "%!@") or any(c in domain for c in "%!@"):
        return "source route or hidden @"
    if domain.startswith("["):
        return "address literal"
    if domain.lower().rstrip(".") not in accepted_domains:
        return "domain not accepted"
    return None


#: Client addresses are counted in this many buckets (a stable hash of the address).
LIMIT_BUCKETS = 4096


def limit_table(members: int) -> MutableSequence[int]:
    """The counts of `ConnectionLimiter` for a group: shared memory, one row per member."""
    table: MutableSequence[int] = multiprocessing.get_context("spawn").RawArray(
        "i", members * (LIMIT_BUCKETS + 1))
    return table


class ConnectionLimiter:
    """Counts open SMTP connections per client address (the 421 cap), over a whole group.

    The counts are a table with a row per gateway process: a column per address bucket,
    and one for the total. Each process writes its own row only and reads every row,
    so no lock is needed (two processes admitting at the same instant may let one
    connection past the cap) and the supervisor forgets a dead member's connections by
    zeroing its row (`forget`). Addresses sharing a bucket share a cap: with 4,096
    buckets and the few sending MTAs a gateway sees, rarely.
    """

    def __init__(self, per_client: int, total: int, table: MutableSequence[int] | None = None,
                 row: int = 0) -> None:
        self.per_client = per_client
        self.total = total
        self.table = table if table is not None else array("i", bytes(4 * (LIMIT_BUCKETS + 1)))
        self.width = LIMIT_BUCKETS + 1
        self.rows = range(0, len(self.table), self.width)
        self.mine = row * self.width

    def _sum(self, column: int) -> int:
        return sum(self.table[start + column] for start in self.rows)

    def acquire(self, addr: str) -> bool:
        bucket = zlib.crc32(addr.encode()) % LIMIT_BUCKETS
        if self._sum(bucket) >= self.per_client or self._sum(LIMIT_BUCKETS) >= self.total:
            return False
        self.table[self.mine + bucket] += 1
        self.table[self.mine + LIMIT_BUCKETS] += 1
        return True

    def release(self, addr: str) -> None:
        bucket = zlib.crc32(addr.encode()) % LIMIT_BUCKETS
        self.table[self.mine + bucket] -= 1
        self.table[self.mine + LIMIT_BUCKETS] -= 1


def forget(table: MutableSequence[int], row: int) -> None:
    """A member died: its connections died with it."""
    width = LIMIT_BUCKETS + 1
    table[row * width:(row + 1) * width] = [0] * width


class IngressHandler:
    """aiosmtpd hooks: RCPT policy, then DATA → spool → `250 queued as ID`."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        executor: Executor | None = None,
        on_queued: Callable[[Entry], None] | None = None,
        on_rejected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.executor = executor
        #: Gets the spooled entry, bytes included: the worker need not read them back.
        self.on_queued = on_queued or (lambda _entry: None)
        self.on_rejected = on_rejected or (lambda: None)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return REPLY_TOO_MANY_RCPTS
        reason = relay_refusal(address, self.settings.accepted_domains)
        if reason is not None:
            self.on_rejected()
            log.info("rcpt_refused", client=_peer(session), reason=reason)
            return REPLY_RELAY_DENIED
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SMTPEnvelope) -> str:
        untrusted = envelope.original_content or b""
        env = Envelope(
            mail_from=_null_sender(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            client_addr=_peer(session),
            helo=session.host_name or "",
            received_at=time.time(),
        )
        loop = asyncio.get_running_loop()
        try:
            entry = await loop.run_in_executor(self.executor, self._store, untrusted, env)
        except LineTooLong:
            return REPLY_LINE_TOO_LONG
        log.info("queued", queue_id=entry.queue_id, client=env.client_addr, size=len(untrusted),
                 rcpts=len(env.rcpt_tos))
        self.on_queued(entry)
        return REPLY_QUEUED.format(queue_id=entry.queue_id)

    def _store(self, untrusted: bytes, env: Envelope) -> Entry:
        if _longest_line(untrusted) > self.settings.max_line_bytes:
            raise LineTooLong
        queue_id = new_queue_id()
        data = self._received(env, queue_id) + normalize_line_ends(untrusted)
        self.spool.put(data, env, queue_id)
        return Entry(queue_id, env, data, RetryState())

    def _received(self, env: Envelope, queue_id: str) -> bytes:
        helo = re.sub(r"[^A-Za-z0-9.\-\[\]:]", "?", env.helo)[:255]
        for_clause = f"\r\n\tfor <{env.rcpt_tos[0]}>" if len(env.rcpt_tos) == 1 else ""
        line = (f"Received: from {helo} ([{env.client_addr}])\r\n\tby {self.settings.hostname}"
                f" (mugaika) with ESMTP id {queue_id}{for_clause};\r\n\t{formatdate()}\r\n")
        return line.encode("ascii", "replace")

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp_internal_error", error=type(error).__name__)
        return REPLY_TEMPFAIL


class LineTooLong(Exception):
    """A DATA line (with its CRLF) is longer than `max_line_bytes`."""


def _longest_line(data: bytes) -> int:
    """Length of the longest CRLF-ended line, CRLF included (as aiosmtpd counted it).

    One split at C speed: 77 ms for 20 MB, so it runs in the spool thread, not the loop.
    """
    return max(map(len, data.split(b"\r\n"))) + 2


def unstuff(content: bytes) -> bytes:
    """Undo DATA transparency (RFC 5321 4.5.2): a leading "." of each line is dropped."""
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")


def _null_sender(mail_from: str | None) -> str:
    """aiosmtpd reports `MAIL FROM:<>` as "<>"; mugaika stores the null sender as ""."""
    return "" if not mail_from or mail_from == "<>" else mail_from


def _peer(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class GatewaySMTP(SMTP):
    """aiosmtpd's server with enhanced status codes and a per-client connection cap."""

    def __init__(self, handler: IngressHandler, limiter: ConnectionLimiter,
                 **kwargs: Any) -> None:
        # Read by SMTP.__init__ as the StreamReader limit: it must be set before.
        self.line_length_limit = handler.settings.max_line_bytes
        super().__init__(handler, **kwargs)
        self.limiter = limiter
        self._peer_addr: str | None = None
        self._refused = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is not None and len(plain[1].rpartition("@")[0]) <= 64:
            return plain[1], plain[2]
        try:  # anything unusual: aiosmtpd's full parser
            return super()._getaddr(arg)
        except (AttributeError, IndexError, ValueError):
            # The 3.11 stdlib parser crashes on some invalid domains (`<x@[>`): that is a
            # syntax error (501), not a local problem (451).
            return None, None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self.limiter.acquire(addr):
            self._refused = True
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            cast(asyncio.WriteTransport, transport).write(REPLY_TOO_MANY_CONNECTIONS.encode() + b"\r\n")
            transport.close()
            return
        self._peer_addr = addr
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._peer_addr is not None:
            self.limiter.release(self._peer_addr)
            self._peer_addr = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """Client closed its side: close ours too, so connection_lost frees the slot.

        aiosmtpd keeps a half-closed connection open, which would leak a connection-cap
        slot per client that shuts down its write side (as probes and some MTAs do).
        """
        if not self._refused:
            super().eof_received()
        return False

    async def push(self, status: Any) -> None:
        raw = status.encode() if isinstance(status, str) else bytes(status)
        await super().push(_ENHANCED.get(raw, raw))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in blocks instead of line by line.

        aiosmtpd kept each line as a bytearray and joined them: a Python step per line
        (a tenth of the gateway's CPU under load) and, for a 20 MB mail, three copies of
        it in memory at once. Only `<CRLF>.<CRLF>` ends the message, as before: a bare
        LF or CR before the dot (SMTP smuggling) stays inside it.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await self._read_data()
        except asyncio.CancelledError:  # the connection went away during DATA
            self._writer.close()
            raise
        if content is None:
            await self.push(REPLY_TOO_BIG)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = unstuff(content)
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The DATA content up to the end marker (stuffed), or None when it is larger than
        the size limit; then it is read to its end anyway (RFC 5321 4.2.5)."""
        limit = self.data_size_limit or 0
        # The CRLF that ended the DATA command line: an empty message ends at once.
        buffer = bytearray(b"\r\n")
        too_big = False
        while not buffer.endswith(DATA_END):
            # Stopping at each ".\r\n" means the end marker never hides inside a block.
            try:
                block = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as more:  # no ".\r\n" in the next bytes
                block = await self._reader.readexactly(more.consumed)
            buffer += block
            if limit and len(buffer) > limit + len(DATA_END) + 2:
                too_big = True
                del buffer[:-len(DATA_END)]  # keep only what may start the end marker
        return None if too_big else bytes(memoryview(buffer)[2:-3])


def server_factory(settings: Settings, handler: IngressHandler,
                   limits: MutableSequence[int] | None = None,
                   row: int = 0) -> Callable[[], GatewaySMTP]:
    """The protocol factory for `loop.create_server`: one GatewaySMTP per connection.

    `limits`, `row`: a group's shared connection counts and this member's row in them.
    """
    limiter = ConnectionLimiter(settings.max_connections_per_client, settings.max_connections,
                                limits, row)

    def make() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            limiter,
            data_size_limit=settings.max_message_bytes,
            hostname=settings.hostname,
            ident="mugaika ESMTP",
            timeout=settings.smtp_timeout,
            command_call_limit=settings.max_commands_per_session,
            enable_SMTPUTF8=False,
        )

    return make
