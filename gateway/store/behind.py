"""Write-behind for the message log: rows queued by the worker, written in batches.

Why: the gateway logs each message three times (received, processed, delivered). One
transaction per call cost the main process a SQLAlchemy statement build, a connection
checkout and a commit each time: 22 % of its GIL time under load (docs/performance.md).
Here the worker only appends a row; one thread writes whatever has queued up in one
transaction, one `executemany` per statement.

What it keeps: the message log was already non-durable (`write(durable=False)`): it is a
record of what the spool keeps durably. Write-behind adds a few milliseconds of lag and
nothing else: reads (`flush()` first) see every row queued before them, a failed write is
retried (a row is dropped only when the database refuses its values:
`gateway.store.common.refused_by_database`) and `close()` writes what is left. `MAX_PENDING` rows bound the
memory while the database is unreachable: beyond it the callers wait (back-pressure).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Connection

from gateway.store.common import refused_by_database

log = structlog.get_logger("mugaika.store")

#: Queued rows beyond which `put` waits for the writer (the database is down or slow).
MAX_PENDING = 50_000
#: How long the writer lets rows gather after the first one: one wake-up and one
#: transaction for all of them instead of a GIL hand-over per row. A `flush()` cuts it
#: short: the worker waits for its rows before it drops delivered spool files, and a
#: process killed in that wait delivers those messages again.
LINGER_SECONDS = 0.05
#: Retry delays after a failed batch, seconds (the last one repeats).
RETRY_DELAYS = (0.1, 0.5, 2.0, 5.0)

#: (statement name, row). The statement is looked up by name when the batch is written,
#: so that one prepared statement serves every row of its kind.
Row = tuple[str, dict[str, Any]]
#: Writes one batch: the rows in order, in one transaction.
BatchWriter = Callable[[Connection, list[Row]], None]


class WriteBehind:
    """One writer thread, started on the first row; `flush()` and `close()` wait for it."""

    def __init__(self, begin: Callable[[], Any], write_batch: BatchWriter) -> None:
        self._begin = begin  # a context manager giving a Connection in a transaction
        self._write_batch = write_batch
        self._rows: list[Row] = []
        self._cv = threading.Condition()
        self._queued = 0
        self._written = 0
        self._closed = False
        self._hurry = False  # someone waits in flush(): write without lingering
        self._thread: threading.Thread | None = None

    def put(self, name: str, row: dict[str, Any]) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("message log closed")
            self._cv.wait_for(lambda: len(self._rows) < MAX_PENDING)
            self._rows.append((name, row))
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="message-log",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def flush(self) -> None:
        """Wait until every row queued before this call is in the database."""
        with self._cv:
            target = self._queued
            if self._written < target:
                self._hurry = True
                self._cv.notify_all()
            self._cv.wait_for(lambda: self._written >= target or self._thread is None)

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._rows) or self._closed)
                if not self._rows:
                    return
                self._cv.wait_for(lambda: self._hurry or self._closed, LINGER_SECONDS)
                batch, self._rows, self._hurry = self._rows, [], False
            self._write(batch)
            with self._cv:
                self._written += len(batch)
                self._cv.notify_all()

    def _write(self, batch: list[Row]) -> None:
        """Write `batch` in one transaction, retrying until it lands; when the database
        refused some row's values, what can be written goes in row by row."""
        for attempt in itertools.count():
            try:
                self._write_rows(batch)
                return
            except Exception as exc:  # a database error must not lose the log: retry
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.error("message_log_write_failed", rows=len(batch), error=str(exc)[:300],
                          retry_in=delay)
                refused = refused_by_database(exc)
            if refused:
                batch = self._without_refused(batch)
                if not batch:
                    return
            time.sleep(delay)

    def _write_rows(self, rows: list[Row]) -> None:
        with self._begin() as conn:
            self._write_batch(conn, rows)

    def _without_refused(self, batch: list[Row]) -> list[Row]:
        """Write `batch` row by row, dropping (and logging) the rows the database refuses;
        what is left to retry.

        Any other failure on the way (the connection lost meanwhile) says nothing about
        the row: it and the rows after it are kept for the next try."""
        for i, (kind, values) in enumerate(batch):
            try:
                self._write_rows([(kind, values)])
            except Exception as exc:  # judged: refused values or a database away
                if not refused_by_database(exc):
                    return batch[i:]
                log.error("message_log_row_dropped", kind=kind, error=str(exc)[:300],
                          queue_id=values.get("queue_id") or values.get("b_queue_id"))
        return []
