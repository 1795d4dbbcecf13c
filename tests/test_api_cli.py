"""`mugaika token …` and `mugaika quarantine …` act on the same data as the API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.custody.audit import AuditQuery
from gateway.custody.stores import SqlStores
from gateway.custody.tokens import Role
from gateway.queue.envelope import Envelope
from gateway.queue.spool import Spool
from gateway.settings import Settings
from tests.store_helpers import FakeClock, hold_message

pytest_plugins = ("tests.store_helpers",)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, db_url: str) -> Settings:
    monkeypatch.setenv("MUGAIKA_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MUGAIKA_DATABASE_URL", db_url)
    monkeypatch.delenv("MUGAIKA_CONFIG", raising=False)
    return settings


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_create_prints_a_working_token_last(
    cli_env: Settings, stores: SqlStores, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last line is the token; the server's store accepts it with the asked role."""
    code, out, _ = _run(capsys, "token", "create", "--role", "approver", "--name", "suzuki")
    assert code == 0
    token = out.strip().splitlines()[-1]
    info = stores.tokens.authenticate(token)
    assert info is not None and info.role is Role.APPROVER and info.name == "suzuki"
    code, _, err = _run(capsys, "token", "create", "--role", "approver", "--name", "suzuki")
    assert code == 1 and "exists already" in err
    assert _run(capsys, "token", "revoke", "suzuki")[0] == 0
    assert stores.tokens.authenticate(token) is None
    code, out, _ = _run(capsys, "token", "list")
    assert "suzuki\tapprover" in out and "revoked" in out


def test_quarantine_list_show_delete(
    cli_env: Settings, stores: SqlStores, capsys: pytest.CaptureFixture[str]
) -> None:
    hold_message(stores, cli_env, "Q1")
    code, out, _ = _run(capsys, "quarantine", "list", "--json")
    assert code == 0
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["id"] == "Q1" and row["reasons"] == ["blocked_type"]
    code, out, _ = _run(capsys, "quarantine", "show", "Q1")
    assert json.loads(out)["parts"][0]["filename"] == "invoice.exe"
    assert _run(capsys, "quarantine", "delete", "Q1")[0] == 0
    code, _, err = _run(capsys, "quarantine", "show", "Q1")
    assert code == 1 and "no such quarantine entry" in err
    [event] = stores.audit.search(AuditQuery()).items
    assert event.action == "quarantine.delete" and event.actor.startswith("cli:")


def test_cli_release_keeps_four_eyes_and_spools_original(
    cli_env: Settings, stores: SqlStores, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI user cannot approve their own request; an API operator's request they can."""
    hold_message(stores, cli_env, "Q1")
    assert _run(capsys, "quarantine", "release", "Q1", "--reason", "test")[0] == 0
    code, _, err = _run(capsys, "quarantine", "release", "Q1", "--approve")
    assert code == 1 and "someone other than its requester" in err
    hold_message(stores, cli_env, "Q2")
    stores.quarantine.add_request("Q2", "yamada", "10.0.0.5", "")
    code, out, _ = _run(capsys, "quarantine", "release", "Q2", "--approve")
    assert code == 0 and "released" in out
    spool = Spool(cli_env.spool_dir)
    assert spool.incoming_ids() == []  # parked in deferred/, due now, for a running server
    [queue_id] = list(spool.due_deferred(time.time()))
    entry = spool.claim(queue_id)
    assert entry is not None
    assert entry.data == stores.quarantine.original("Q2")
    assert entry.envelope.kind == "release"
    headers = dict(entry.envelope.add_headers)
    assert headers["X-Mugaika-Released-By"].startswith("cli:")
    assert headers["X-Mugaika-Release-Requested-By"] == "yamada"


def test_purge_removes_only_expired(
    cli_env: Settings, stores: SqlStores, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entries older than the retention period go; the CLI's clock is the real one."""
    clock.now = clock.now.replace(year=2020)  # held long ago
    hold_message(stores, cli_env, "OLD")
    code, out, _ = _run(capsys, "quarantine", "purge")
    assert code == 0 and "purged 1" in out
    assert stores.quarantine.get("OLD") is None


def test_envelope_roundtrip_of_release_headers(tmp_path: Path) -> None:
    """Release headers survive the spool's JSON envelope."""
    env = Envelope("a@b.jp", ("c@d.jp",), kind="release",
                   add_headers=(("X-Mugaika-Released-By", "suzuki"),))
    spool = Spool(tmp_path)
    queue_id = spool.put(b"Subject: x\r\n\r\nbody\r\n", env)
    entry = spool.claim(queue_id)
    assert entry is not None and entry.envelope.add_headers == env.add_headers
