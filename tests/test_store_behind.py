"""The message log written behind (the gateway's process) ends as if written call by call."""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from gateway.custody.stores import SqlStores, open_stores
from gateway.pipeline.report import Report, Verdict
from gateway.queue.envelope import Envelope
from gateway.settings import Settings
from gateway.store.common import write
from tests.store_helpers import PG_ENV, _fresh_pg_database


def _log_traffic(stores: SqlStores, count: int) -> None:
    """Arrivals, verdicts and outcomes in the order a busy gateway makes them."""
    for i in range(count):
        qid = f"Q{i:04d}"
        if i % 7 == 0:  # an API release: delivered before it is logged as received
            stores.messages.record_delivery(qid, "delivered", 1, "250 ok")
        env = Envelope(f"sender{i}@example.com", (f"clerk{i}@example.lg.jp",),
                       received_at=1_700_000_000.0 + i, kind="inbound")
        stores.messages.record_received(qid, env, 1000 + i)
        verdict = Verdict.QUARANTINED if i % 5 == 0 else Verdict.CLEAN
        stores.messages.record_processed(qid, f"件名 {i}", Report(qid, verdict))
        if i % 3 == 0:
            stores.messages.record_delivery(qid, "deferred", 1, "451 4.3.0 later")
        if i % 7:
            stores.messages.record_delivery(qid, "delivered", 2, "250 2.0.0 ok")


def _rows(stores: SqlStores, count: int) -> list[tuple[Any, ...]]:
    out = []
    for i in range(count):
        rec = stores.messages.get(f"Q{i:04d}")
        assert rec is not None
        out.append((rec.kind, rec.mail_from, rec.recipients, rec.size, rec.subject,
                    rec.verdict, rec.status, rec.attempts, rec.status_detail))
    return out


def test_write_behind_ends_like_call_by_call(tmp_path: Path) -> None:
    count = 300
    with closing(open_stores(Settings(data_dir=tmp_path / "a"))) as direct:
        _log_traffic(direct, count)
        expected = _rows(direct, count)
    with closing(open_stores(Settings(data_dir=tmp_path / "b"), write_behind=True)) as behind:
        _log_traffic(behind, count)
        assert _rows(behind, count) == expected
    assert expected[3][6:8] == ("delivered", 2) and expected[7][6] == "delivered"
    assert expected[5][5] == "quarantined" and expected[1][4] == "件名 1"


def test_rows_survive_failed_writes_and_close(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A database error is retried, never dropped; `close()` writes what is left."""
    with closing(open_stores(Settings(data_dir=tmp_path / "a"))) as direct:
        _log_traffic(direct, 20)
        expected = _rows(direct, 20)
    settings = Settings(data_dir=tmp_path / "b")
    stores = open_stores(settings, write_behind=True)
    failures = iter([True, True])

    def flaky(engine: Any, durable: bool = True) -> Any:
        if next(failures, False):
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return write(engine, durable)

    monkeypatch.setattr("gateway.store.behind.RETRY_DELAYS", (0.01,))
    monkeypatch.setattr("gateway.store.messages.write", flaky)
    _log_traffic(stores, 20)
    stores.close()
    with closing(open_stores(settings)) as reopened:
        assert _rows(reopened, 20) == expected


def test_a_row_that_cannot_be_written_does_not_stop_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One poisoned row is dropped (and logged) after a few tries; the rest is written and
    readers are not blocked for good."""
    monkeypatch.setattr("gateway.store.behind.RETRY_DELAYS", (0.01,))
    with closing(open_stores(Settings(data_dir=tmp_path), write_behind=True)) as stores:
        log = stores.messages
        real = log._write_batch

        def refuse_poison(conn: Any, batch: list[Any]) -> None:
            if any(row.get("queue_id") == "POISON" for _, row in batch):
                raise ValueError("value refused by the database")
            real(conn, batch)

        monkeypatch.setattr(log._behind, "_write_batch", refuse_poison)
        env = Envelope("a@example.com", ("clerk@example.lg.jp",), received_at=1_700_000_000.0)
        log.record_received("GOOD1", env, 10)
        log.record_received("POISON", env, 10)
        log.record_received("GOOD2", env, 10)
        assert log.get("GOOD1") is not None and log.get("GOOD2") is not None
        assert log.get("POISON") is None


def test_rows_that_fail_while_the_database_comes_back_are_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: during a PostgreSQL outage, rows that failed only while the database was
    still coming back were dropped as poison when others of the same pass went in. A
    connection error says nothing about a row: every row must land."""
    monkeypatch.setattr("gateway.store.behind.RETRY_DELAYS", (0.01,))
    with closing(open_stores(Settings(data_dir=tmp_path), write_behind=True)) as stores:
        log = stores.messages
        real = log._write_batch
        unlucky = {"Q0001": 6, "Q0003": 6}  # each fails this many times, then goes in

        def coming_back(conn: Any, batch: list[Any]) -> None:
            for _, row in batch:
                if unlucky.get(row.get("queue_id"), 0) > 0:
                    unlucky[row["queue_id"]] -= 1
                    raise OperationalError("INSERT", {}, Exception("the database system is "
                                                                   "starting up"))
            real(conn, batch)

        monkeypatch.setattr(log._behind, "_write_batch", coming_back)
        env = Envelope("a@example.com", ("clerk@example.lg.jp",), received_at=1_700_000_000.0)
        for i in range(5):
            log.record_received(f"Q{i:04d}", env, 10)
        assert [log.get(f"Q{i:04d}") is not None for i in range(5)] == [True] * 5


@pytest.mark.skipif(not os.environ.get(PG_ENV), reason="needs MUGAIKA_TEST_DATABASE_URL")
def test_a_row_postgresql_refuses_is_dropped_alone(tmp_path: Path) -> None:
    """A NUL in a text value: PostgreSQL refuses that row's values, for good."""
    for url in _fresh_pg_database(os.environ[PG_ENV]):
        settings = Settings(data_dir=tmp_path, database_url=url)
        with closing(open_stores(settings, write_behind=True)) as stores:
            env = Envelope("a@example.com", ("clerk@example.lg.jp",), received_at=1.0e9)
            bad = Envelope("a\x00b@example.com", ("clerk@example.lg.jp",), received_at=1.0e9)
            stores.messages.record_received("GOOD1", env, 10)
            stores.messages.record_received("NUL", bad, 10)
            stores.messages.record_received("GOOD2", env, 10)
            assert stores.messages.get("GOOD1") is not None
            assert stores.messages.get("GOOD2") is not None
            assert stores.messages.get("NUL") is None
