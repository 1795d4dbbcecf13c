"""Issue 18: an approver denies a release with a reason; the recipient who asked hears back.

API cases run on each backend with the spool double (`RecordingSpool`); one case runs a
real `mugaika serve` delivering to the sink: a recipient files through the signed link,
an approver denies (and approves another), the recipient's mail arrives.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from urllib.parse import urlsplit

import httpx
import pytest
from alembic import command
from pydantic import SecretStr
from sqlalchemy import inspect, text

from gateway.cli import main
from gateway.custody.audit import Actor, AuditQuery
from gateway.custody.quarantine import QuarantineService
from gateway.custody.stores import SqlStores
from gateway.pipeline.release_links import LINK_ACTOR, LINK_ROLE, release_link
from gateway.queue.envelope import Envelope
from gateway.settings import Settings
from gateway.store.engine import alembic_config
from tests.api_helpers import Api, RecordingSpool, build_api
from tests.conftest import Gateway, Sink, wait_for_port
from tests.store_helpers import envelope_for, hold_message, mail_with_attachment
from tests.test_api_e2e import _poll, _token

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")

RCPTS = ("clerk@example.lg.jp", "chief@example.lg.jp")
LINK_KEY = "s3cret-key-for-tests"


@pytest.fixture
def link_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "release_link_base_url": "https://mugaika.example.lg.jp/",
        "release_link_key": SecretStr(LINK_KEY),
    })


@pytest.fixture
def link_api(stores: SqlStores, link_settings: Settings) -> Iterator[Api]:
    api = build_api(stores, link_settings)
    _hold(api, link_settings)
    yield api


def _hold(api: Api, settings: Settings, queue_id: str = "Q1") -> None:
    hold_message(api.stores, settings, queue_id, mail_with_attachment(subject="見積書の件"),
                 envelope_for(rcpts=RCPTS))


def _by_link(api: Api, settings: Settings, entry_id: str = "Q1") -> httpx.Response:
    url = release_link(settings, entry_id)
    assert url is not None
    parts = urlsplit(url)
    response: httpx.Response = api.client.post(f"{parts.path}?{parts.query}")
    return response


def _notices(spool: RecordingSpool) -> list[tuple[EmailMessage, Envelope]]:
    out = []
    for raw, envelope in spool.put_calls:
        if envelope.kind == "notice":
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append((msg, envelope))
    return out


def _text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _actions(api: Api) -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in api.stores.audit.search(AuditQuery(limit=100)).items]


def test_requester_cannot_deny_own_request(api: Api, settings: Settings) -> None:
    """Four eyes as for approve: 403, audited, and the request stays pending."""
    _hold(api, settings)
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("admin"))
    own = api.client.post("/api/quarantine/Q1/release/deny", headers=api.as_("admin"),
                          json={"reason": "要らない"})
    assert own.status_code == 403 and own.json()["code"] == "four_eyes"
    assert ("admin", "quarantine.deny_refused") in _actions(api)
    detail = api.client.get("/api/quarantine/Q1", headers=api.as_("auditor")).json()
    assert detail["status"] == "release_requested"
    assert detail["requests"][0]["status"] == "pending"


def test_deny_records_the_decision_and_its_audit_row(api: Api, settings: Settings) -> None:
    """Denied by another person: request and entry say so, the reason is kept, and a
    staff request mails nobody."""
    _hold(api, settings)
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"),
                    json={"reason": "取引先から依頼"})
    denied = api.client.post("/api/quarantine/Q1/release/deny", headers=api.as_("approver"),
                             json={"reason": "実行ファイルは受け取れません"})
    assert denied.status_code == 200, denied.text
    assert denied.json() == {"id": "Q1", "status": "denied", "request_id": 1, "queue_id": None}
    detail = api.client.get("/api/quarantine/Q1", headers=api.as_("auditor")).json()
    assert detail["status"] == "denied"
    [request] = detail["requests"]
    assert (request["status"], request["decided_by"], request["decision_reason"]) == (
        "denied", "approver", "実行ファイルは受け取れません")
    assert request["decided_at"] is not None
    audit = api.client.get("/api/audit", params={"action": "quarantine.release_deny"},
                           headers=api.as_("auditor")).json()["items"]
    assert [(e["actor"], e["target"], e["detail"]["reason"], e["detail"]["notified"])
            for e in audit] == [("approver", "Q1", "実行ファイルは受け取れません", [])]
    assert api.spool.put_calls == []
    listed = api.client.get("/api/quarantine", params={"status": "denied"},
                            headers=api.as_("auditor")).json()
    assert [i["id"] for i in listed["items"]] == ["Q1"]
    for route in ("deny", "approve"):  # decided: nothing is pending any more
        again = api.client.post(f"/api/quarantine/Q1/release/{route}",
                                headers=api.as_("approver2"), json={"reason": "x"})
        assert again.status_code == 409, route


def test_deny_needs_a_reason_a_pending_request_and_the_approve_permission(
    api: Api, settings: Settings
) -> None:
    _hold(api, settings)
    url = "/api/quarantine/Q1/release/deny"
    assert api.client.post(url, headers=api.as_("approver"),
                           json={"reason": "x"}).status_code == 409  # nothing pending
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"))
    for body in (None, {}, {"reason": ""}, {"reason": "  \n "}, {"reason": "あ" * 1001},
                 {"reason": "a\x00b"}):
        response = api.client.post(url, headers=api.as_("approver"), json=body)
        assert response.status_code == 422, body
    assert api.client.post(url, headers=api.as_("operator"),
                           json={"reason": "x"}).status_code == 403  # no APPROVE permission
    assert api.client.post("/api/quarantine/NOPE/release/deny", headers=api.as_("approver"),
                           json={"reason": "x"}).status_code == 404
    assert api.client.post(url, headers=api.as_("approver"),
                           json={"reason": "あ" * 1000}).status_code == 200


def test_link_request_denied_tells_each_recipient_why_in_japanese(
    link_api: Api, link_settings: Settings
) -> None:
    """One mail per recipient (a Bcc recipient must not be shown to the others), from the
    postmaster and the null sender, with the held mail's subject and the reason."""
    assert _by_link(link_api, link_settings).status_code == 200
    denied = link_api.client.post("/api/quarantine/Q1/release/deny",
                                  headers=link_api.as_("approver"),
                                  json={"reason": "差出人に確認したところ不要とのこと"})
    assert denied.status_code == 200, denied.text
    notices = _notices(link_api.spool)
    assert [env.rcpt_tos for _, env in notices] == [(r,) for r in RCPTS]
    for msg, env in notices:
        assert env.mail_from == "" and env.extra == {"notice": "denied", "quarantine_id": "Q1"}
        assert msg["To"] == env.rcpt_tos[0] and msg["From"] == "mugaika <postmaster@example.lg.jp>"
        assert "却下" in str(msg["Subject"]) and msg["Auto-Submitted"] == "auto-generated"
        body = _text(msg)
        assert "却下されました" in body and "見積書の件" in body
        assert "差出人に確認したところ不要とのこと" in body and "Q1" in body
    logged = [link_api.stores.messages.get(q) for q in link_api.spool.woken]
    assert [m.kind for m in logged if m is not None] == ["notice", "notice"]
    audit = link_api.stores.audit.search(AuditQuery(action="quarantine.release_deny")).items
    assert audit[0].detail["notified"] == list(RCPTS)


def test_link_request_approved_releases_and_tells_the_recipients(
    link_api: Api, link_settings: Settings
) -> None:
    """The original goes out, and each recipient hears why it comes; the approver's
    reason is kept with the decision and in the audit row."""
    _by_link(link_api, link_settings)
    approved = link_api.client.post("/api/quarantine/Q1/release/approve",
                                    headers=link_api.as_("approver"),
                                    json={"reason": "取引先に確認済み"})
    assert approved.status_code == 200, approved.text
    kinds = [env.kind for _, env in link_api.spool.put_calls]
    assert kinds == ["release", "notice", "notice"]
    assert link_api.spool.woken[0] == approved.json()["queue_id"]
    assert len(link_api.spool.woken) == 3
    for msg, _env in _notices(link_api.spool):
        assert "承認" in str(msg["Subject"])
        assert "取引先に確認済み" in _text(msg) and "見積書の件" in _text(msg)
    [row] = link_api.stores.audit.search(AuditQuery(action="quarantine.release")).items
    assert row.detail["reason"] == "取引先に確認済み"
    entry = link_api.stores.quarantine.get("Q1")
    assert entry is not None and entry.requests[0].decision_reason == "取引先に確認済み"


def test_staff_approval_without_a_reason_mails_nobody(api: Api, settings: Settings) -> None:
    _hold(api, settings)
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"))
    assert api.client.post("/api/quarantine/Q1/release/approve",
                           headers=api.as_("approver")).status_code == 200
    assert [env.kind for _, env in api.spool.put_calls] == ["release"]
    entry = api.stores.quarantine.get("Q1")
    assert entry is not None and entry.requests[0].decision_reason is None


def test_english_and_iso_2022_jp_follow_the_notice_settings(
    stores: SqlStores, link_settings: Settings
) -> None:
    english = link_settings.model_copy(update={"language": "en",
                                               "output_charset": "iso-2022-jp"})
    api = build_api(stores, english)
    _hold(api, english)
    _by_link(api, english)
    api.client.post("/api/quarantine/Q1/release/deny", headers=api.as_("approver"),
                    json={"reason": "理由 reason"})
    msg, _ = _notices(api.spool)[0]
    assert "was denied" in str(msg["Subject"])
    assert msg.get_body(("plain",))["Content-Type"].params["charset"] == "iso-2022-jp"  # type: ignore[index]
    assert "Your request for the held mail below was denied" in _text(msg)
    assert "理由 reason" in _text(msg)


def test_a_denied_entry_may_be_asked_again_by_staff_not_by_link(
    link_api: Api, link_settings: Settings
) -> None:
    """The link does not reopen a decision; staff can correct a mistaken denial."""
    _by_link(link_api, link_settings)
    link_api.client.post("/api/quarantine/Q1/release/deny", headers=link_api.as_("approver"),
                         json={"reason": "不要"})
    again = _by_link(link_api, link_settings)
    assert again.status_code == 409 and "却下" in again.text
    url = release_link(link_settings, "Q1")
    assert url is not None
    page = link_api.client.get(urlsplit(url).path + "?" + urlsplit(url).query)
    assert page.status_code == 200 and "却下" in page.text and "<form" not in page.text
    staff = link_api.client.post("/api/quarantine/Q1/release", headers=link_api.as_("operator"))
    assert staff.status_code == 200 and staff.json()["status"] == "pending"
    approved = link_api.client.post("/api/quarantine/Q1/release/approve",
                                    headers=link_api.as_("approver"))
    assert approved.status_code == 200
    assert len(_notices(link_api.spool)) == 2  # the denial's; the staff request mails nobody


class _RefusingSpool(RecordingSpool):
    """A spool that refuses mugaika's own notices (a full disk, say)."""

    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None) -> str:
        if envelope.kind == "notice":
            raise OSError("no space left on device")
        return super().put(raw, envelope, queue_id)


def test_a_notice_that_cannot_be_spooled_undoes_the_decision(
    stores: SqlStores, link_settings: Settings
) -> None:
    """Notice and decision commit together: no denial (nor audit row) without its mail."""
    service = QuarantineService(stores, _RefusingSpool(), link_settings)
    hold_message(stores, link_settings, "Q1", envelope=envelope_for(rcpts=RCPTS))
    service.request_release("Q1", Actor(LINK_ACTOR, LINK_ROLE, "192.0.2.9"), force_approval=True)
    with pytest.raises(OSError):
        service.deny("Q1", Actor("approver", "approver", "test"), "不要")
    entry = stores.quarantine.get("Q1")
    assert entry is not None and entry.status == "release_requested"
    assert entry.requests[0].status == "pending"
    assert stores.audit.search(AuditQuery(action="quarantine.release_deny")).total == 0


def test_cli_denies_and_approves_with_reasons(
    monkeypatch: pytest.MonkeyPatch, stores: SqlStores, settings: Settings, db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MUGAIKA_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MUGAIKA_DATABASE_URL", db_url)
    monkeypatch.delenv("MUGAIKA_CONFIG", raising=False)
    api = build_api(stores, settings)
    for qid in ("Q1", "Q2"):
        _hold(api, settings, qid)
        api.client.post(f"/api/quarantine/{qid}/release", headers=api.as_("operator"))
    assert main(["quarantine", "deny", "Q1", "--reason", "不要です"]) == 0
    assert main(["quarantine", "release", "Q2", "--approve", "--reason", "確認済み"]) == 0
    assert main(["quarantine", "deny", "Q1", "--reason", "二度目"]) == 1  # nothing pending
    assert "Q1: denied" in capsys.readouterr().out
    q1, q2 = stores.quarantine.get("Q1"), stores.quarantine.get("Q2")
    assert q1 is not None and q2 is not None
    assert (q1.status, q1.requests[0].decision_reason) == ("denied", "不要です")
    assert (q2.status, q2.requests[0].decision_reason) == ("released", "確認済み")


def test_migration_0002_goes_down_and_up_again(stores: SqlStores, api: Api,
                                               settings: Settings) -> None:
    """Down to 0001 a denied entry is held again (0001 knows no denial); up again works."""
    _hold(api, settings)
    api.client.post("/api/quarantine/Q1/release", headers=api.as_("operator"))
    api.client.post("/api/quarantine/Q1/release/deny", headers=api.as_("approver"),
                    json={"reason": "不要"})
    config = alembic_config()
    with stores.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    with stores.engine.connect() as conn:
        assert "digest_runs" not in inspect(conn).get_table_names()
        columns = {c["name"] for c in inspect(conn).get_columns("release_requests")}
        assert "decision_reason" not in columns
        assert conn.execute(text("SELECT status FROM quarantine_entries")).scalar() == "held"
    with stores.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    entry = stores.quarantine.get("Q1")
    assert entry is not None and entry.requests[0].decision_reason is None


def test_recipient_hears_back_through_a_running_gateway(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """Real SMTP and HTTP: a recipient asks through the link for two held mails; one is
    denied, one approved; the sink receives the Japanese answers and the original."""
    gw = make_gateway(sink.port, MUGAIKA_RELEASE_LINK_BASE_URL="https://gw.example.lg.jp",
                               MUGAIKA_RELEASE_LINK_KEY=LINK_KEY)
    wait_for_port(gw.api_port, proc=gw.proc)
    api = httpx.Client(base_url=f"http://127.0.0.1:{gw.api_port}", timeout=10)
    boss = {"Authorization": f"Bearer {_token(gw, 'approver', 'suzuki')}"}
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as smtp:
        for subject in ("見積書", "議事録"):
            smtp.sendmail("tanaka@example.com", ["clerk@example.lg.jp"],
                          mail_with_attachment(subject=subject))
    sink.wait(2)
    items = _poll(lambda: api.get("/api/quarantine", headers=boss).json(),
                  lambda page: page["total"] == 2)["items"]
    ids = {i["subject"]: i["id"] for i in items}
    link_settings = Settings(release_link_base_url="https://gw.example.lg.jp",
                             release_link_key=SecretStr(LINK_KEY))
    for entry_id in ids.values():
        url = urlsplit(release_link(link_settings, entry_id) or "")
        assert api.post(f"{url.path}?{url.query}").status_code == 200
    deny = api.post(f"/api/quarantine/{ids['見積書']}/release/deny", headers=boss,
                    json={"reason": "実行ファイルのため受け取れません"})
    assert deny.status_code == 200, deny.text
    approve = api.post(f"/api/quarantine/{ids['議事録']}/release/approve", headers=boss,
                       json={"reason": "差出人に確認済み"})
    assert approve.status_code == 200, approve.text
    arrived = sink.wait(5)[2:]
    notices = [r for r in arrived if r.mail_from == "<>"]  # the null sender, as aiosmtpd has it
    assert len(notices) == 2 and all(r.rcpt_tos == ["clerk@example.lg.jp"] for r in notices)
    texts = {str(r.message["Subject"]): _text(r.message) for r in notices}
    [denial] = [t for s, t in texts.items() if "却下" in s]
    assert "見積書" in denial and "実行ファイルのため受け取れません" in denial
    [approval] = [t for s, t in texts.items() if "承認" in s]
    assert "議事録" in approval and "差出人に確認済み" in approval
    [released] = [r for r in arrived if r.mail_from == "tanaka@example.com"]
    assert released.message["X-Mugaika-Released-By"] == "suzuki"
