"""Small shared pieces of the store: clock, paging, search helpers."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import ColumnElement, Connection, Engine, Select, func, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

T = TypeVar("T")

Clock = Callable[[], datetime]
MAX_PAGE = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int
    limit: int
    offset: int


def paged(
    conn: Any, query: Select[Any], order: Sequence[ColumnElement[Any]], limit: int, offset: int
) -> tuple[int, Sequence[Any]]:
    """Total count and one page of rows for `query` (limit capped at MAX_PAGE)."""
    total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = conn.execute(
        query.order_by(*order).limit(max(1, min(limit, MAX_PAGE))).offset(max(0, offset))
    ).all()
    return int(total), rows


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _sqlite_writer(engine: Engine) -> contextlib.AbstractContextManager[object]:
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(engine, threading.RLock())  # re-entrant: a nested write


@contextlib.contextmanager
def write(engine: Engine, durable: bool = True) -> Iterator[Connection]:
    """One write transaction; `durable=False` may lose its last commits on power loss.

    Measured here: an fsync per commit costs ~3 ms, and the message log writes three rows
    per message, which capped the gateway near 80 messages/s on SQLite. The message log
    is a record of what the spool already keeps durably, so its writes skip the fsync
    (SQLite WAL `synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`: consistent,
    never corrupt, but the last moments may be missing after a power cut). Quarantine
    originals, release state, tokens and the audit log stay fully durable: the spool
    entry is dropped after `hold`, and an audit trail must not lose a release.

    SQLite has one writer at a time: this process's writers (the message-log thread, the
    sanitize threads holding originals, the API) take turns on a lock here, because
    SQLite's own busy handler would make the loser sleep 1 to 100 ms.
    """
    lock = _sqlite_writer(engine)
    with lock, engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite and durable:
            conn.exec_driver_sql("PRAGMA synchronous=FULL")
            conn.commit()
        try:
            with conn.begin():
                if not sqlite and not durable:
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield conn
        finally:
            if sqlite and durable:
                conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                conn.commit()


def refused_by_database(error: BaseException) -> bool:
    """Whether writing the same values again can never succeed.

    True when the database refused the values (a data or integrity error), when they could
    not be sent at all (a value the driver cannot bind), or for a bug of ours building
    them. False for everything that says nothing about the values: a lost or refused
    connection, a server starting or shutting down, a pool or lock timeout, a full disk.
    Rows judged by this are dropped only when it says True (issue 17: during a PostgreSQL
    outage, rows that failed while the database was still coming back were dropped).
    """
    if isinstance(error, (DataError, IntegrityError)):
        return True
    if isinstance(error, DBAPIError):
        return False
    if isinstance(error, StatementError):
        return True
    return not isinstance(error, (SQLAlchemyError, OSError))


def join_addresses(addresses: Sequence[str]) -> str:
    return "\n".join(addresses)


def split_addresses(text: str) -> tuple[str, ...]:
    return tuple(a for a in text.split("\n") if a)


#: Dataclasses and enums as orjson writes them natively (fields in order, enum values);
#: datetimes and anything else unknown through `str`, as the stdlib encoder was told to.
_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(value: Any) -> str:
    """JSON for a text column. orjson: a report per message is logged, and the stdlib
    encoder (after `asdict`) took as long as the rest of logging the message."""
    return orjson.dumps(value, default=str, option=_DUMPS_OPTIONS).decode()
