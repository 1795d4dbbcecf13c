"""Issue 18: once a day each recipient with held mail gets one mail listing it, with links."""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway.api import SYSTEM_ACTOR, create_app
from gateway.cli import main
from gateway.custody.audit import Actor, AuditQuery
from gateway.custody.digest import Digest
from gateway.custody.quarantine import QuarantineService
from gateway.custody.stores import SqlStores
from gateway.metrics import Metrics
from gateway.queue.spool import Spool
from gateway.settings import Settings
from tests.api_helpers import RecordingSpool, build_api
from tests.store_helpers import FakeClock, envelope_for, hold_message, mail_with_attachment

pytest_plugins = ("tests.store_helpers", "tests.api_helpers")

A, B, C = "a.sato@example.lg.jp", "b.ito@example.lg.jp", "c.kato@example.lg.jp"


@pytest.fixture
def link_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "release_link_base_url": "https://mugaika.example.lg.jp",
        "release_link_key": SecretStr("digest-test-key"),
    })


def _hold_all(stores: SqlStores, settings: Settings, clock: FakeClock) -> None:
    """Q1 for A; Q2 for A and B (A spelled in capitals); Q3 for B; Q4 for C, who has
    asked for it already (so it is not `held` and C gets no digest)."""
    for qid, rcpts in (("Q1", (A,)), ("Q2", (A.upper(), B)), ("Q3", (B,)), ("Q4", (C,))):
        hold_message(stores, settings, qid, mail_with_attachment(subject=f"件名{qid}"),
                     envelope_for(rcpts=rcpts))
        clock.advance(minutes=5)
    service = QuarantineService(stores, RecordingSpool(), settings)
    service.request_release("Q4", Actor("operator", "operator"))


def _mails(spool: RecordingSpool) -> dict[str, EmailMessage]:
    out = {}
    for raw, envelope in spool.put_calls:
        assert envelope.kind == "notice" and envelope.mail_from == ""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        [rcpt] = envelope.rcpt_tos
        out[rcpt.lower()] = msg
    return out


def _text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _listed(text: str) -> list[str]:
    return re.findall(r"隔離ID: (\w+)", text)


def test_each_recipient_gets_one_mail_with_exactly_their_entries_and_working_links(
    stores: SqlStores, link_settings: Settings, clock: FakeClock
) -> None:
    _hold_all(stores, link_settings, clock)
    spool = RecordingSpool()
    outcome = Digest(stores, spool, link_settings, clock).send(SYSTEM_ACTOR)
    assert outcome.day == "2026-04-01" and outcome.queued is not None  # 18:20 in Tokyo
    assert spool.woken == list(outcome.queued)
    mails = _mails(spool)
    assert sorted(mails) == [A, B]  # C asked already; nobody else has held mail
    assert _listed(_text(mails[A])) == ["Q1", "Q2"] and _listed(_text(mails[B])) == ["Q2", "Q3"]
    text = _text(mails[A])
    assert "2 件" in str(mails[A]["Subject"]) and "件名Q1" in text and "tanaka@example.com" in text
    assert "この種類のファイルは受信できません" in text  # the reason in plain words
    assert "2026-04-01 18:00 (Asia/Tokyo)" in text
    links = re.findall(r"https://mugaika\.example\.lg\.jp/release/\S+", text)
    assert [urlsplit(u).path for u in links] == ["/release/Q1", "/release/Q2"]
    api = build_api(stores, link_settings)
    for url in links:
        page = api.client.get(f"{urlsplit(url).path}?{urlsplit(url).query}")
        assert page.status_code == 200 and "<form" in page.text
    [row] = stores.audit.search(AuditQuery(action="quarantine.digest")).items
    assert (row.actor, row.target, row.detail) == ("system", "2026-04-01",
                                                   {"recipients": 2, "entries": 3})


def test_a_second_run_the_same_day_sends_nothing(
    stores: SqlStores, link_settings: Settings, clock: FakeClock
) -> None:
    _hold_all(stores, link_settings, clock)
    spool = RecordingSpool()
    digest = Digest(stores, spool, link_settings, clock)
    assert digest.send(SYSTEM_ACTOR).queued is not None
    clock.advance(hours=5)  # 23:20 in Tokyo: still the same local day
    again = digest.send(SYSTEM_ACTOR, ignore_hour=True)
    assert again.queued is None and again.reason == "sent already today"
    assert len(spool.put_calls) == 2
    clock.advance(hours=10)  # 09:20 the next day in Tokyo
    assert digest.send(SYSTEM_ACTOR).queued is not None and len(spool.put_calls) == 4


def test_not_before_the_local_hour(stores: SqlStores, link_settings: Settings,
                                   clock: FakeClock) -> None:
    """22:00 UTC is 07:00 the next morning in Tokyo: before 08:00, unless told to."""
    _hold_all(stores, link_settings, clock)
    clock.now = clock.now.replace(hour=22, minute=0)
    spool = RecordingSpool()
    digest = Digest(stores, spool, link_settings, clock)
    early = digest.send(SYSTEM_ACTOR)
    assert early.queued is None and early.day == "2026-04-02" and spool.put_calls == []
    assert digest.send(SYSTEM_ACTOR, ignore_hour=True).queued is not None


def test_two_nodes_at_once_send_once(stores: SqlStores, link_settings: Settings,
                                     clock: FakeClock) -> None:
    """The day's row is the lease: of two nodes checking together, one sends."""
    _hold_all(stores, link_settings, clock)
    spools = [RecordingSpool(), RecordingSpool()]
    digests = [Digest(stores, s, link_settings, clock) for s in spools]
    start = threading.Barrier(2)
    results = []

    def run(digest: Digest) -> None:
        start.wait()
        results.append(digest.send(SYSTEM_ACTOR))

    threads = [threading.Thread(target=run, args=(d,)) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.queued is None for r in results) == [False, True]
    assert sorted(len(s.put_calls) for s in spools) == [0, 2]


def test_without_links_the_digest_says_whom_to_ask(
    stores: SqlStores, settings: Settings, clock: FakeClock
) -> None:
    hold_message(stores, settings, "Q1", envelope=envelope_for(rcpts=(A,)))
    spool = RecordingSpool()
    Digest(stores, spool, settings.model_copy(update={"language": "en"}), clock).send(
        SYSTEM_ACTOR)
    text = _text(_mails(spool)[A])
    assert "quoting its quarantine id" in text and "https://" not in text
    assert "Quarantine id: Q1" in text


def test_cli_digest_now_queues_for_the_running_server(
    monkeypatch: pytest.MonkeyPatch, stores: SqlStores, link_settings: Settings,
    db_url: str, clock: FakeClock, capsys: pytest.CaptureFixture[str],
) -> None:
    """`mugaika quarantine digest --now`: parked in deferred/, due at once; once a day."""
    clock.now = datetime.now(UTC)  # the CLI reads the real clock: held entries must be live
    _hold_all(stores, link_settings, clock)
    monkeypatch.setenv("MUGAIKA_DATA_DIR", str(link_settings.data_dir))
    monkeypatch.setenv("MUGAIKA_DATABASE_URL", db_url)
    monkeypatch.setenv("MUGAIKA_DIGEST_HOUR", "23")
    monkeypatch.delenv("MUGAIKA_CONFIG", raising=False)
    assert main(["quarantine", "digest", "--now"]) == 0
    assert "2 mails queued" in capsys.readouterr().out
    spool = Spool(Path(link_settings.spool_dir))
    due = list(spool.due_deferred(time.time()))
    claimed = [spool.claim(q) for q in due]
    assert sorted(e.envelope.rcpt_tos[0].lower() for e in claimed if e is not None) == [A, B]
    assert main(["quarantine", "digest", "--now"]) == 0
    assert "nothing sent (sent already today)" in capsys.readouterr().out


@pytest.mark.parametrize("enabled", [True, False])
def test_the_server_sends_the_digest_only_when_enabled(
    stores: SqlStores, link_settings: Settings, enabled: bool
) -> None:
    """The API's lifespan runs the digest loop (hour 0: due whenever the test runs);
    off by default."""
    hold_message(stores, link_settings, "Q1", envelope=envelope_for(rcpts=(A,)))
    spool = RecordingSpool()
    update = {"digest_hour": 0, **({"digest_enabled": True} if enabled else {})}
    app = create_app(link_settings.model_copy(update=update), stores, spool,
                     Metrics(version="test"), checks={})
    with TestClient(app):
        deadline = time.monotonic() + (10 if enabled else 1)
        while not spool.woken and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [env.rcpt_tos for _, env in spool.put_calls] == ([(A,)] if enabled else [])
