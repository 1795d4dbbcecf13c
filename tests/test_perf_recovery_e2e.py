"""End to end: a sanitized output that a power loss tore is remade from the original.

A real `mugaika serve` sanitizes a mail while the downstream is down, so its output waits
unsynced in the spool; the gateway is killed with SIGKILL, the output is cut short as a
power loss could leave it, and a restarted gateway must still deliver the mail, whole
and once.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Gateway, Sink, free_port, plain_message


def _outputs(spool: Path) -> list[Path]:
    areas = [spool / "incoming", spool / "deferred", *spool.glob("active*")]
    return [p for area in areas for p in area.iterdir() if p.name.endswith(".out")]


def test_torn_output_after_kill_9_is_remade_and_delivered_once(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    port = free_port()  # the downstream is down while the first gateway runs
    data = tmp_path / "data"
    gw = make_gateway(port, data_dir=data)
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
        client.sendmail("alice@example.com", ["staff@example.lg.jp"],
                        plain_message(subject="停電", body="引き裂かれた出力の再生成テスト"))
    gw.wait_for_spool("deferred")
    gw.kill()
    spool = data / "spool"
    [output] = _outputs(spool)
    [original] = list((spool / "hold").iterdir())
    assert output.name == f"{original.name}.out"
    blob = output.read_bytes()
    output.write_bytes(blob[:len(blob) // 2])  # the power loss: half the data on disk
    sink = Sink(port).start()
    try:
        make_gateway(port, data_dir=data)
        [got] = sink.wait(1, timeout=30)
        assert "引き裂かれた出力の再生成テスト" in got.message.get_content()
        assert got.message["X-Mugaika-Queue-Id"] == original.name
        time.sleep(1.5)
        assert len(sink.received) == 1, "remade once, delivered once"
        deadline = time.monotonic() + 10
        while list((spool / "hold").iterdir()) or _outputs(spool):
            assert time.monotonic() < deadline, "spool not emptied after delivery"
            time.sleep(0.1)
    finally:
        sink.stop()
