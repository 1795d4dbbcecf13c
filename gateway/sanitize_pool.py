"""The sanitize stage in child processes, so that parsing and rebuilding use every core.

Sanitize + rebuild are pure Python: in threads they shared the event loop's GIL, and
`bench gateway` found one core busy and the other idle. Each child builds its own
converter context (`AttachmentContext`: sandbox pool, registry, policy) on first use; the
sandbox workers are split between the children, so the gateway starts as many as before.
Each child also writes the message log and the quarantine for its messages (its own
database engine): that SQLAlchemy work was a fifth of the event loop process's CPU.
The output comes back in memory (spooled by the child only when it is over
`THIN_ABOVE_BYTES`), its original still claimed, as from a sanitize thread.

A child that dies (a crash in a C extension on hostile input, the OOM killer) breaks the
whole `ProcessPoolExecutor`: the pool is then replaced, and each message that was in it is
tried once more; a second break quarantines it whole as `processing_error`, as a Python
exception in the stage does. Nothing is lost: the entry stays claimed until then.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from gateway.attachments import AttachmentContext
from gateway.notice import NoticeTemplates, load_templates
from gateway.processes import die_with_parent
from gateway.settings import Settings
from gateway.spool import Entry, Spool
from gateway.store import SqlStores
from gateway.store.engine import make_engine
from gateway.stores import Stores
from gateway.worker import (
    THIN_ABOVE_BYTES,
    HandedOn,
    failed_stage,
    hand_on,
    sanitize_claimed,
    spool_output,
)

log = structlog.get_logger("mugaika.sanitize_pool")


class _Child:
    """What one child process keeps between messages."""

    def __init__(self, settings: Settings, converter_workers: int, slot: int | None) -> None:
        self.settings = settings
        self.converter_workers = converter_workers
        self.templates: NoticeTemplates = load_templates(settings)
        self._attachments: AttachmentContext | None = None
        self._stores: SqlStores | None = None
        # Claim-by-rename is safe across processes; the parent's slot: its claims.
        self.spool = Spool(settings.spool_dir, slot)

    def attachments(self) -> AttachmentContext:
        """Built on the first message: a child that only sees text never starts a sandbox."""
        if self._attachments is None:
            own = self.settings.model_copy(update={"converter_workers": self.converter_workers})
            self._attachments = AttachmentContext.from_settings(own)
        return self._attachments

    def stores(self) -> SqlStores:
        """The parent migrated the schema before any child started: no migration here."""
        if self._stores is None:
            engine = make_engine(self.settings.effective_database_url)
            self._stores = SqlStores(engine, self.settings.quarantine_retention_days)
        return self._stores


#: Process-local by design: set once by the pool's initializer inside each child and read
#: by `_run` there; the parent never sets it (a ProcessPoolExecutor has no other channel).
_CHILD: _Child | None = None


def _init(settings: Settings, converter_workers: int, slot: int | None) -> None:
    global _CHILD  # noqa: PLW0603 - the child's one piece of state, see _CHILD
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _CHILD = _Child(settings, converter_workers, slot)


def _run(entry: Entry) -> HandedOn:
    assert _CHILD is not None, "initializer did not run"
    handed = sanitize_claimed(entry, _CHILD.settings, _CHILD.attachments(), _CHILD.templates,
                              _CHILD.spool, _CHILD.stores())
    if len(handed.output.data) > THIN_ABOVE_BYTES:  # the parent reads it from the spool
        spooled = spool_output(_CHILD.spool, handed.output)
        return HandedOn(spooled.thinned(), handed.report, spooled=True)
    return handed


class SanitizePool:
    """`processes` children running `sanitize_claimed`; `await run(entry)`.

    `stores` and `spool` are the parent's: for a message that broke two children.
    """

    def __init__(self, settings: Settings, processes: int, spool: Spool, stores: Stores) -> None:
        self.settings = settings
        self.spool = spool
        self.stores = stores
        self.processes = max(1, processes)
        total = settings.converter_workers or settings.workers
        self._converter_workers = max(1, total // self.processes)
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs an event loop and threads, which fork would copy
        # in whatever state they are in.
        return ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(self.settings, self._converter_workers, self.spool.slot))

    async def run(self, entry: Entry) -> HandedOn:
        for attempt in (1, 2):
            executor = self._executor
            try:
                return await asyncio.get_running_loop().run_in_executor(executor, _run, entry)
            except BrokenProcessPool:
                log.error("sanitize_child_died", queue_id=entry.queue_id, attempt=attempt)
                if self._executor is executor:  # the first to notice replaces it
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = self._start()
        loop = asyncio.get_running_loop()
        whole = await loop.run_in_executor(None, self.spool.full, entry)
        failed = failed_stage(whole, self.settings)
        return await loop.run_in_executor(None, hand_on, whole, failed, self.spool, self.stores)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
