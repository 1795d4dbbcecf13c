"""Operators review, download, delete and release quarantined mail through the API."""

from __future__ import annotations

import email

from gateway.custody.stores import SqlStores
from gateway.settings import Settings
from tests.api_helpers import Api, build_api
from tests.store_helpers import envelope_for, hold_message, mail_with_attachment

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")


def _hold(api: Api, settings: Settings, queue_id: str = "Q1", **mail: str) -> bytes:
    raw = mail_with_attachment(**mail)
    env = envelope_for(rcpts=("clerk@example.lg.jp", "chief@example.lg.jp"))
    hold_message(api.stores, settings, queue_id, raw, env)
    return raw


def test_list_and_detail_show_what_and_why(api: Api, settings: Settings) -> None:
    """The list carries id, sender, recipients, subject, time and reasons; detail the parts."""
    _hold(api, settings, "Q1", subject="見積書")
    _hold(api, settings, "Q2", subject="議事録")
    listing = api.client.get("/api/quarantine", headers=api.as_("auditor")).json()
    assert listing["total"] == 2
    item = next(i for i in listing["items"] if i["id"] == "Q1")
    assert item["sender"] == "tanaka@example.com"
    assert item["recipients"] == ["clerk@example.lg.jp", "chief@example.lg.jp"]
    assert item["subject"] == "見積書" and item["reasons"] == ["blocked_type"]
    assert item["status"] == "held" and item["time"]
    found = api.client.get("/api/quarantine", params={"subject": "議事"},
                           headers=api.as_("auditor")).json()
    assert [i["id"] for i in found["items"]] == ["Q2"]
    detail = api.client.get("/api/quarantine/Q1", headers=api.as_("auditor")).json()
    assert [(p["filename"], p["reason"]) for p in detail["parts"]] == [
        ("invoice.exe", "blocked_type")]
    assert api.client.get("/api/quarantine/NOPE", headers=api.as_("auditor")).status_code == 404


def test_download_is_exact_and_audited(api: Api, settings: Settings) -> None:
    """The original comes back byte for byte, and the audit log names who fetched it."""
    raw = _hold(api, settings)
    response = api.client.get("/api/quarantine/Q1/original", headers=api.as_("operator"))
    assert response.status_code == 200 and response.content == raw
    assert response.headers["content-type"] == "message/rfc822"
    audit = api.client.get("/api/audit", headers=api.as_("auditor")).json()["items"]
    assert [(e["actor"], e["action"], e["target"]) for e in audit] == [
        ("operator", "quarantine.download", "Q1")]
    assert audit[0]["remote"] == "testclient"


def test_four_eyes_release_delivers_original_to_original_recipients(
    api: Api, settings: Settings
) -> None:
    """Requested by one person, approved by another: the untouched original is spooled."""
    raw = _hold(api, settings)
    requested = api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"),
                                json={"reason": "needed for the tender"})
    assert requested.status_code == 200 and requested.json()["status"] == "pending"
    assert api.spool.put_calls == []
    again = api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"))
    assert again.status_code == 409
    approved = api.client.post("/api/quarantine/Q1/release/approve", headers=api.as_("approver"))
    assert approved.status_code == 200, approved.json()
    assert approved.json()["status"] == "released"
    release_log = api.client.get(f"/api/messages/{approved.json()['queue_id']}",
                                 headers=api.as_("auditor")).json()
    assert release_log["kind"] == "release" and release_log["status"] == "queued"
    assert api.spool.woken == [approved.json()["queue_id"]]  # the worker is told after commit
    [(spooled, envelope)] = api.spool.put_calls
    assert spooled == raw
    assert envelope.kind == "release"
    assert envelope.rcpt_tos == ("clerk@example.lg.jp", "chief@example.lg.jp")
    assert envelope.mail_from == "tanaka@example.com"
    assert ("X-Mugaika-Released-By", "approver") in envelope.add_headers
    detail = api.client.get("/api/quarantine/Q1", headers=api.as_("auditor")).json()
    assert detail["status"] == "released" and detail["released_by"] == "approver"
    assert detail["requests"][0]["requested_by"] == "operator"
    twice = api.client.post("/api/quarantine/Q1/release/approve", headers=api.as_("approver2"))
    assert twice.status_code == 409 and len(api.spool.put_calls) == 1
    actions = [(e["actor"], e["action"]) for e in api.client.get(
        "/api/audit", headers=api.as_("auditor")).json()["items"]]
    assert ("operator", "quarantine.release_request") in actions
    assert ("approver", "quarantine.release") in actions


def test_requester_cannot_approve_own_request(api: Api, settings: Settings) -> None:
    """An admin may request and approve, but never both for the same release."""
    _hold(api, settings)
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("admin"))
    own = api.client.post("/api/quarantine/Q1/release/approve", headers=api.as_("admin"))
    assert own.status_code == 403 and own.json()["code"] == "four_eyes"
    assert api.spool.put_calls == []
    other = api.client.post("/api/quarantine/Q1/release/approve", headers=api.as_("admin2"))
    assert other.status_code == 200 and len(api.spool.put_calls) == 1


def test_one_step_release_when_approval_is_off(stores: SqlStores, settings: Settings) -> None:
    """With release_requires_approval=false the operator's request releases at once."""
    api = build_api(stores, settings.model_copy(update={"release_requires_approval": False}))
    _hold(api, settings)
    response = api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"))
    assert response.status_code == 200 and response.json()["status"] == "released"
    [(_, envelope)] = api.spool.put_calls
    assert ("X-Mugaika-Released-By", "operator") in envelope.add_headers


def test_approve_without_request_is_a_conflict(api: Api, settings: Settings) -> None:
    _hold(api, settings)
    response = api.client.post("/api/quarantine/Q1/release/approve", headers=api.as_("approver"))
    assert response.status_code == 409 and api.spool.put_calls == []


def test_delete_removes_entry_and_is_audited(api: Api, settings: Settings) -> None:
    _hold(api, settings)
    assert api.client.delete("/api/quarantine/Q1", headers=api.as_("operator")).status_code == 204
    assert api.client.get("/api/quarantine/Q1", headers=api.as_("auditor")).status_code == 404
    assert api.client.delete("/api/quarantine/Q1", headers=api.as_("operator")).status_code == 404
    audit = api.client.get("/api/audit", params={"action": "quarantine.delete"},
                           headers=api.as_("auditor")).json()
    assert audit["total"] == 1 and audit["items"][0]["actor"] == "operator"


def test_message_log_search_and_detail(api: Api, settings: Settings) -> None:
    """Tracking: find a mail by recipient and see each part's fate."""
    _hold(api, settings)
    api.stores.messages.record_delivery("Q1", "delivered", 1, "250 ok")
    found = api.client.get("/api/messages", params={"recipient": "chief@"},
                           headers=api.as_("auditor")).json()
    assert [m["queue_id"] for m in found["items"]] == ["Q1"]
    assert found["items"][0]["status"] == "delivered"
    none = api.client.get("/api/messages", params={"status": "bounced"},
                          headers=api.as_("auditor")).json()
    assert none["total"] == 0
    detail = api.client.get("/api/messages/Q1", headers=api.as_("auditor")).json()
    assert detail["verdict"] == "sanitized"
    assert {(a["filename"], a["action"]) for a in detail["actions"]} >= {("invoice.exe", "removed")}
    assert api.client.get("/api/messages/Q9", headers=api.as_("auditor")).status_code == 404


def test_metrics_show_quarantine_and_outcomes(api: Api, settings: Settings) -> None:
    """Prometheus text with the postfix_exporter-style names; gauges read at scrape time."""
    _hold(api, settings)
    api.metrics.message("received")
    api.metrics.message("quarantined")
    api.metrics.attachment("application/x-dosexec", "removed")
    api.metrics.conversion("pdf", 0.3)
    text = api.client.get("/metrics").text
    assert 'mugaika_messages_total{outcome="received"} 1.0' in text
    assert 'mugaika_messages_total{outcome="bounced"} 0.0' in text
    assert "mugaika_quarantine_entries 1.0" in text
    assert 'mugaika_attachments_total{action="removed",kind="application/x-dosexec"} 1.0' in text
    assert 'mugaika_conversion_duration_seconds_count{converter="pdf"} 1.0' in text
    assert 'mugaika_build_info{python=' in text
    assert "tanaka" not in text and "clerk" not in text


def test_released_message_parses_like_the_original(api: Api, settings: Settings) -> None:
    """What the recipient gets is the sender's mail, attachment included."""
    _hold(api, settings)
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"))
    api.client.post("/api/quarantine/Q1/release/approve", headers=api.as_("approver"))
    [(spooled, _)] = api.spool.put_calls
    msg = email.message_from_bytes(spooled)
    names = [p.get_filename() for p in msg.walk() if p.get_filename()]
    assert names == ["invoice.exe"]
