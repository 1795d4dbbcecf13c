"""The `make bench` runner: the table shows both result shapes, missing modules are named,
unknown names are a usage error, and latest.json records the machine."""

from __future__ import annotations

import json

import bench.__main__ as runner


def test_table_shows_ratio_rows_and_foreign_figures():
    text = runner.table({
        "gateway": {"status": "ran", "value": 69.0, "unit": "msgs/s", "baseline": 831.0,
                    "baseline_name": "bare aiosmtpd", "ratio": 0.083, "target": ">= 0.5",
                    "pass": False},
        "office": {"status": "ran", "warm_vs_cold_ratio": 9.81, "documents": ["a", "b"]},
        "pdf": {"status": "not present"},
    })
    lines = text.splitlines()
    assert "69.00 msgs/s" in lines[1] and "831" in lines[1] and "NO" in lines[1]
    assert "warm_vs_cold_ratio = 9.81" in text and "documents" not in text
    assert lines[-1].split()[:3] == ["pdf", "not", "present"]


def test_unknown_benchmark_is_a_usage_error(capsys):
    assert runner.main(["nope"]) == 2
    assert "known" in capsys.readouterr().err


def test_missing_module_is_reported_and_machine_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "MODULES", ("absent_for_test",))
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    assert runner.main([]) == 0
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["results"] == {"absent_for_test": {"status": "not present"}}
    assert report["machine"]["cores"] >= 1 and report["machine"]["python"].startswith("3.")
