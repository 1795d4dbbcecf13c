"""The whole operator story through a running `mugaika serve`, real SMTP and real HTTP.

An .exe arrives by SMTP and is held; an operator requests its release, an approver
approves, the downstream sink receives the original; the audit log shows both people.
Tokens are made with the CLI while the server runs, on the same data dir.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ROOT, Gateway, Sink, wait_for_port
from tests.store_helpers import EXE_BYTES, mail_with_attachment

RCPTS = ["clerk@example.lg.jp", "chief@example.lg.jp"]


def _token(gw: Gateway, role: str, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "create", "--role", role, "--name", name],
        cwd=ROOT, env=gw.env, capture_output=True, text=True, timeout=60, check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def _poll(fetch: Callable[[], Any], ready: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value):
            return value
        assert time.monotonic() < deadline, f"not ready after {timeout}s: {value}"
        time.sleep(0.2)


def test_exe_is_held_then_released_with_four_eyes(gateway: Gateway, sink: Sink) -> None:
    """Request by one, approval by another: the original reaches the original recipients."""
    wait_for_port(gateway.api_port, proc=gateway.proc)
    api = httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10)
    op = {"Authorization": f"Bearer {_token(gateway, 'operator', 'yamada')}"}
    boss = {"Authorization": f"Bearer {_token(gateway, 'approver', 'suzuki')}"}
    auditor = {"Authorization": f"Bearer {_token(gateway, 'auditor', 'kansa')}"}
    assert api.get("/api/quarantine").status_code == 401

    raw = mail_with_attachment(subject="請求書", to=", ".join(RCPTS))
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=10) as smtp:
        smtp.sendmail("tanaka@example.com", RCPTS, raw)
    sanitized = sink.wait(1)[0]
    assert EXE_BYTES not in sanitized.data

    listing = _poll(lambda: api.get("/api/quarantine", headers=op).json(),
                    lambda page: page["total"] == 1)
    entry = listing["items"][0]
    assert entry["subject"] == "請求書" and sorted(entry["recipients"]) == sorted(RCPTS)

    requested = api.post(f"/api/quarantine/{entry['id']}/release", headers=op,
                         json={"reason": "経理で必要"})
    assert requested.json()["status"] == "pending"
    own = api.post(f"/api/quarantine/{entry['id']}/release/approve", headers=op)
    assert own.status_code == 403  # an operator cannot approve at all
    approved = api.post(f"/api/quarantine/{entry['id']}/release/approve", headers=boss)
    assert approved.status_code == 200, approved.text

    released = sink.wait(2)[1]
    assert sorted(released.rcpt_tos) == sorted(RCPTS)
    assert released.mail_from == "tanaka@example.com"
    assert released.message["X-Mugaika-Released-By"] == "suzuki"
    [attachment] = [p for p in released.message.walk() if p.get_filename() == "invoice.exe"]
    assert attachment.get_content() == EXE_BYTES

    audit = api.get("/api/audit", headers=auditor).json()["items"]
    who = {(e["actor"], e["action"]) for e in audit if e["target"] == entry["id"]}
    assert {("yamada", "quarantine.release_request"), ("suzuki", "quarantine.release")} <= who

    release_id = approved.json()["queue_id"]
    tracked = _poll(lambda: api.get(f"/api/messages/{release_id}", headers=auditor).json(),
                    lambda m: m.get("status") == "delivered")
    assert tracked["kind"] == "release"
    metrics = api.get("/metrics").text
    assert "mugaika_quarantine_entries 1.0" in metrics
    assert 'mugaika_messages_total{outcome="received"} 1.0' in metrics


def test_cli_approval_next_to_a_running_server_delivers(gateway: Gateway, sink: Sink) -> None:
    """`mugaika quarantine release --approve` in another process reaches the sink."""
    wait_for_port(gateway.api_port, proc=gateway.proc)
    api = httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10)
    op = {"Authorization": f"Bearer {_token(gateway, 'operator', 'yamada')}"}
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=10) as smtp:
        smtp.sendmail("tanaka@example.com", RCPTS[:1], mail_with_attachment())
    sink.wait(1)
    entry = _poll(lambda: api.get("/api/quarantine", headers=op).json(),
                  lambda page: page["total"] == 1)["items"][0]
    assert api.post(f"/api/quarantine/{entry['id']}/release", headers=op).status_code == 200
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "quarantine", "release", entry["id"], "--approve"],
        cwd=ROOT, env=gateway.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    released = sink.wait(2, timeout=20)[1]
    assert released.message["X-Mugaika-Released-By"].startswith("cli:")
    assert released.rcpt_tos == RCPTS[:1]
