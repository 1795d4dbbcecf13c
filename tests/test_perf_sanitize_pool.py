"""The sanitize stage in child processes: same result as in a thread, and a dead child
costs neither the message nor the pool."""

from __future__ import annotations

import asyncio
import email.policy
import os
import signal
import time
from collections.abc import Callable, Coroutine
from contextlib import closing
from email import message_from_bytes
from pathlib import Path
from typing import Any, TypeVar

from gateway.attachments import AttachmentContext
from gateway.envelope import Envelope
from gateway.report import Verdict
from gateway.sanitize_pool import SanitizePool
from gateway.settings import Settings
from gateway.spool import Entry, Spool, derived_id
from gateway.store import SqlStores, open_stores
from gateway.worker import THIN_ABOVE_BYTES, HandedOn, failed_stage, sanitize_stage

RAW = (b"Received: from mx ([192.0.2.1])\r\n\tby gw (mugaika) with ESMTP id Q1;\r\n"
       b"\tTue, 01 Apr 2025 09:00:00 +0900\r\n"
       b"From: sender@external.example\r\nTo: user@example.lg.jp\r\n"
       b"Subject: pool test\r\nMessage-ID: <pool@example.invalid>\r\n"
       b"Date: Tue, 01 Apr 2025 09:00:00 +0900\r\n"
       b"Content-Type: text/html; charset=utf-8\r\n\r\n"
       b"<p>hello <a href='http://evil.invalid/'>https://city.example.lg.jp/</a></p>"
       b"<script>alert(1)</script>\r\n")
T = TypeVar("T")
ENV = Envelope("sender@external.example", ("user@example.lg.jp",))


def _settings(tmp_path: Path) -> Settings:
    """Settings on a data dir whose database is migrated, as `mugaika serve` leaves it."""
    settings = Settings(data_dir=tmp_path, workers=2)
    open_stores(settings).close()
    return settings


def _claimed(spool: Spool) -> Entry:
    entry = spool.claim(spool.put(RAW, ENV))
    assert entry is not None
    return entry


def _in_pool(settings: Settings, stores: SqlStores, processes: int,
             scenario: Callable[[SanitizePool], Coroutine[Any, Any, T]]) -> T:
    pool = SanitizePool(settings, processes, Spool(settings.spool_dir), stores)
    try:
        return asyncio.run(scenario(pool))
    finally:
        pool.close()


def test_child_sanitizes_records_and_hands_on_like_a_thread(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spool = Spool(settings.spool_dir)
    entry = _claimed(spool)
    with closing(open_stores(settings)) as stores:
        handed = _in_pool(settings, stores, 2, lambda pool: pool.run(entry))
        record = stores.messages.get(entry.queue_id)
    assert record is not None and record.verdict == handed.report.verdict.value
    assert record.subject == "pool test" and record.size == len(RAW)
    out = handed.output
    assert out.queue_id == derived_id(entry.queue_id)
    assert not handed.spooled, "a small output comes back in memory"
    assert not (settings.spool_dir / "active" / out.queue_id).exists()
    assert (settings.spool_dir / "active" / entry.queue_id).exists(), "original still claimed"
    with AttachmentContext.from_settings(settings) as ctx:
        in_thread = sanitize_stage(entry, settings, ctx)
    assert handed.report == in_thread.report
    assert out.data == in_thread.output  # own Message-ID and Date: nothing generated
    text = message_from_bytes(out.data).get_payload(decode=True)
    assert b"<script>" not in text and b"alert(1)" not in text


def test_dead_child_is_replaced_and_the_message_still_processed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spool = Spool(settings.spool_dir)
    first_entry, second_entry = _claimed(spool), _claimed(spool)

    async def scenario(pool: SanitizePool) -> tuple[HandedOn, HandedOn]:
        first = await pool.run(first_entry)  # starts the child
        broken = pool._executor
        for pid in list(broken._processes):  # the test kills the child
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while broken._broken is False and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        second = await pool.run(second_entry)
        assert pool._executor is not broken, "the broken pool was replaced"
        return first, second

    with closing(open_stores(settings)) as stores:
        first, second = _in_pool(settings, stores, 1, scenario)
    assert first.report.verdict is second.report.verdict
    assert second.report.verdict is not Verdict.QUARANTINED, "one break is retried"
    delivered = message_from_bytes(second.output.data, policy=email.policy.default)
    assert delivered["Subject"] == "[無害化] pool test"


def test_failed_stage_quarantines_with_a_notice(tmp_path: Path) -> None:
    entry = Entry("Q1", ENV, RAW, _claimed(Spool(tmp_path / "spool")).state)
    processed = failed_stage(entry, _settings(tmp_path))
    assert processed.report.verdict is Verdict.QUARANTINED
    assert processed.report.reason == "processing_error"
    assert b"X-Mugaika-Verdict: quarantined" in processed.output
    assert RAW.split(b"\r\n\r\n", 1)[1] not in processed.output


def test_large_message_crosses_as_a_queue_id_both_ways(tmp_path: Path) -> None:
    """A 2 MB mail goes to the child thin (read from active/) and comes back thin."""
    settings = _settings(tmp_path)
    spool = Spool(settings.spool_dir)
    body = ("大きな本文の行です。" * 20 + "\r\n").encode() * 3500
    big = (b"From: sender@external.example\r\nTo: user@example.lg.jp\r\nSubject: big\r\n"
           b"Date: Tue, 01 Apr 2025 09:00:00 +0900\r\nMessage-ID: <big@example.invalid>\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    assert len(big) > THIN_ABOVE_BYTES
    entry = spool.claim(spool.put(big, ENV))
    assert entry is not None
    with closing(open_stores(settings)) as stores:
        handed = _in_pool(settings, stores, 1, lambda pool: pool.run(entry.thinned()))
        record = stores.messages.get(entry.queue_id)
    assert record is not None and record.size == len(big), "logged from the whole file"
    assert handed.output.thin and handed.output.data == b"" and handed.spooled
    assert (settings.spool_dir / "hold" / entry.queue_id).exists(), "original kept"
    output = spool.full(handed.output)
    assert len(output.data) > THIN_ABOVE_BYTES
    text = message_from_bytes(output.data).get_payload(decode=True)
    assert isinstance(text, bytes) and "大きな本文の行です。".encode() in text
