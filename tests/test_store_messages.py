"""The message log answers "did this mail arrive, and what happened to it?"."""

from __future__ import annotations

from datetime import timedelta

from gateway.custody.stores import SqlStores
from gateway.settings import Settings
from gateway.store.messages import MessageQuery
from tests.store_helpers import FakeClock, envelope_for, hold_message

pytest_plugins = ("tests.store_helpers",)


def test_received_processed_delivered_is_one_record(stores: SqlStores, settings: Settings) -> None:
    """A message's whole life shows in one record: envelope, subject, verdict, delivery."""
    hold_message(stores, settings, "Q1")
    stores.messages.record_delivery("Q1", "delivered", 2, "250 2.0.0 Ok: queued as ABC")
    rec = stores.messages.get("Q1")
    assert rec is not None
    assert rec.mail_from == "tanaka@example.com"
    assert rec.recipients == ("clerk@example.lg.jp",)
    assert rec.subject == "請求書の送付"
    assert rec.verdict == "sanitized"
    assert rec.status == "delivered" and rec.attempts == 2
    assert rec.report is not None
    assert any(a["filename"] == "invoice.exe" and a["action"] == "removed"
               for a in rec.report["actions"])


def test_received_twice_keeps_one_record(stores: SqlStores) -> None:
    """Spool recovery may log the same queue id again: still one row."""
    env = envelope_for()
    stores.messages.record_received("Q1", env, 100)
    stores.messages.record_received("Q1", env, 120)
    page = stores.messages.search(MessageQuery())
    assert page.total == 1 and page.items[0].size == 120


def test_search_filters_and_pages(stores: SqlStores, clock: FakeClock) -> None:
    """Sender, recipient, status, time range and paging narrow the result."""
    for i in range(7):
        rcpt = "kikaku@example.lg.jp" if i % 2 else "soumu@example.lg.jp"
        env = envelope_for(sender=f"user{i}@partner.co.jp", rcpts=(rcpt,))
        env = type(env)(**{**env.__dict__, "received_at": clock().timestamp()})
        stores.messages.record_received(f"Q{i}", env, 10)
        stores.messages.record_delivery(f"Q{i}", "deferred" if i == 3 else "delivered", 1, "")
        clock.advance(hours=1)
    assert stores.messages.search(MessageQuery(recipient="KIKAKU")).total == 3
    deferred = stores.messages.search(MessageQuery(status="deferred")).items
    assert [r.queue_id for r in deferred] == ["Q3"]
    assert stores.messages.search(MessageQuery(sender="user5@")).items[0].queue_id == "Q5"
    start = clock.now - timedelta(hours=3)
    assert {r.queue_id for r in stores.messages.search(MessageQuery(since=start)).items} == {
        "Q4", "Q5", "Q6"}
    first = stores.messages.search(MessageQuery(limit=3))
    second = stores.messages.search(MessageQuery(limit=3, offset=3))
    assert first.total == 7 and [r.queue_id for r in first.items] == ["Q6", "Q5", "Q4"]
    assert [r.queue_id for r in second.items] == ["Q3", "Q2", "Q1"]


def test_search_treats_wildcards_literally(stores: SqlStores) -> None:
    """A '%' typed by an operator matches a percent sign, not everything."""
    stores.messages.record_received("Q1", envelope_for(sender="a@b.jp"), 1)
    assert stores.messages.search(MessageQuery(sender="%")).total == 0
