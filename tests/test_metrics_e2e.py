"""What an operator's Prometheus sees after real mail went through a running gateway."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage

import httpx

from tests.conftest import Gateway, Sink


def _scrape(gw: Gateway) -> str:
    return httpx.get(f"http://127.0.0.1:{gw.api_port}/metrics", timeout=10).text


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_counters_follow_the_mail(gateway: Gateway, sink: Sink) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "staff@example.lg.jp", "m"
    msg.set_content("本文")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 300, maintype="application",
                       subtype="octet-stream", filename="setup.exe")
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail("a@example.com", ["staff@example.lg.jp"], msg.as_bytes())
        client.mail("a@example.com")
        assert client.rcpt("victim@other.example")[0] == 550
    sink.wait(1)
    deadline = time.monotonic() + 10
    while _value(text := _scrape(gateway), 'mugaika_messages_total{outcome="delivered"}') < 1:
        assert time.monotonic() < deadline, "delivery never counted"
        time.sleep(0.2)
    assert _value(text, 'mugaika_messages_total{outcome="received"}') == 1
    assert _value(text, 'mugaika_messages_total{outcome="quarantined"}') == 1
    assert _value(text, 'mugaika_messages_total{outcome="rejected"}') == 1
    assert "mugaika_delivery_delay_seconds_count 1.0" in text
    removed = [line for line in text.splitlines()
               if line.startswith("mugaika_attachments_total{") and 'action="removed"' in line]
    assert removed and float(removed[0].rsplit(" ", 1)[1]) == 1
    assert "alice" not in text and "example.com" not in text  # no per-address labels
