"""The sanitize stage in child processes: same result as in a thread, and a dead child
costs neither the message nor the pool."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from email import message_from_bytes
from pathlib import Path

from gateway.attachments import AttachmentContext
from gateway.envelope import Envelope
from gateway.report import Verdict
from gateway.sanitize_pool import SanitizePool
from gateway.settings import Settings
from gateway.spool import Entry, RetryState
from gateway.worker import failed_stage, sanitize_stage

RAW = (b"Received: from mx ([192.0.2.1])\r\n\tby gw (mugaika) with ESMTP id Q1;\r\n"
       b"\tTue, 01 Apr 2025 09:00:00 +0900\r\n"
       b"From: sender@external.example\r\nTo: user@example.lg.jp\r\n"
       b"Subject: pool test\r\nMessage-ID: <pool@example.invalid>\r\n"
       b"Content-Type: text/html; charset=utf-8\r\n\r\n"
       b"<p>hello <a href='http://evil.invalid/'>https://city.example.lg.jp/</a></p>"
       b"<script>alert(1)</script>\r\n")
ENTRY = Entry("Q1", Envelope("sender@external.example", ("user@example.lg.jp",)), RAW,
              RetryState())


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, workers=2)


def test_child_process_gives_the_same_output_as_a_thread(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pool = SanitizePool(settings, 2)
    try:
        in_child = asyncio.run(pool.run(ENTRY))
    finally:
        pool.close()
    with AttachmentContext.from_settings(settings) as ctx:
        in_thread = sanitize_stage(ENTRY, settings, ctx)
    assert in_child.report == in_thread.report
    assert in_child.subject == in_thread.subject == "pool test"
    # Only the generated Date/Message-ID could differ; this message has its own id.
    assert in_child.output == in_thread.output
    text = message_from_bytes(in_child.output).get_payload(decode=True)
    assert b"<script>" not in text and b"alert(1)" not in text


def test_dead_child_is_replaced_and_the_message_still_processed(tmp_path: Path) -> None:
    pool = SanitizePool(_settings(tmp_path), 1)

    async def scenario() -> tuple[Verdict, Verdict]:
        first = await pool.run(ENTRY)  # starts the child
        broken = pool._executor
        for pid in list(pool._executor._processes):  # the test kills the child
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool._executor._broken is False and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        second = await pool.run(ENTRY)
        assert pool._executor is not broken, "the broken pool was replaced"
        return first.report.verdict, second.report.verdict

    try:
        first, second = asyncio.run(scenario())
    finally:
        pool.close()
    assert first is second
    assert second is not Verdict.QUARANTINED, "one break is retried, not quarantined"


def test_failed_stage_quarantines_with_a_notice(tmp_path: Path) -> None:
    processed = failed_stage(ENTRY, _settings(tmp_path))
    assert processed.report.verdict is Verdict.QUARANTINED
    assert processed.report.reason == "processing_error"
    assert b"X-Mugaika-Verdict: quarantined" in processed.output
    assert RAW.split(b"\r\n\r\n", 1)[1] not in processed.output
