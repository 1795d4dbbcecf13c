"""The quarantine keeps originals once, by sha256, until retention expires."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError

from gateway.custody.audit import Actor, AuditQuery
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Permission, Role, TokenError
from gateway.settings import Settings
from gateway.store.records import QuarantineQuery
from gateway.store.schema import blobs
from tests.store_helpers import EXE_BYTES, FakeClock, hold_message, mail_with_attachment

pytest_plugins = ("tests.store_helpers",)


def _blob_count(stores: SqlStores) -> int:
    with stores.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(blobs)).scalar_one())


def test_hold_keeps_original_and_part_byte_for_byte(stores: SqlStores, settings: Settings) -> None:
    """The whole message and the removed .exe come back exactly as received."""
    raw = mail_with_attachment()
    hold_message(stores, settings, "Q1", raw)
    entry = stores.quarantine.get("Q1")
    assert entry is not None
    assert entry.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert entry.subject == "請求書の送付"
    assert entry.recipients == ("clerk@example.lg.jp",)
    assert entry.reasons == ("blocked_type",)
    assert [(p.filename, p.size) for p in entry.parts] == [("invoice.exe", len(EXE_BYTES))]
    assert stores.quarantine.original("Q1") == raw
    assert stores.quarantine.part_data("Q1", entry.parts[0].part) == EXE_BYTES


def test_same_attachment_is_stored_once(stores: SqlStores, settings: Settings) -> None:
    """Two mails carrying the same file share one stored copy of it."""
    hold_message(stores, settings, "Q1", mail_with_attachment(subject="one"))
    hold_message(stores, settings, "Q2", mail_with_attachment(subject="two"))
    assert _blob_count(stores) == 3  # two distinct originals, one shared .exe
    stats = stores.quarantine.stats()
    assert stats.entries == 2


def test_hold_twice_is_idempotent(stores: SqlStores, settings: Settings) -> None:
    """A worker retry after a crash does not duplicate the entry."""
    raw = mail_with_attachment()
    hold_message(stores, settings, "Q1", raw)
    hold_message(stores, settings, "Q1", raw)
    assert stores.quarantine.search(QuarantineQuery()).total == 1
    assert len(stores.quarantine.get("Q1").parts) == 1  # type: ignore[union-attr]


def test_purge_removes_expired_entries_and_unused_originals(
    stores: SqlStores, settings: Settings, clock: FakeClock
) -> None:
    """After the retention period (30 days) the entry and its bytes are gone; younger ones stay."""
    hold_message(stores, settings, "OLD", mail_with_attachment(subject="old"))
    clock.advance(days=20)
    hold_message(stores, settings, "NEW", mail_with_attachment(subject="new"))
    clock.advance(days=10, seconds=1)
    assert stores.quarantine.purge() == ["OLD"]
    assert stores.quarantine.get("OLD") is None and stores.quarantine.original("OLD") is None
    assert stores.quarantine.get("NEW") is not None
    assert _blob_count(stores) == 2  # NEW's original and the still-used .exe
    clock.advance(days=30)
    assert stores.quarantine.purge() == ["NEW"]
    assert _blob_count(stores) == 0
    assert stores.quarantine.stats().bytes == 0


def test_search_by_reason_subject_and_status(stores: SqlStores, settings: Settings) -> None:
    """Operators find entries by reason code, subject words and state."""
    hold_message(stores, settings, "Q1", mail_with_attachment(subject="見積書"))
    hold_message(stores, settings, "Q2", mail_with_attachment(subject="議事録"))
    stores.quarantine.add_request("Q2", "op", "127.0.0.1", "needed")
    q = stores.quarantine.search
    assert [e.id for e in q(QuarantineQuery(subject="議事")).items] == ["Q2"]
    assert q(QuarantineQuery(reason="blocked_type")).total == 2
    assert q(QuarantineQuery(reason="encrypted")).total == 0
    assert [e.id for e in q(QuarantineQuery(status="release_requested")).items] == ["Q2"]


def test_release_is_carried_out_once(stores: SqlStores, settings: Settings) -> None:
    """Two approvals of one request deliver once; the second finds nothing pending."""
    hold_message(stores, settings, "Q1")
    request_id = stores.quarantine.add_request("Q1", "op", "127.0.0.1", "")
    assert request_id is not None
    assert stores.quarantine.add_request("Q1", "op2", "", "") is None  # already requested
    delivered: list[str] = []

    def deliver(_conn: Connection) -> str:
        delivered.append("R1")
        return "R1"

    assert stores.quarantine.complete_release("Q1", request_id, "boss", deliver) == "R1"
    assert stores.quarantine.complete_release("Q1", request_id, "boss", deliver) is None
    entry = stores.quarantine.get("Q1")
    assert entry is not None and entry.status == "released" and entry.released_by == "boss"
    assert delivered == ["R1"]


def test_failed_delivery_leaves_request_pending(stores: SqlStores, settings: Settings) -> None:
    """If the spool refuses the original, the request stays pending for another try."""
    hold_message(stores, settings, "Q1")
    request_id = stores.quarantine.add_request("Q1", "op", "", "")
    assert request_id is not None

    def broken(_conn: Connection) -> str:
        raise OSError("disk full")

    with pytest.raises(OSError):
        stores.quarantine.complete_release("Q1", request_id, "boss", broken)
    entry = stores.quarantine.get("Q1")
    assert entry is not None and entry.status == "release_requested"
    assert entry.requests[0].status == "pending"


def test_audit_log_is_append_only(stores: SqlStores) -> None:
    """Even with direct SQL, audit rows cannot be changed or removed."""
    stores.audit.record(Actor("alice", "operator", "10.0.0.1"), "quarantine.delete", "Q1")
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError), stores.engine.begin() as conn:
            conn.execute(text(statement))
    events = stores.audit.search(AuditQuery())
    assert [(e.actor, e.action, e.target, e.remote) for e in events.items] == [
        ("alice", "quarantine.delete", "Q1", "10.0.0.1")]


def test_tokens_are_stored_hashed_and_revocable(stores: SqlStores) -> None:
    """The plain token is never in the database; a revoked token stops working."""
    info, token = stores.tokens.create(Role.OPERATOR, "yamada")
    with stores.engine.connect() as conn:
        dump = "".join(str(row) for row in conn.execute(text("SELECT * FROM api_tokens")))
    assert token not in dump
    found = stores.tokens.authenticate(token)
    assert found is not None and found.name == "yamada" and found.role is Role.OPERATOR
    assert found.allows(Permission.REQUEST) and not found.allows(Permission.APPROVE)
    assert stores.tokens.authenticate(token + "x") is None
    assert stores.tokens.revoke("yamada")
    assert stores.tokens.authenticate(token) is None
    assert info.name == "yamada"


def test_token_names_are_safe_labels(stores: SqlStores) -> None:
    """Names end up in headers and the audit log: no line breaks, no look-alike actors."""
    assert stores.tokens.create(Role.APPROVER, "山田.taro")[0].name == "山田.taro"
    for bad in ("a\r\nBcc: x@evil", "two words", "x" * 65, "system", "notice-link"):
        with pytest.raises(TokenError):
            stores.tokens.create(Role.ADMIN, bad)
