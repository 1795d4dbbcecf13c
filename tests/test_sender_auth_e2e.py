"""Sender authentication through a real `mugaika serve` (issue 21), against a real DNS
server on 127.0.0.1 (tests/dns_helpers.py) serving SPF, DKIM and DMARC records.

What the recipient sees: an authenticated partner's mail arrives with the results in
`Authentication-Results`; a forged one (a body changed after signing, under p=reject)
and a spoof of our own domain are held whole with a notice that says so; a DNS that does
not answer is `temperror` and delivers; an existing ARC chain is validated; with a
sealing key, the rebuilt message carries an ARC seal that verifies. The message log is
searchable by the results through the API.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import dkim
import httpx

from tests.conftest import ROOT, Gateway, Sink
from tests.dns_helpers import Key, ZoneServer, new_rsa_key, publish, signed

pytest_plugins = ("tests.dns_helpers",)
PARTNER = "partner.example.jp"


def _zone(dns: ZoneServer, key: Key) -> None:
    publish(dns, key, PARTNER)
    dns.add(PARTNER, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add(f"_dmarc.{PARTNER}", "TXT", "v=DMARC1; p=reject")
    dns.add("example.lg.jp", "TXT", "v=spf1 -all")
    dns.add("_dmarc.example.lg.jp", "TXT", "v=DMARC1; p=reject")


def _mail(sender: str, subject: str, body: str = "会議資料を送付します。\n") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "staff@example.lg.jp", subject
    msg["Date"], msg["Message-ID"] = "Mon, 07 Dec 2026 10:00:00 +0900", f"<{subject}@x.jp>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def _send(gw: Gateway, mail_from: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as client:
        client.sendmail(mail_from, ["staff@example.lg.jp"], raw)


def _by_subject(sink: Sink, count: int) -> dict[str, email.message.EmailMessage]:
    got = sink.wait(count, timeout=90)
    msgs = [email.message_from_bytes(r.data, policy=email.policy.default) for r in got]
    return {str(m["Subject"]).split("] ")[-1]: m for m in msgs}  # type: ignore[misc]


def _text(msg: email.message.EmailMessage) -> str:
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def _token(gw: Gateway) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway", "token", "create", "--role",
                           "auditor", "--name", "auth-audit"], cwd=ROOT, env=gw.env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def _searched(gw: Gateway, auth: str, count: int) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {_token(gw)}"}
    deadline = time.monotonic() + 30
    while True:
        items = httpx.get(f"http://127.0.0.1:{gw.api_port}/api/messages", params={"auth": auth},
                          headers=headers, timeout=10).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return list(items)
        time.sleep(0.3)


def test_real_partner_forgeries_and_a_silent_dns(
        make_gateway: Callable[..., Gateway], sink: Sink, dns_server: ZoneServer) -> None:
    key = new_rsa_key()
    _zone(dns_server, key)
    dns_server.silence("slow.example")
    dns_server.silence("_dmarc.slow.example")
    gw = make_gateway(sink.port, MUGAIKA_DNS_SERVERS=dns_server.servers[0],
                      MUGAIKA_DNS_TIMEOUT_SECONDS="0.5")
    _send(gw, f"tanto@{PARTNER}", signed(_mail(f"担当 <tanto@{PARTNER}>", "real"), key, PARTNER))
    forged = signed(_mail(f"tanto@{PARTNER}", "forged"), key, PARTNER).replace(
        "会議資料".encode(), "振込先変更".encode())
    _send(gw, "bounce@elsewhere.example", forged)
    _send(gw, "x@evil.example", _mail("市長 <mayor@example.lg.jp>", "spoof"))
    _send(gw, "a@slow.example", _mail("a@slow.example", "slow"))
    got = _by_subject(sink, 4)

    real = got["real"]
    assert real["X-Mugaika-Verdict"] == "clean"
    results = real["Authentication-Results"]
    assert results.startswith("mugaika.localdomain;") and "spf=pass" in results
    assert "dkim=pass" in results and "dmarc=pass" in results
    assert "会議資料" in _text(real) and "なりすまし" not in _text(real)

    assert got["forged"]["X-Mugaika-Verdict"] == "quarantined"
    assert "dmarc=fail" in got["forged"]["Authentication-Results"]
    assert "差出人のドメイン認証（DMARC）に失敗しました" in _text(got["forged"])
    assert "振込先変更" not in _text(got["forged"])  # held whole: only the notice arrives
    assert "dmarc-fail" in got["forged"]["X-Mugaika-Sanitized"].split()

    assert got["spoof"]["X-Mugaika-Verdict"] == "quarantined"
    assert "spoofed" in got["spoof"]["X-Mugaika-Sanitized"].split()
    assert "組織のドメインを名乗っていますが" in _text(got["spoof"])

    slow = got["slow"]  # the DNS never answered: temperror, delivered as usual
    assert slow["X-Mugaika-Verdict"] == "clean"
    assert "temperror" in slow["Authentication-Results"]

    failed = _searched(gw, "dmarc=fail", 2)
    assert {str(m["subject"]) for m in failed} == {"forged", "spoof"}
    assert all("dmarc=fail" in str(m["auth"]) for m in failed)

    # Again, with the records cached: now checked on the event loop (from the cache
    # alone), the same verdicts.
    _send(gw, f"tanto@{PARTNER}", signed(_mail(f"担当 <tanto@{PARTNER}>", "real2"), key, PARTNER))
    _send(gw, "bounce@elsewhere.example", forged.replace(b"forged", b"forged2"))
    _send(gw, "x@evil.example", _mail("市長 <mayor@example.lg.jp>", "spoof2"))
    again = _by_subject(sink, 7)
    assert again["real2"]["X-Mugaika-Verdict"] == "clean"
    assert "dkim=pass" in again["real2"]["Authentication-Results"]
    assert "dmarc=pass" in again["real2"]["Authentication-Results"]
    for subject in ("forged2", "spoof2"):
        assert again[subject]["X-Mugaika-Verdict"] == "quarantined"
        assert "dmarc=fail" in again[subject]["Authentication-Results"]


def test_an_arc_chain_is_read_and_the_rebuilt_message_is_sealed(
        tmp_path: Path, make_gateway: Callable[..., Gateway], sink: Sink,
        dns_server: ZoneServer) -> None:
    """A mailing list's ARC seal on the way in is validated (arc=pass); our own seal on
    the way out verifies against our published key (the LGWAN side can trust it)."""
    partner, forwarder, ours = new_rsa_key(), new_rsa_key(), new_rsa_key()
    _zone(dns_server, partner)
    publish(dns_server, forwarder, "list.example.jp", "arc")
    publish(dns_server, ours, "example.lg.jp", "gw")
    original = signed(_mail(f"tanto@{PARTNER}", "via-list"), partner, PARTNER)
    upstream = b"Authentication-Results: list.example.jp; dkim=pass header.d=partner.example.jp\r\n"
    sealed_in = b"".join(dkim.arc_sign(upstream + original, b"arc", b"list.example.jp",
                                       forwarder.private, b"list.example.jp")) + upstream + original
    key_file = tmp_path / "seal.pem"
    key_file.write_bytes(ours.private)
    gw = make_gateway(sink.port, MUGAIKA_DNS_SERVERS=dns_server.servers[0],
                      MUGAIKA_ARC_SEAL_KEY=str(key_file), MUGAIKA_ARC_SEAL_SELECTOR="gw",
                      MUGAIKA_ARC_SEAL_DOMAIN="example.lg.jp")
    _send(gw, "list-bounces@list.example.jp", sealed_in)
    [received] = sink.wait(1, timeout=90)
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    assert "arc=pass" in msg["Authentication-Results"]
    assert msg["ARC-Seal"] is not None and "d=example.lg.jp" in msg["ARC-Seal"]

    def dns_txt(name: bytes, timeout: int = 5) -> bytes | None:
        records = dns_server.records.get((name.decode().rstrip(".").lower(), "TXT"))
        return records[0][0].encode() if records else None

    body_start = received.data.index(b"ARC-Seal:")  # our Received: line is outside the seal
    result, _, reason = dkim.arc_verify(received.data[body_start:], dnsfunc=dns_txt)
    assert result == dkim.CV_Pass, reason
