"""Workers: take spool entries and run the stages in order. No policy of their own.

An inbound entry goes through sanitize → rebuild, and its output (kind "outbound") is
delivered from memory while the original stays claimed in active/: a crash only means it
is sanitized again. Only when the delivery must wait (a retry, a bounce) does the output
become a spool entry of its own (`Spool.put_derived`, not fsynced; a retry never converts
twice), its original then waiting in `hold/`. Mail from this process's own SMTP sessions
comes with its bytes, kept in the process's journal (`enqueue(..., fresh)`): a small one
that needs no converter is sanitized right on the event loop (`begin_here`), any other
in one thread hop.
Spool and database calls run in threads, never on the event loop, which must stay free
for SMTP.
Outbound, release and DSN entries are delivered; 4xx means retry with backoff, 5xx or
expiry means a DSN to the sender. Every entry ends delivered, bounced or kept in `failed/`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.header import Header
from typing import NamedTuple, TypeVar

import structlog

from gateway.metrics import Metrics
from gateway.pipeline.arc_seal import seal
from gateway.pipeline.attachments import AttachmentContext, HeldOriginal
from gateway.pipeline.auth_policy import Judgement, judge, tagged, with_results
from gateway.pipeline.dsn import build_dsn
from gateway.pipeline.message import Opened, Sanitized, held_whole, open_message
from gateway.pipeline.notice import NoticeTemplates, load_templates
from gateway.pipeline.parse import ParsedMessage
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.report import Report, Verdict
from gateway.pipeline.sanitize import finish
from gateway.pipeline.sender_auth import (
    AuthResults,
    Resolver,
    authenticate,
    authenticate_cached,
)
from gateway.queue.durable import out_of_space
from gateway.queue.envelope import Envelope
from gateway.queue.outlets import (
    DeliveryResult,
    DeliveryStatus,
    Forwarder,
    Stores,
    StoreUnavailable,
    retry_delay,
)
from gateway.queue.spool import DERIVED_SUFFIX, Entry, RetryState, Spool, SpoolError, derived_id
from gateway.settings import Settings
from gateway.tenancy import Tenancy

log = structlog.get_logger("mugaika.worker")


def count_report(metrics: Metrics, report: Report, tenant: str | None = None) -> None:
    """After sanitizing: each part by detected type and action; "quarantined" when the
    original went to the quarantine (the whole message or any part of it)."""
    for action in report.actions:
        metrics.attachment(action.detected_type, action.action.value)
    if report.verdict is Verdict.QUARANTINED or any(a.quarantined for a in report.actions):
        metrics.message("quarantined")
        metrics.tenant_message(tenant, "quarantined")

SCAN_SECONDS = 1.0
#: Tries of an entry that keeps hitting a bug (an exception anywhere in sanitizing,
#: rebuilding, building its DSN or moving it) before it is kept in failed/ as poison.
MAX_INTERNAL_ERRORS = 3
#: A message from ingress travels to its worker with its bytes, in the journal, only while
#: the queue is shorter than this (and the message small: `ingress.HAND_OVER_MAX_BYTES`),
#: so that accepted mail does not pile up in memory, nor in this process's journal (each
#: message there counts a crash if the process dies: `MAX_CRASHES`). Several times the
#: worker tasks, so that they never wait for mail while sessions wait for room.
FRESH_QUEUE_LIMIT = 64
#: How long ingress waits for room in the queue before it spools the message in
#: incoming/ instead (Postfix's `in_flow_delay`, same default): when mail arrives faster
#: than it leaves, the sending MTA waits a little for its `250` rather than the queue
#: growing. Mail spooled in incoming/ costs more to take back (a file written, claimed,
#: read and unlinked, in threads): without this wait, a backlog that outgrew the queue
#: sent a third of the bench's mail that way and cut the delivered rate by a third
#: (docs/performance.md).
IN_FLOW_DELAY_SECONDS = 1.0
#: A fresh message up to this size is sanitized on the event loop when it needs no
#: converter: in a sanitize thread the same Python work held the GIL all the same, and
#: the hop there and back (a future, a thread wake-up, GIL hand-overs, a wake-up of the
#: loop) cost more than the work for a 5 KB mail (docs/performance.md). The cap bounds
#: how long the loop's SMTP sessions wait: HTML→text of 64 KB is a few milliseconds.
INLINE_MAX_BYTES = 64 * 1024
#: A message held by a gateway process that died this often is not sanitized again but
#: quarantined whole (`processing_error`): hostile input that crashes the parser (a C
#: extension, the OOM killer) must not take the group down in a loop.
MAX_CRASHES = 2
#: Delivered messages are settled (log row, unlink) in batches gathered this long: one
#: hand-over to the settle thread per batch instead of one a message. A crash in between
#: only means a duplicate delivery after recovery, as before.
SETTLE_LINGER_SECONDS = 0.02
T = TypeVar("T")


class Settle(NamedTuple):
    """A delivery's outcome, to be logged and cleared from the spool (`Worker._settle`)."""

    queue_id: str
    origin: str
    status: DeliveryStatus
    attempts: int
    detail: str
    #: False: the output was delivered from memory; only its original is in the spool.
    spooled: bool


@dataclass(frozen=True)
class Processed:
    """What the sanitize stage hands to delivery (and to the message log)."""

    output: bytes
    report: Report
    subject: str | None
    held: tuple[HeldOriginal, ...]


@dataclass(frozen=True)
class Checked:
    """Sender authentication done for an entry; `auth` None where it does not apply
    (switched off, or not mail as it came from the Internet)."""

    auth: AuthResults | None


def sanitize_stage(entry: Entry, settings: Settings, attachments: AttachmentContext | None,
                   templates: NoticeTemplates | None = None,
                   opened: Opened | None = None, auth: AuthResults | None = None) -> Processed:
    """Sanitize and rebuild one message (from `opened`, when `begin_here` began it), under
    what sender authentication (`auth`, when it ran) decided. Runs in a worker thread; no
    I/O of its own but the converters'.

    A bug anywhere in the pipeline must not lose the message or leak a traceback: the
    message is then held whole and the recipient gets a notice instead.
    """
    try:
        opened = opened or open_message(entry.data, entry.queue_id, settings)
        return _rebuilt(entry, *_judged(opened, settings, attachments, auth), templates)
    except Exception:  # the stage boundary: any bug becomes a verdict, never a loss
        return _pipeline_error(entry, settings, templates)


def begin_here(entry: Entry, settings: Settings, templates: NoticeTemplates,
               auth: AuthResults | None = None) -> Processed | Opened:
    """`sanitize_stage` as far as it goes without a converter: the whole stage for a
    message with no attachment, else the message opened, for a sanitize thread to finish.
    For the event loop (`INLINE_MAX_BYTES`)."""
    try:
        opened = open_message(entry.data, entry.queue_id, settings)
        if opened.needs_sandbox:
            return opened
        return _rebuilt(entry, *_judged(opened, settings, None, auth), templates)
    except Exception:  # the stage boundary, as in sanitize_stage
        return _pipeline_error(entry, settings, templates)


def _judged(opened: Opened, settings: Settings, attachments: AttachmentContext | None,
            auth: AuthResults | None) -> tuple[Sanitized, Settings]:
    """The message sanitized under the authentication policy (`auth_policy.judge`): held
    whole, or converted and carrying the results; with the settings to rebuild it under
    (a tagged message's subject tag)."""
    judgement = judge(auth, opened.parsed.header("From"), settings) if auth else Judgement()
    result = (held_whole(opened, judgement.reasons[0]) if judgement.action == "quarantine"
              else finish(opened, settings, attachments))
    if auth is None:
        return result, settings
    return with_results(result, auth, judgement, settings), tagged(settings, judgement)


def _rebuilt(entry: Entry, result: Sanitized, settings: Settings,
             templates: NoticeTemplates | None) -> Processed:
    output = _own_trace(entry.data) + seal(rebuild(result, settings, templates), settings)
    return Processed(output, result.report, result.parsed.header("Subject"), result.held)


def _pipeline_error(entry: Entry, settings: Settings,
                    templates: NoticeTemplates | None) -> Processed:
    log.exception("pipeline_error", queue_id=entry.queue_id)
    return failed_stage(entry, settings, templates)


def failed_stage(entry: Entry, settings: Settings,
                 templates: NoticeTemplates | None = None) -> Processed:
    """The pipeline broke on this message: hold it whole, send the recipient a notice."""
    report = Report(entry.queue_id, Verdict.QUARANTINED, reason="processing_error")
    output = rebuild(Sanitized(ParsedMessage((), ()), report, ""), settings, templates)
    return Processed(output, report, None, ())


@dataclass(frozen=True)
class HandedOn:
    """A sanitized message: its output, in memory and ready for delivery (its original
    still claimed in active/), and the report for the log."""

    output: Entry
    report: Report


def output_entry(origin: Entry, output: bytes) -> Entry:
    """The sanitized output of `origin` as an entry to deliver (not yet in the spool)."""
    tenant = {"tenant": origin.envelope.tenant} if origin.envelope.tenant else {}
    env = replace(origin.envelope, kind="outbound", extra={"origin": origin.queue_id, **tenant})
    return Entry(derived_id(origin.queue_id), env, output, RetryState())


def spool_output(spool: Spool, output: Entry) -> Entry:
    """Spool an output (claimed, unsynced) and move its original to hold/."""
    origin = str(output.envelope.extra["origin"])
    spooled = spool.put_derived(output.data, output.envelope, origin)
    try:
        spool.to_hold(origin)
    except BaseException:
        # The original stays claimed and is sanitized again (`Worker._park`): an output
        # left behind in active/ would be delivered a second time after the next restart
        # (`Spool.recover` takes it back). Seen with a full disk: the output fitted, the
        # copy of its journaled original in hold/ did not.
        spool.done(spooled.queue_id)
        raise
    return spooled


def sanitize_claimed(entry: Entry, settings: Settings, attachments: AttachmentContext | None,
                     templates: NoticeTemplates, stores: Stores,
                     begun: Processed | Opened | None = None,
                     auth: AuthResults | None = None) -> HandedOn:
    """Sanitize a claimed entry (or go on from what `begin_here` did), log it, and hand
    on its output in memory.

    One thread hop for the stage: each hop cost the event loop a future, a thread
    wake-up and a GIL hand-over, 12 % of its time under load.
    """
    if entry.state.crashes >= MAX_CRASHES:
        log.error("crashed_gateway", queue_id=entry.queue_id, crashes=entry.state.crashes)
        processed = failed_stage(entry, settings, templates)
    elif isinstance(begun, Processed):
        processed = begun
    else:
        processed = sanitize_stage(entry, settings, attachments, templates, begun, auth)
    record_stage(entry, processed, stores)
    return HandedOn(output_entry(entry, processed.output), processed.report)


def _checks_apply(entry: Entry, settings: Settings) -> bool:
    env = entry.envelope
    return (settings.auth_checks and env.kind == "inbound"
            and "ppap_release_of" not in env.extra)


#: What the first-contact rule does (m-FILTER's 90-day rule): every attachment held, the
#: notice saying why. Not a treatment an operator can choose (it is set here, past
#: validation): it exists only for this rule.
FIRST_CONTACT = {f"treatment_{kind}": "first_contact"
                 for kind in ("pdf", "office", "image", "archive", "text", "unknown")}


def first_contact(entry: Entry, settings: Settings, stores: Stores) -> bool:
    """Whether the rule holds this message's attachments: on for its tenant, a sender not
    exempt, and no mail from it in the last `first_contact_days` days. A database that
    does not answer counts as first contact: the stricter policy, never a blocked worker."""
    env = entry.envelope
    sender = env.mail_from.lower()
    if not settings.first_contact_days or not sender:  # off, or a bounce
        return False
    domain = sender.rpartition("@")[2]
    if any(domain == d or domain.endswith("." + d) for d in settings.first_contact_exempt):
        return False
    since = datetime.now(UTC) - timedelta(days=settings.first_contact_days)
    try:  # the entry's own row (an earlier try of it) does not count
        return not stores.messages.sender_seen(env.mail_from, env.tenant, since,
                                               entry.queue_id)
    except Exception:  # the database away: stricter, not stuck
        log.warning("first_contact_unknown", sender=env.mail_from)
        return True


def keeps_original(processed: Processed) -> bool:
    """Whether the quarantine keeps (part of) the original: a database and file write."""
    return bool(processed.held) or processed.report.verdict is Verdict.QUARANTINED


def record_stage(entry: Entry, processed: Processed, stores: Stores) -> None:
    """Log the message and keep quarantined originals. The log rows are only queued
    (`store.behind`); keeping an original is I/O, for a thread."""
    stores.messages.record_received(entry.queue_id, entry.envelope, len(entry.data))
    stores.messages.record_processed(entry.queue_id, processed.subject, processed.report)
    if keeps_original(processed):
        stores.quarantine.hold(entry.queue_id, entry.envelope, entry.data, processed.report,
                               processed.held, processed.output)


class Worker:
    """Consumes queue ids; `run()` until cancelled."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        stores: Stores,
        forwarder: Forwarder,
        executor: Executor,
        attachments: AttachmentContext | None,
        metrics: Metrics,
        tenancy: Tenancy | None = None,
        routes: Mapping[str, Forwarder] | None = None,
    ) -> None:
        """`routes`: the forwarders of tenants with a downstream of their own."""
        self.settings = settings
        self.tenancy = tenancy or Tenancy(settings)
        self.routes = dict(routes or {})
        metrics.set_tenants(t.id for t in settings.tenants)
        #: Sender authentication's DNS (its cache shared by the sanitize threads).
        self.resolver = Resolver(settings.dns_servers, settings.dns_timeout_seconds)
        self.attachments = attachments
        self.spool = spool
        self.stores = stores
        self.forwarder = forwarder
        self.executor = executor
        #: Notice wording, read once (per tenant): per message it cost a file read and a
        #: TOML parse.
        self.templates = load_templates(settings)
        self._tenant_templates: dict[str, NoticeTemplates] = {}
        self.queue: asyncio.Queue[tuple[str, Entry | None]] = asyncio.Queue()
        self.metrics = metrics
        #: Settling a delivered message (log row, unlink) is not awaited: one thread does
        #: them in order, in batches, and the loop is not woken when each is done.
        #: `close()` waits for them.
        self._settler = ThreadPoolExecutor(1, thread_name_prefix="settle")
        self._settles: list[Settle] = []
        #: Set whenever the queue is shorter than FRESH_QUEUE_LIMIT (`room_for_fresh`).
        self._room = asyncio.Event()
        self._room.set()
        #: Entries `_park` could not put back in the spool (a full disk), still claimed
        #: by this process and tried again as they are (`_resume`): queue id → the entry
        #: with its bytes when it lives in the journal.
        self._stuck: dict[str, Entry | None] = {}

    async def room_for_fresh(self) -> bool:
        """Whether ingress may journal the next message for this process and hand it
        over with its bytes: at once while the queue is short, else once it has room
        again, or False after IN_FLOW_DELAY_SECONDS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IN_FLOW_DELAY_SECONDS
        while self.queue.qsize() >= FRESH_QUEUE_LIMIT:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), deadline - loop.time())
            except TimeoutError:
                return False
        return True

    def enqueue(self, queue_id: str, fresh: Entry | None = None) -> None:
        """Queue an entry; `fresh` is one ingress just journaled, bytes included."""
        self.queue.put_nowait((queue_id, fresh))

    def close(self) -> None:
        """Wait for the settles still queued (each one unlinks a delivered original)."""
        self._hand_over_settles()
        self._settler.shutdown(wait=True)

    def _settle_later(self, settle: Settle) -> None:
        if not self._settles:
            asyncio.get_running_loop().call_later(SETTLE_LINGER_SECONDS,
                                                  self._hand_over_settles)
        self._settles.append(settle)

    def _hand_over_settles(self) -> None:
        if self._settles:
            batch, self._settles = self._settles, []
            self._settler.submit(self._settle_all, batch)

    def _settle_all(self, batch: list[Settle]) -> None:
        """Log the batch's outcomes, wait until those rows are in the database, then drop
        the spool files: a process killed between the two used to leave a delivered
        message logged as `queued` for good, nothing being left to recover (issue 19's
        cluster test, 1 run in 3)."""
        for settle in batch:
            self.stores.messages.record_delivery(settle.origin, settle.status,
                                                 settle.attempts, settle.detail)
        self.stores.messages.flush()
        for settle in batch:
            try:
                self._settle(settle)
            except Exception as error:  # its files stay for `recover()`: a duplicate, no loss
                log.error("settle_failed", queue_id=settle.origin, error=repr(error))

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        """Spool and database calls: the loop's default thread pool, not the sanitize one.

        A rename or unlink can wait for an ext4 journal commit that another thread's
        fsync started (milliseconds): on the loop that stalled every SMTP session. SQLite
        writers from these threads take turns in `gateway.store.common.write`.
        """
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def run(self) -> None:
        while True:
            queue_id, fresh = await self.queue.get()
            if self.queue.qsize() < FRESH_QUEUE_LIMIT:
                self._room.set()
            try:
                await self.process(queue_id, fresh)
            except Exception as error:  # a broken entry must not stop the worker, nor be lost
                log.exception("worker_error", queue_id=queue_id)
                self._park(queue_id, error, fresh)

    def _park(self, queue_id: str, error: Exception, fresh: Entry | None = None) -> None:
        """Put an entry that hit a bug back in deferred/, to be tried again later; after
        MAX_INTERNAL_ERRORS tries it is poison and goes to failed/ with the reason. A
        full disk is no bug: such an entry is deferred however often it met one.

        The bug may have struck after the entry's output took its place in the spool (a
        DSN that cannot be built): then the output is what is parked. If the spool
        cannot take it either (a full disk), it stays claimed and is tried again after
        the retry delay (`_retry_claimed`)."""
        if not self.spool.claimed(queue_id) and self.spool.claimed(derived_id(queue_id)):
            queue_id = derived_id(queue_id)
        state = self.spool.read_state(queue_id)
        if isinstance(error, StoreUnavailable) and not self._outlived(state):
            self._wait_for_store(queue_id, state, error, fresh)
            return
        full = out_of_space(error)
        reason = "spool full" if full else f"internal error: {type(error).__name__}"
        delay = retry_delay(state.attempts + 1, self.settings)
        state = replace(state, attempts=state.attempts + 1, last_error=reason,
                        next_try=time.time() + delay)
        try:
            if full or state.attempts < MAX_INTERNAL_ERRORS:
                self.spool.defer(queue_id, state)
                return
            self.spool.fail(queue_id, state)
            if queue_id.endswith(DERIVED_SUFFIX):  # an output: its original goes with it
                self.spool.release_hold(queue_id.removesuffix(DERIVED_SUFFIX), failed=True)
        except (OSError, SpoolError) as park_error:  # SpoolError too: it ended this task
            self._retry_claimed(queue_id, fresh, delay, park_error)
            return
        log.error("message_failed", queue_id=queue_id, reason=reason, attempts=state.attempts)
        self.metrics.failed("internal_error")

    def _wait_for_store(self, queue_id: str, state: RetryState, error: Exception,
                        fresh: Entry | None = None) -> None:
        """The database is away: try again after the first retry delay, not counted as a
        bug (a minute-long PostgreSQL outage must not make held mail poison)."""
        delay = retry_delay(1, self.settings)
        now = time.time()
        state = replace(state, last_error="database unavailable", next_try=now + delay,
                        first_attempt=state.first_attempt or now)
        try:
            self.spool.defer(queue_id, state)
        except (OSError, SpoolError) as park_error:
            self._retry_claimed(queue_id, fresh, delay, park_error)
            return
        log.warning("store_unavailable", queue_id=queue_id, retry_in=delay, error=str(error))

    def _retry_claimed(self, queue_id: str, fresh: Entry | None, delay: float,
                       error: Exception) -> None:
        """The spool could not take a parked entry back (a full disk): it stays claimed
        by this process and is tried again in `delay` seconds as it is. Before, it
        waited for the next restart of the gateway, however long that was."""
        if not self.spool.claimed(queue_id):  # moved after all: only the fsync of its
            log.error("park_failed", queue_id=queue_id, error=repr(error))  # area failed
            return
        log.error("park_failed", queue_id=queue_id, error=repr(error), retry_in=round(delay))
        self._stuck[queue_id] = fresh if self.spool.journal.holds(queue_id) else None
        asyncio.get_running_loop().call_later(delay, self.enqueue, queue_id)

    async def _resume(self, queue_id: str, fresh: Entry | None) -> None:
        """Try again an entry that `_retry_claimed` kept claimed."""
        if fresh is not None:  # still in the journal: its bytes are here
            # The state `_park` may have written before its move failed: a journaled
            # message has none otherwise, and `Spool.done` would leave it behind.
            await self._io(self.spool.drop_state, queue_id)
            await self._sanitize_fresh(fresh)
            return
        await self._dispatch(await self._io(self.spool.load, queue_id))

    def _outlived(self, state: RetryState) -> bool:
        """Whether the entry has waited for the database longer than the queue lifetime:
        then it ends like a bug, in failed/ with a reason, never an endless retry."""
        waited = time.time() - (state.first_attempt or time.time())
        return waited > self.settings.max_queue_lifetime_seconds

    async def scheduler(self) -> None:
        """Enqueue what waits in incoming/ (after `Spool.recover()`), and wake deferred
        entries when due."""
        for queue_id in self.spool.incoming_ids():
            self.enqueue(queue_id)
        while True:
            await asyncio.sleep(SCAN_SECONDS)
            for queue_id in await self._io(self._due):
                self.enqueue(queue_id)

    def _due(self) -> list[str]:
        return list(self.spool.due_deferred(time.time()))

    async def process(self, queue_id: str, fresh: Entry | None = None) -> None:
        if queue_id in self._stuck:
            await self._resume(queue_id, self._stuck.pop(queue_id))
            return
        if fresh is not None:
            await self._sanitize_fresh(fresh)
            return
        entry = await self._io(self.spool.claim, queue_id)
        if entry is not None:
            await self._dispatch(entry)

    async def _dispatch(self, entry: Entry) -> None:
        """A claimed entry from the spool: an arrival is sanitized, an output delivered."""
        if entry.envelope.kind == "inbound":
            await self._sanitize(entry)
        else:
            await self._deliver(entry)

    async def _sanitize_fresh(self, entry: Entry) -> None:
        """A message ingress journaled and handed over: small and simple, and its sender
        checks answered from the DNS cache, it is sanitized here on the loop
        (`INLINE_MAX_BYTES`), else in a sanitize thread."""
        if len(entry.data) > INLINE_MAX_BYTES:
            await self._sanitize(entry)
            return
        settings, templates = self._policy(entry)
        checked = None if settings.first_contact_days else self._authenticate_cached(entry,
                                                                                  settings)
        if checked is None:  # the database, or DNS: not here
            await self._sanitize(entry)
            return
        begun = begin_here(entry, settings, templates, checked.auth)
        if isinstance(begun, Processed) and not keeps_original(begun):
            handed = sanitize_claimed(entry, settings, self.attachments, templates,
                                      self.stores, begun)  # only queues log rows
            await self._handed_on(entry, handed)
        else:
            await self._sanitize(entry, begun, checked)

    async def _sanitize(self, entry: Entry, begun: Processed | Opened | None = None,
                        checked: Checked | None = None) -> None:
        """Sanitize `entry` in a sanitize thread, then deliver its output."""
        settings, templates = self._policy(entry)
        handed = await self._in_thread(self._sanitize_claimed, entry, settings, templates,
                                       begun, checked)
        await self._handed_on(entry, handed)

    def use(self, tenancy: Tenancy, routes: Mapping[str, Forwarder]) -> None:
        """The tenants (and their forwarders) for mail handled from now on (`SIGHUP`)."""
        self.metrics.set_tenants(t.id for t in tenancy.settings.tenants)
        self.tenancy = tenancy
        self.routes = dict(routes)
        self._tenant_templates = {}

    def _sanitize_claimed(self, entry: Entry, settings: Settings, templates: NoticeTemplates,
                          begun: Processed | Opened | None,
                          checked: Checked | None) -> HandedOn:
        """`sanitize_claimed` in a sanitize thread, under the first-contact rule and sender
        authentication (unless the loop did it: `checked`)."""
        if first_contact(entry, settings, self.stores):
            settings = settings.model_copy(update=FIRST_CONTACT)
            begun = None  # begun under the ordinary policy
        checked = checked or self._authenticate(entry, settings)
        return sanitize_claimed(entry, settings, self.attachments, templates, self.stores,
                                begun, checked.auth)

    def _authenticate(self, entry: Entry, settings: Settings) -> Checked:
        """SPF, DKIM, DMARC and ARC on the original as it came from the Internet; not for
        mail the gateway made or re-injected itself (a PPAP release's decrypted copy)."""
        if not _checks_apply(entry, settings):
            return Checked(None)
        env = entry.envelope
        return self._counted(authenticate(entry.data, env.mail_from, env.helo,
                                          env.client_addr, self.resolver))

    def _authenticate_cached(self, entry: Entry, settings: Settings) -> Checked | None:
        """`_authenticate` from the DNS cache alone (on the event loop, which must never
        wait on DNS); None when a record was not cached."""
        if not _checks_apply(entry, settings):
            return Checked(None)
        env = entry.envelope
        auth = authenticate_cached(entry.data, env.mail_from, env.helo, env.client_addr,
                                   self.resolver)
        return None if auth is None else self._counted(auth)

    def _counted(self, auth: AuthResults) -> Checked:
        self.metrics.authentication(auth.spf, auth.dkim, auth.dmarc, auth.arc)
        return Checked(auth)

    def _policy(self, entry: Entry) -> tuple[Settings, NoticeTemplates]:
        """The settings and notice wording of the entry's tenant (`gateway.tenancy`)."""
        tenant = entry.envelope.tenant
        if tenant is None:
            return self.settings, self.templates
        settings = self.tenancy.settings_for(tenant)
        if tenant not in self._tenant_templates:
            self._tenant_templates[tenant] = load_templates(settings)
        return settings, self._tenant_templates[tenant]

    async def _handed_on(self, entry: Entry, handed: HandedOn) -> None:
        count_report(self.metrics, handed.report, entry.envelope.tenant)
        log.info("sanitized", queue_id=entry.queue_id, out=handed.output.queue_id,
                 verdict=handed.report.verdict.value, parts=len(handed.report.actions))
        await self._deliver(handed.output, spooled=False)

    def _settle(self, settle: Settle) -> None:
        """Drop the output first, then its original (never an output that nothing can
        remake). An output delivered from memory has only its original, still claimed, to
        drop."""
        if not settle.spooled:
            assert settle.status == "delivered", "a failed delivery spools its output first"
            self.spool.done(settle.origin)
            return
        failed = settle.status == "bounced"
        if failed:
            # With its reason beside it (state/ID.json, as for poison): the failed/ entry
            # alone did not tell an operator why the mail bounced, nor after how many tries.
            self.spool.fail(settle.queue_id, RetryState(attempts=settle.attempts,
                                                        last_error=settle.detail))
        else:
            self.spool.done(settle.queue_id)
        self.spool.release_hold(settle.origin, failed=failed)

    async def _deliver(self, entry: Entry, spooled: bool = True) -> None:
        env, state = entry.envelope, entry.state
        origin = str(env.extra.get("origin", entry.queue_id))
        rcpts = state.pending or list(env.rcpt_tos)
        data = _with_headers(entry.data, env.add_headers)
        now = time.time()
        forwarder = self.routes.get(env.tenant or "", self.forwarder)
        result = await forwarder.deliver(env.mail_from, rcpts, data)
        state = replace(state, attempts=state.attempts + 1,
                        first_attempt=state.first_attempt or now)
        age = now - (env.received_at or state.first_attempt)
        if age > self.settings.max_queue_lifetime_seconds and result.temporary:
            result = _expire(result)
        if not spooled and (result.permanent or result.temporary):
            # It must wait, or a DSN will quote it: from now on the spool keeps it.
            entry = await self._io(spool_output, self.spool, entry)
            spooled = True
        if result.permanent:
            await self._bounce(entry, result)
        if result.temporary:
            await self._defer(entry, state, result)
            return
        status: DeliveryStatus = "bounced" if result.permanent else "delivered"
        self._settle_later(Settle(entry.queue_id, origin, status, state.attempts,
                                  _summary(result), spooled))
        self.metrics.message(status)
        self.metrics.tenant_message(env.tenant, status)
        if not result.permanent:
            self.metrics.observe_delivery(env.received_at, time.time())
        log.info(status, queue_id=origin, entry=entry.queue_id, attempts=state.attempts,
                 remote=result.remote)

    async def _defer(self, entry: Entry, state: RetryState, result: DeliveryResult) -> None:
        origin = str(entry.envelope.extra.get("origin", entry.queue_id))
        delay = retry_delay(state.attempts, self.settings)
        state = replace(state, next_try=time.time() + delay, pending=sorted(result.temporary),
                        last_error=next(iter(result.temporary.values()))[:300])
        await self._io(self.spool.defer, entry.queue_id, state)
        await self._io(self.stores.messages.record_delivery, origin, "deferred",
                       state.attempts, state.last_error)
        self.metrics.message("deferred")
        self.metrics.tenant_message(entry.envelope.tenant, "deferred")
        log.info("deferred", queue_id=origin, entry=entry.queue_id, attempts=state.attempts,
                 retry_in=round(delay), reply=state.last_error)

    async def _bounce(self, entry: Entry, result: DeliveryResult) -> None:
        """A DSN to the envelope sender; never for `<>` and never for our own DSNs."""
        env = entry.envelope
        if not env.mail_from or env.kind == "dsn":
            log.warning("bounce_without_dsn", queue_id=entry.queue_id, reason="null sender")
            return
        headers = entry.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        dsn = build_dsn(queue_id=str(env.extra.get("origin", entry.queue_id)),
                        mail_from=env.mail_from, failures=result.permanent,
                        original_headers=headers, arrival=env.received_at, remote=result.remote,
                        settings=self.settings)
        dsn_env = Envelope(mail_from="", rcpt_tos=(env.mail_from,), kind="dsn",
                           received_at=time.time())
        self.enqueue(await self._io(self.spool.put, dsn, dsn_env))


def _own_trace(data: bytes) -> bytes:
    """Our own `Received:` line, which ingress wrote first; the rebuilt message keeps it."""
    if not data.startswith(b"Received: "):
        return b""
    end = 0
    while True:
        end = data.index(b"\r\n", end) + 2
        if data[end:end + 1] not in (b" ", b"\t"):
            return data[:end]


def _with_headers(data: bytes, headers: tuple[tuple[str, str], ...]) -> bytes:
    """Prepend mugaika's own headers (e.g. who approved a release); values are ours, not input.

    Folded with CRLF: `Header.encode()` folds a long value with a bare LF by default."""
    fields = (f"{name}: " + Header(" ".join(value.split()), "utf-8").encode(linesep="\r\n")
              for name, value in headers)
    return "".join(field + "\r\n" for field in fields).encode() + data


def _expire(result: DeliveryResult) -> DeliveryResult:
    expired = {r: f"{reply} (4.4.7 message expired in queue)"
               for r, reply in result.temporary.items()}
    return replace(result, temporary={}, permanent={**result.permanent, **expired})


def _summary(result: DeliveryResult) -> str:
    parts = [f"delivered={len(result.delivered)}"]
    if result.permanent:
        parts.append("failed: " + "; ".join(f"{r}: {e}" for r, e in result.permanent.items()))
    return " ".join(parts)[:500]
