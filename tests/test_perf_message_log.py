"""A delivery may be logged before its arrival (an API release is spooled, and can be
delivered, before the API logs it): the outcome must survive that order."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from gateway.custody.stores import open_stores
from gateway.queue.envelope import Envelope
from gateway.settings import Settings

ENV = Envelope("tanaka@example.com", ("clerk@example.lg.jp",), received_at=1_700_000_000.0,
               kind="release")


def test_delivery_logged_before_arrival_keeps_both(tmp_path: Path) -> None:
    with closing(open_stores(Settings(data_dir=tmp_path))) as stores:
        stores.messages.record_delivery("R1", "delivered", 1, "delivered=1")
        stores.messages.record_received("R1", ENV, 879)
        record = stores.messages.get("R1")
    assert record is not None
    assert record.status == "delivered" and record.attempts == 1
    assert record.kind == "release" and record.mail_from == "tanaka@example.com"
    assert record.recipients == ("clerk@example.lg.jp",) and record.size == 879
    assert record.received_at.timestamp() == ENV.received_at


def test_arrival_logged_twice_keeps_the_delivery(tmp_path: Path) -> None:
    with closing(open_stores(Settings(data_dir=tmp_path))) as stores:
        stores.messages.record_received("R2", ENV, 879)
        stores.messages.record_delivery("R2", "deferred", 2, "451 try later")
        stores.messages.record_received("R2", ENV, 879)  # spool recovery logs it again
        record = stores.messages.get("R2")
    assert record is not None and record.status == "deferred" and record.attempts == 2
