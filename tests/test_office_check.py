"""`mugaika office-check` tells an operator whether LibreOffice works here."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway import office_cli
from gateway.settings import Settings

pytestmark = pytest.mark.slow


def test_office_check_converts_the_japanese_probe_in_the_sandbox(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    office_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["office-check"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["sandboxed"] and report["japanese_text"]
    assert report["japanese_fonts"] > 0 and report["startup_seconds"] > 0


def test_office_check_fails_with_a_reason_when_libreoffice_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(office_cli, "OfficeConfig", starved_config)
    report = office_cli.check(Settings())
    assert report["ok"] is False and report["error"] == "sandbox_failure"


def starved_config(**kw: object) -> object:
    """OfficeConfig with an address-space cap soffice cannot start under."""
    from converters.office_pool import OfficeConfig

    return OfficeConfig(**kw, memory_bytes=96 * 1024 * 1024)  # type: ignore[arg-type]
