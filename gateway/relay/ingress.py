"""Where mail enters: the SMTP hooks, the one place where SMTP meets the pipeline.

`IngressHandler` enforces the relay policy at RCPT, and at DATA answers `250` only after
the message is fsynced in the spool. The SMTP sessions that call it are
`gateway.relay.smtpd.SMTPSession`s. Everything that can go wrong internally answers
`451 4.3.0` with no detail, so the sending MTA keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import multiprocessing
import re
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, MutableSequence
from concurrent.futures import Executor
from dataclasses import replace
from email.utils import formatdate
from functools import lru_cache

import structlog

from gateway.pipeline.mimewrite import crlf, is_crlf
from gateway.queue.durable import out_of_space
from gateway.queue.envelope import Envelope
from gateway.queue.spool import Entry, RetryState, Spool, new_queue_id
from gateway.relay.smtpd import ServerLimits, Session, SMTPSession, Transaction
from gateway.settings import Settings
from gateway.tenancy import DEFAULT_TENANT, Tenancy

log = structlog.get_logger("mugaika.ingress")

REPLY_QUEUED = "250 2.0.0 queued as {queue_id}"
REPLY_RELAY_DENIED = "550 5.7.1 Relaying denied"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_LINE_TOO_LONG = "500 5.5.6 Message line too long"
#: The spool's filesystem is full (RFC 3463 4.3.1, Postfix's wording): the sending MTA
#: keeps the message and tries again, as after a 451, and its log says why.
REPLY_NO_STORAGE = "452 4.3.1 Insufficient system storage"
#: A header field and its folds, each line ended by CRLF.
_ONE_FIELD = re.compile(rb"[!-9;-~]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")

#: Messages under this size go to the worker with their bytes (`on_queued`), made durable
#: in the journal (`gateway.queue.journal`); a larger one is spooled in incoming/ and read back
#: when its turn comes, so that ingress keeps no copy of it.
HAND_OVER_MAX_BYTES = 1 << 20


def relay_refusal(address: str, accepted_domains: Collection[str]) -> str | None:
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


#: Client keys each gateway process can count at once: shared memory has a fixed size,
#: and this is far more than the open connections a group admits (MAX_CONNECTIONS).
LIMIT_SLOTS = 4096
#: A key is kept in one of this many slots from its hash on. When all of them hold other
#: clients' open sessions, a connection is admitted without a per-client count (the total
#: cap still holds): a full table must never refuse the front MTA because of others.
LIMIT_PROBES = 8
#: A row: this member's open total, then (client key, open sessions) per slot.
_ROW = 1 + 2 * LIMIT_SLOTS
#: A peer that is no IP address (a Unix socket): one client, apart from every IP key.
_NO_IP_KEY = 0xFFFF_FFFE_0000_0000


@functools.lru_cache(maxsize=4096)  # every connection asks twice; the front MTA is one
def client_key(addr: str) -> int:
    """Who a connection counts for: the exact IPv4 address, or the /64 of an IPv6 one (a
    host is given a whole /64 and picks its source addresses in it), as a signed 64-bit
    table value. IPv4 keys are put under ffff:ffff::/32, multicast, which no connection
    comes from: no key of one kind is a key of the other."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        key = _NO_IP_KEY
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        key = 0xFFFF_FFFF_0000_0000 | int(ip) if ip.version == 4 else int(ip) >> 64
    return key - (1 << 64) if key >= 1 << 63 else key


def limit_table(members: int) -> MutableSequence[int]:
    """The counts of `ConnectionLimiter` for a group: shared memory, one row per member."""
    table: MutableSequence[int] = multiprocessing.get_context("spawn").RawArray(
        "q", members * _ROW)
    return table


class ConnectionLimiter:
    """Counts open SMTP connections per client (the 421 cap), over a whole group.

    The counts are a table with a row per gateway process: its open total, and a small
    hash table of exact client keys (`client_key`) with their open sessions. Each process
    writes its own row only and reads every row, so no lock is needed (two processes
    admitting at the same instant may let one connection past the cap) and the
    supervisor forgets a dead member's connections by zeroing its row (`forget`). A
    slot whose count is 0 is free; its stale key counts for nothing.
    """

    def __init__(self, per_client: int, total: int, table: MutableSequence[int] | None = None,
                 row: int = 0) -> None:
        self.per_client = per_client
        self.total = total
        self.table = table if table is not None else array("q", bytes(8 * _ROW))
        self.rows = range(0, len(self.table), _ROW)
        self.mine = row * _ROW
        #: Open sessions of this process admitted while their slots were all taken.
        self.uncounted: Counter[int] = Counter()

    def acquire(self, addr: str) -> bool:
        key = client_key(addr)
        slots = _slots(key)
        if (self._open(key, slots) >= self.per_client
                or sum(self.table[start] for start in self.rows) >= self.total):
            return False
        at = self._slot(key, slots)
        if at is None:
            self.uncounted[key] += 1
        else:
            self.table[at] = key  # the key before the count: a reader never sees a
            self.table[at + 1] += 1  # count under another client's key
        self.table[self.mine] += 1
        return True

    def release(self, addr: str) -> None:
        key = client_key(addr)
        self.table[self.mine] -= 1
        if self.uncounted[key]:
            self.uncounted[key] -= 1
            return
        at = self._slot(key, _slots(key))
        if at is not None:
            self.table[at + 1] -= 1

    def _open(self, key: int, slots: tuple[int, ...]) -> int:
        """Open sessions of `key` over the group."""
        table = self.table
        return sum(table[start + s + 1] for start in self.rows for s in slots
                   if table[start + s] == key)

    def _slot(self, key: int, slots: tuple[int, ...]) -> int | None:
        """This member's slot holding `key`, else a free one; None when all are taken."""
        free = None
        for s in slots:
            at = self.mine + s
            if self.table[at + 1]:
                if self.table[at] == key:
                    return at
            elif free is None:
                free = at
        return free


@functools.lru_cache(maxsize=4096)
def _slots(key: int) -> tuple[int, ...]:
    """Where `key` may be in a row: LIMIT_PROBES (key, count) slots from its hash on."""
    first = zlib.crc32(key.to_bytes(8, "little", signed=True))
    return tuple(1 + 2 * ((first + i) % LIMIT_SLOTS) for i in range(LIMIT_PROBES))


def forget(table: MutableSequence[int], row: int) -> None:
    """A member died: its connections died with it."""
    table[row * _ROW:(row + 1) * _ROW] = [0] * _ROW


class IngressHandler:
    """The SMTP hooks: RCPT policy, then DATA → spool → `250 queued as ID`."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        executor: Executor | None = None,
        on_queued: Callable[[str, Entry | None], None] | None = None,
        on_rejected: Callable[[], None] | None = None,
        room_for_fresh: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.executor = executor
        #: Gets each spooled message's queue id and, when `room_for_fresh()` said so and
        #: it is under HAND_OVER_MAX_BYTES, its entry with the bytes, kept in the
        #: journal: no spool file to claim nor read.
        self.on_queued = on_queued or (lambda _queue_id, _entry: None)
        self.room_for_fresh = room_for_fresh or _no_room
        self.on_rejected = on_rejected or (lambda: None)
        self.postmaster = settings.postmaster or f"postmaster@{settings.accepted_domains[0]}"
        self.use(Tenancy(settings))

    def use(self, tenancy: Tenancy) -> None:
        """Route recipients by these tenants from now on (a reload, `SIGHUP`): sessions
        in progress go on; a transaction already past RCPT keeps the domains it had."""
        self.tenancy = tenancy
        #: The global accepted domains (the default tenant's) and every tenant's.
        self.accepted = tenancy.accepted_domains

    def handle_RCPT(self, session: Session, txn: Transaction, address: str) -> str:
        if len(txn.rcpt_tos) >= self.settings.max_recipients:
            return REPLY_TOO_MANY_RCPTS
        if address.lower() == "postmaster":  # RFC 5321 4.5.1: MUST be accepted
            txn.rcpt_tos.append(self.postmaster)
            return "250 2.1.5 OK"
        reason = relay_refusal(address, self.accepted)
        if reason is not None:
            self.on_rejected()
            log.info("rcpt_refused", client=session.peer, reason=reason)
            return REPLY_RELAY_DENIED
        txn.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, session: Session, txn: Transaction) -> str:
        env = Envelope(
            mail_from=txn.mail_from or "",
            rcpt_tos=tuple(txn.rcpt_tos),
            client_addr=session.peer,
            helo=session.helo,
            received_at=time.time(),
        )
        queue_id = new_queue_id()
        copies = self._per_tenant(queue_id, env)
        if len(copies) > 1:
            return await self._store_split(queue_id, txn.content, copies)
        env = copies[0][1]
        try:
            if len(txn.content) < HAND_OVER_MAX_BYTES and await self.room_for_fresh():
                entry: Entry | None = await self._hand_over(queue_id, txn.content, env)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._store, queue_id, txn.content, env)
                entry = None
        except LineTooLong:
            return REPLY_LINE_TOO_LONG
        except Exception as error:
            if not out_of_space(error):
                raise  # the session answers 451 4.3.0
            log.error("spool_full", queue_id=queue_id, client=env.client_addr,
                      size=len(txn.content))
            return REPLY_NO_STORAGE
        log.info("queued", queue_id=queue_id, client=env.client_addr,
                 size=len(txn.content), rcpts=len(env.rcpt_tos))
        self.on_queued(queue_id, entry)
        return REPLY_QUEUED.format(queue_id=queue_id)

    def _per_tenant(self, queue_id: str, env: Envelope) -> list[tuple[str, Envelope]]:
        """One (queue id, envelope) per tenant among the recipients: each tenant's copy is
        sanitized under its own policy and goes to its own downstream (amavisd's policy
        banks do the same). One tenant: the message as it came, its tenant named."""
        groups: dict[str, list[str]] = {}
        for rcpt in env.rcpt_tos:
            groups.setdefault(self.tenancy.tenant_of(rcpt), []).append(rcpt)
        if len(groups) == 1:
            [tenant] = groups
            return [(queue_id, _for_tenant(env, tenant, None))]
        return [(new_queue_id(), replace(_for_tenant(env, tenant, queue_id),
                                         rcpt_tos=tuple(rcpts)))
                for tenant, rcpts in groups.items()]

    async def _store_split(self, queue_id: str, untrusted: bytes,
                           copies: list[tuple[str, Envelope]]) -> str:
        """Spool every tenant's copy (each fsynced) before the one `250`; the message log
        links each copy to `queue_id` (`split_of`)."""
        loop = asyncio.get_running_loop()
        stored: list[str] = []
        try:
            for copy_id, env in copies:
                await loop.run_in_executor(self.executor, self._store, copy_id, untrusted, env)
                stored.append(copy_id)
        except Exception as error:
            # All copies or none: the client sends again after a refusal, and a copy
            # already spooled would then arrive twice.
            await loop.run_in_executor(self.executor, self._unstore, stored)
            if isinstance(error, LineTooLong):
                return REPLY_LINE_TOO_LONG
            if not out_of_space(error):
                raise  # the session answers 451 4.3.0
            return REPLY_NO_STORAGE
        for copy_id, env in copies:
            log.info("queued", queue_id=copy_id, split_of=queue_id, tenant=env.tenant,
                     size=len(untrusted), rcpts=len(env.rcpt_tos))
            self.on_queued(copy_id, None)
        return REPLY_QUEUED.format(queue_id=queue_id)

    def _unstore(self, queue_ids: list[str]) -> None:
        """Take spooled copies back out of incoming/ (no worker has been told of them)."""
        for queue_id in queue_ids:
            if self.spool.take(queue_id):
                self.spool.done(queue_id)

    async def _hand_over(self, queue_id: str, untrusted: bytes, env: Envelope) -> Entry:
        """Journal a small message for a worker of this process, which takes it with its
        bytes: on the loop, in the journal's group commit (`Spool.put_fresh`)."""
        received, body = self._prepared(queue_id, untrusted, env)
        await self.spool.put_fresh(body, env, queue_id, prefix=received)
        return Entry(queue_id, env, received + body, RetryState())

    def _store(self, queue_id: str, untrusted: bytes, env: Envelope) -> None:
        """Spool the message in incoming/, in a writer thread. Our Received line and the
        message are written as two buffers, not joined: a 20 MB mail is not copied."""
        received, body = self._prepared(queue_id, untrusted, env)
        self.spool.put(body, env, queue_id, prefix=received)

    def _prepared(self, queue_id: str, untrusted: bytes, env: Envelope) -> tuple[bytes, bytes]:
        """Our Received line, and the message with CRLF line ends; raise `LineTooLong`."""
        if has_line_longer(untrusted, self.settings.max_line_bytes):
            raise LineTooLong
        return self._received(env, queue_id), crlf(untrusted)

    def _received(self, env: Envelope, queue_id: str) -> bytes:
        helo = re.sub(r"[^A-Za-z0-9.\-\[\]:]", "?", env.helo)[:255]
        for_clause = f"\r\n\tfor <{env.rcpt_tos[0]}>" if len(env.rcpt_tos) == 1 else ""
        line = (f"Received: from {helo} ([{env.client_addr}])\r\n\tby {self.settings.hostname}"
                f" (mugaika) with ESMTP id {queue_id}{for_clause};\r\n\t"
                f"{_date(int(env.received_at))}\r\n").encode("ascii", "replace")
        # Added after the rebuilt header was checked (`rebuild.assert_safe_headers`), so it
        # gets the same check here: no bare CR or LF, one field and its folds. The
        # recipient and HELO came from the client; a failure answers 451, never a 250.
        if not (is_crlf(line) and _ONE_FIELD.fullmatch(line)):
            raise ValueError("our Received line is not one header field")
        return line


def _for_tenant(env: Envelope, tenant: str, split_of: str | None) -> Envelope:
    if tenant == DEFAULT_TENANT and split_of is None:
        return env  # no tenants, or the global domains': exactly as before tenants
    extra = {"tenant": tenant, **({"split_of": split_of} if split_of else {})}
    return replace(env, extra={**env.extra, **extra})


async def _no_room() -> bool:
    """Without a worker in this process to hand mail to (tools, tests): incoming/."""
    return False


@lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322 date of `second`: formatted once a second, not once a message (it was 3 %
    of a gateway process)."""
    return formatdate(second)


_LINE_BREAK = re.compile(rb"[\r\n]")


class LineTooLong(Exception):
    """A DATA line (with its CRLF) is longer than `max_line_bytes`."""


def has_line_longer(data: bytes, limit: int) -> bool:
    """Whether a line of `data` is longer than `limit` bytes with its CRLF, the lines
    being those `crlf` makes: a CRLF, a bare CR and a bare LF each end one (CR-only
    mail has short lines, not one long one).

    Such a line covers a whole aligned block of limit // 2 bytes, so only a block with
    no CR nor LF in it needs a closer look: a search or two per block at C speed, and no
    list of the message's lines (a split of a 20 MB mail held 30 MB more for a while)."""
    step = max(1, limit // 2)
    for start in range(0, len(data), step):
        if _LINE_BREAK.search(data, start, start + step) is not None:
            continue
        line_start = max(data.rfind(b"\n", 0, start), data.rfind(b"\r", 0, start)) + 1
        after = _LINE_BREAK.search(data, start)
        line_end = len(data) if after is None else after.start()
        if line_end - line_start + 2 > limit:
            return True
    return False


def server_factory(settings: Settings, handler: IngressHandler,
                   limits: MutableSequence[int] | None = None,
                   row: int = 0) -> Callable[[], SMTPSession]:
    """The protocol factory for `loop.create_server`: one SMTPSession per connection.

    `limits`, `row`: a group's shared connection counts and this member's row in them.
    """
    limiter = ConnectionLimiter(settings.max_connections_per_client, settings.max_connections,
                                limits, row)
    server = ServerLimits(
        hostname=settings.hostname,
        max_message_bytes=settings.max_message_bytes,
        max_line_bytes=settings.max_line_bytes,
        timeout=settings.smtp_timeout,
        max_commands=settings.max_commands_per_session,
    )
    return lambda: SMTPSession(handler, server, limiter)
