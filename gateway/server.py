"""One gateway: SMTP listener, workers and the HTTP API in one process and one loop.

`mugaika serve` runs one, or a group of them sharing the port and the spool
(`gateway.processes`): then each has a slot number, and only slot 0 serves the API.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import MutableSequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from converters.emoji import EMOJI_SOURCES, emoji_sources
from gateway.api import create_app
from gateway.api.serve import NotifyingSpool, serve_api
from gateway.console import install as install_console
from gateway.custody.ppap import sandboxed_decrypter
from gateway.custody.stores import open_stores
from gateway.metrics import Metrics
from gateway.pipeline.attachments import AttachmentContext
from gateway.queue.outlets import Forwarder
from gateway.queue.spool import Entry, Spool
from gateway.queue.worker import Worker
from gateway.relay.egress import forwarder_from_settings
from gateway.relay.ingress import IngressHandler, server_factory
from gateway.reload import Reloader, watch
from gateway.settings import Settings
from gateway.tenancy import Tenancy

log = structlog.get_logger("mugaika.server")

#: Concurrent fsyncs share one ext4 journal commit: 8 writers accepted 484 and 449 msgs/s
#: where 2 accepted 329 and 239 (alternating runs, 20 sessions, docs/performance.md),
#: although MEASURED.md saw raw fsync threads slow each other down.
SPOOL_WRITERS = 8
#: glibc malloc arenas for this process. By default glibc makes up to 8 per core, one
#: for each thread that allocates while the others hold theirs; every arena keeps its own
#: freed memory. Measured with the memory bench (40 x 20 MB mails, concurrency 20): peak
#: 1,492 MiB with the default, 1,316 MiB with 2 (main process VmHWM 1,358 -> 1,183 MiB).
#: Python's small objects do not use malloc (pymalloc), so few calls contend for them.
MALLOC_ARENAS = 2
#: Allocations from this size up get pages of their own, returned to the system when
#: freed. glibc starts at 128 KiB but raises the threshold to the largest block freed so
#: far (up to 32 MiB): after the first 20 MB mail, every message buffer came from the
#: heap, whose freed memory stays resident. Measured with the memory bench: see
#: docs/performance.md ("Memory").
MMAP_THRESHOLD = 1 << 20
_M_ARENA_MAX = -8  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
#: The environment variables glibc reads at start for the same two settings.
_MALLOC_ENV = {"MALLOC_ARENA_MAX": MALLOC_ARENAS, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas and fix its mmap threshold, in this process now and in
    the processes it starts (an operator's own settings, read by glibc at start, stay)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    for (name, value), parameter in zip(_MALLOC_ENV.items(), (_M_ARENA_MAX, _M_MMAP_THRESHOLD),
                                        strict=True):
        if name not in os.environ:
            mallopt(parameter, value)
            os.environ[name] = str(value)


def _outlets(settings: Settings) -> tuple[Forwarder, Tenancy, dict[str, Forwarder]]:
    """The default next hop, the tenants, and a forwarder (its own connection pool) for
    each tenant with a downstream of its own."""
    tenancy = Tenancy(settings)
    routes = {t.id: forwarder_from_settings(tenancy.settings_for(t.id))
              for t in settings.tenants if t.downstream is not None}
    return forwarder_from_settings(settings), tenancy, routes


async def serve(settings: Settings, stop: asyncio.Event | None = None,
                slot: int | None = None, limits: MutableSequence[int] | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT). Claimed work is recovered at next start.

    With a `slot`, this is one member of a group: it shares the SMTP port, claims into its
    own part of the spool, and takes back only its own claims when it starts; `limits`
    are the group's connection counts (`ingress.ConnectionLimiter`).
    """
    limit_malloc_arenas()  # before the thread pools below allocate
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # First: refuses to start when bubblewrap cannot run, unless unsandboxed is allowed.
    attachments = AttachmentContext.from_settings(settings)
    # Start the sandboxed converters now, so a broken install fails here, not on mail.
    await asyncio.to_thread(attachments.pool.warm)
    spool = Spool(settings.spool_dir, slot)
    # Before listening: the journal is replayed into spool files before anything new
    # is appended to it.
    recovered = await asyncio.to_thread(spool.recover)
    stores = open_stores(settings, write_behind=True)
    forwarder, tenancy, routes = _outlets(settings)
    pipeline_pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="sanitize")
    spool_pool = ThreadPoolExecutor(SPOOL_WRITERS, thread_name_prefix="spool")
    metrics = Metrics()
    worker = Worker(settings, spool, stores, forwarder, pipeline_pool, attachments, metrics,
                    tenancy, routes)

    def queued(queue_id: str, entry: Entry | None) -> None:
        metrics.message("received")
        worker.enqueue(queue_id, entry)

    handler = IngressHandler(settings, spool, spool_pool, on_queued=queued,
                             on_rejected=lambda: metrics.message("rejected"),
                             room_for_fresh=worker.room_for_fresh)
    watch(Reloader(settings, handler, worker, routes))
    smtp = await loop.create_server(server_factory(settings, handler, limits, slot or 0),
                                    settings.smtp_host, settings.smtp_port,
                                    reuse_port=slot is not None)
    consumers = settings.workers + settings.downstream_pool_size
    tasks = [asyncio.create_task(worker.scheduler(), name="scheduler")]
    tasks += [asyncio.create_task(worker.run(), name=f"worker-{i}") for i in range(consumers)]
    if settings.api_enabled and not slot:
        # Releases put into the spool by the API must wake a worker, not wait for a restart.
        api_spool = NotifyingSpool(spool, loop, worker.enqueue)
        app = create_app(settings, stores, api_spool, metrics,
                         decrypt=sandboxed_decrypter(settings))
        if settings.console_enabled:
            office = attachments.office
            install_console(app, {"libreoffice": office.healthy} if office else None)
        tasks.append(asyncio.create_task(serve_api(app, settings, stop), name="api"))
    log.info("spool_recovered", recovered=recovered)
    if not emoji_sources():  # Debian's unicode-data; `make setup` installs it
        log.warning("carrier_emoji_table_missing", path=str(EMOJI_SOURCES),
                    effect="carrier emoji stay private-use characters")
    log.info("serving", smtp=f"{settings.smtp_host}:{settings.smtp_port}",
             data_dir=str(settings.data_dir), downstream=settings.downstream_host or "maildir")
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        smtp.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for outlet in (forwarder, *routes.values()):
            await outlet.close()
        worker.close()
        pipeline_pool.shutdown(wait=True, cancel_futures=True)
        spool_pool.shutdown(wait=True)
        spool.journal.close()
        stores.close()
        attachments.close()
