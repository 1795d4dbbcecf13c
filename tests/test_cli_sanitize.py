"""`mugaika sanitize` and `mugaika check-config`: the offline tools an operator scripts."""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from tests.conftest import ROOT, plain_message


def mugaika(*args: str, env: dict[str, str] | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})},
                          check=False)


def test_sanitize_writes_output_and_report(tmp_path: Path) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.lg.jp", "見積書"
    msg.set_content("見積書を送ります。")
    msg.add_attachment(b"\x7fELF\x02\x01\x01" + b"\x00" * 100, maintype="application",
                       subtype="octet-stream", filename="tool")
    src = tmp_path / "in.eml"
    src.write_bytes(msg.as_bytes())
    out, report = tmp_path / "out.eml", tmp_path / "r.json"
    result = mugaika("sanitize", str(src), "-o", str(out), "--report", str(report))
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["verdict"] == "sanitized"
    assert {"actions", "defects", "verdict"} <= data.keys()
    fates = {a["filename"]: a["action"] for a in data["actions"]}
    assert fates["tool"] == "removed"
    for action in data["actions"]:
        assert {"part", "filename", "declared_type", "detected_type", "action", "reason",
                "outputs"} <= action.keys()
    assert b"\x7fELF" not in out.read_bytes()
    rebuilt = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert isinstance(rebuilt, EmailMessage)
    body = rebuilt.get_body(("plain",))
    assert body is not None and "見積書を送ります。" in body.get_content()


def test_sanitize_to_stdout(tmp_path: Path) -> None:
    result = mugaika("sanitize", "-", stdin=plain_message(body="標準出力"))
    assert result.returncode == 0
    assert b"X-Mugaika-Verdict: clean" in result.stdout


def test_sanitize_exit_codes(tmp_path: Path) -> None:
    assert mugaika("sanitize", str(tmp_path / "missing.eml")).returncode == 1
    assert mugaika("sanitize").returncode == 2
    assert mugaika("no-such-command").returncode == 2


def test_check_config_prints_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "mugaika.toml"
    cfg.write_text('smtp_port = 2600\naccepted_domains = ["city.example.lg.jp"]\n')
    env = {"MUGAIKA_DATABASE_URL": "postgresql://u:secret@db/mugaika", "MUGAIKA_WORKERS": "3"}
    result = mugaika("--config", str(cfg), "check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["smtp_port"] == 2600 and shown["workers"] == 3
    assert shown["accepted_domains"] == ["city.example.lg.jp"]
    assert "secret" not in result.stdout.decode()


def test_check_config_rejects_invalid(tmp_path: Path) -> None:
    result = mugaika("check-config", env={"MUGAIKA_SMTP_PORT": "not-a-port"})
    assert result.returncode == 2
    assert b"smtp_port" in result.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("no_such_setting = 1\n")
    assert mugaika("--config", str(cfg), "check-config").returncode == 2


#: What only `serve` and the admin commands need: the database layer, the API, and the
#: converters' parsers (which belong in the sandbox anyway).
HEAVY = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "extract_msg", "oletools", "libarchive",
         "pypdfium2", "gateway.custody", "gateway.api", "gateway.queue", "gateway.relay")


def _imported(*args: str, stdin: bytes | None = None) -> set[str]:
    """The top-level modules a `mugaika` command imported (`python -X importtime`)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "gateway", *args],
                            cwd=ROOT, input=stdin, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.decode().splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def test_quick_commands_import_only_what_they_need() -> None:
    """--help, check-config and sanitize of a text mail start without the heavy layers."""
    small = plain_message("本文だけのメール")
    for args, stdin in ((("--help",), None), (("check-config",), None),
                        (("sanitize", "-"), small), (("token", "--help"), None)):
        heavy = {m for m in _imported(*args, stdin=stdin)
                 if m.split(".")[0] in HEAVY or m.startswith(HEAVY)}
        if args[0] == "token":  # the admin commands do need the database layer
            assert "sqlalchemy" in heavy and "fastapi" not in heavy
        else:
            assert heavy == set(), f"mugaika {' '.join(args)} imported {sorted(heavy)}"
