"""`mugaika serve`: SMTP listener, workers and the HTTP API in one process and one loop."""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor

import structlog

from gateway.egress import forwarder_from_settings
from gateway.ingress import IngressHandler, server_factory
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.store import open_stores
from gateway.worker import Worker

log = structlog.get_logger("mugaika.server")

#: fsync is serial on one disk: more writer threads made it slower here (MEASURED.md).
SPOOL_WRITERS = 2


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT). Claimed work is recovered at next start."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    spool = Spool(settings.spool_dir)
    stores = open_stores(settings)
    forwarder = forwarder_from_settings(settings)
    pipeline_pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="sanitize")
    spool_pool = ThreadPoolExecutor(SPOOL_WRITERS, thread_name_prefix="spool")
    worker = Worker(settings, spool, stores, forwarder, pipeline_pool)
    handler = IngressHandler(settings, spool, spool_pool,
                             on_queued=lambda qid, _size: worker.enqueue(qid))
    smtp = await loop.create_server(server_factory(settings, handler),
                                    settings.smtp_host, settings.smtp_port)
    consumers = settings.workers + settings.downstream_pool_size
    tasks = [asyncio.create_task(worker.scheduler(), name="scheduler")]
    tasks += [asyncio.create_task(worker.run(), name=f"worker-{i}") for i in range(consumers)]
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
        await forwarder.close()
        pipeline_pool.shutdown(wait=True, cancel_futures=True)
        spool_pool.shutdown(wait=True)
        stores.close()
