"""Tenants (issue 19): each municipality's domains, downstream and policy, from the TOML file.

One message to three municipalities' staff arrives at SMTP once and leaves as three
copies: each to its own LGWAN-side server, each sanitized under its own policy.
"""

from __future__ import annotations

import email
import email.policy
import errno
import json
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.queue.envelope import Envelope
from gateway.queue.spool import Spool
from gateway.relay.ingress import REPLY_NO_STORAGE, IngressHandler
from gateway.relay.smtpd import Session, Transaction
from gateway.settings import Settings, load_settings
from gateway.tenancy import Tenancy
from tests.conftest import ROOT, Gateway, Sink
from tests.convert_helpers import japanese_pdf

#: The shape the issue gives, verbatim: an inline table over two lines (TOML 1.1).
TENANTS = """
[[tenants]]
id = "katsuragi"                       # [a-z0-9-]+
name = "葛城市"
domains = ["city.katsuragi.example.lg.jp"]
downstream = { host = "127.0.0.1", port = {katsuragi_port} }
policy = { office = "render", pdf = "render", archive = "render", image = "render",
           first_contact_days = 90, first_contact_exempt = ["partner.example.jp"] }

[[tenants]]
id = "gose"
name = "御所市"
domains = ["city.gose.example.lg.jp"]
downstream = { host = "127.0.0.1", port = {gose_port} }
policy = { pdf = "quarantine", subject_tag = "[外部メール]", links = "remove" }
"""


def write_config(tmp_path: Path, katsuragi_port: int = 2600, gose_port: int = 2601) -> Path:
    path = tmp_path / "mugaika.toml"
    path.write_text(TENANTS.replace("{katsuragi_port}", str(katsuragi_port))
                    .replace("{gose_port}", str(gose_port)), "utf-8")
    return path


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config),
                           "check-config"], check=False, cwd=ROOT, capture_output=True,
                          text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(config.parent)})


def test_the_issues_toml_shape_loads_and_check_config_prints_each_policy(
        tmp_path: Path) -> None:
    done = check_config(write_config(tmp_path))
    assert done.returncode == 0, done.stderr
    tenants = {t["id"]: t for t in json.loads(done.stdout)["tenants"]}
    assert tenants["katsuragi"]["name"] == "葛城市"
    assert tenants["katsuragi"]["policy"]["treatment_pdf"] == "render"
    assert tenants["gose"]["policy"]["treatment_pdf"] == "quarantine"
    assert tenants["gose"]["policy"]["subject_tag"] == "[外部メール]"
    assert tenants["gose"]["policy"]["downstream_port"] == 2601
    assert tenants["gose"]["policy"]["subject_tag"] != tenants["katsuragi"]["policy"][
        "subject_tag"]


@pytest.mark.parametrize(("change", "complaint"), [
    (lambda t: t.replace('["city.gose.example.lg.jp"]', '["city.katsuragi.example.lg.jp"]'),
     "belongs to tenants 'katsuragi' and 'gose'"),
    (lambda t: t.replace('id = "gose"', 'id = "katsuragi"'), "is used twice"),
    (lambda t: t.replace('id = "gose"', 'id = "Gose City"'), "should match pattern"),
    (lambda t: t.replace('pdf = "quarantine"', 'pdf = "shred"'), "render"),
    (lambda t: t + 'accepted_domains = ["city.gose.example.lg.jp"]\n', "belongs to tenants"),
    (lambda t: t.replace("policy = { pdf", "policy = { colour = 1, pdf"), "colour"),
])
def test_a_broken_tenant_file_is_refused_with_a_reason(
        tmp_path: Path, change: Callable[[str], str], complaint: str) -> None:
    config = write_config(tmp_path)
    text = change(config.read_text("utf-8"))
    if "accepted_domains" in text:  # a top-level key must come before the tables
        text = 'accepted_domains = ["city.gose.example.lg.jp"]\n' + text.replace(
            'accepted_domains = ["city.gose.example.lg.jp"]\n', "")
    config.write_text(text, "utf-8")
    done = check_config(config)
    assert done.returncode == 2
    assert complaint in done.stderr and "Traceback" not in done.stderr


def test_no_tenants_is_exactly_the_old_gateway(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    tenancy = Tenancy(settings)
    assert tenancy.accepted_domains == {"example.lg.jp"}
    assert tenancy.settings_for(tenancy.tenant_of("a@example.lg.jp")) is settings


def mail_with_pdf(to: list[str]) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "kensyo@partner.example.jp", ", ".join(to), "通知"
    msg["Message-ID"] = "<tenants-1@partner.example.jp>"
    msg.set_content("各市町村の担当者様\n資料を送付します。\n控え: https://files.partner.example.jp/a\n")
    msg.add_attachment(japanese_pdf(1), maintype="application", subtype="pdf",
                       filename="資料.pdf")
    return msg.as_bytes()


def parts(received: Any) -> list[str]:
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    return [p.get_content_type() for p in msg.walk() if not p.is_multipart()]


def text(received: Any) -> str:
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def test_one_message_to_three_tenants_leaves_as_three_copies(
        tmp_path: Path, make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    katsuragi, gose = Sink().start(), Sink().start()
    try:
        config = write_config(tmp_path, katsuragi.port, gose.port)
        gw = make_gateway(sink.port, MUGAIKA_CONFIG=str(config))
        rcpts = ["staff@example.lg.jp", "a@city.katsuragi.example.lg.jp",
                 "b@city.gose.example.lg.jp", "c@city.gose.example.lg.jp"]
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as client:
            client.ehlo()
            client.mail("kensyo@partner.example.jp")
            for rcpt in rcpts:
                assert client.rcpt(rcpt)[0] == 250
            code, reply = client.data(mail_with_pdf(rcpts))
        assert code == 250, reply
        [default] = sink.wait(1, timeout=90)
        [k] = katsuragi.wait(1, timeout=90)
        [g] = gose.wait(1, timeout=90)
        assert default.rcpt_tos == ["staff@example.lg.jp"]
        assert k.rcpt_tos == ["a@city.katsuragi.example.lg.jp"]
        assert sorted(g.rcpt_tos) == ["b@city.gose.example.lg.jp", "c@city.gose.example.lg.jp"]
        # Katsuragi gets the PDF rebuilt from its page images (the sender is a partner, exempt
        # from its first-contact rule); Gose's policy holds it.
        assert "application/pdf" in parts(k) and str(k.message["Subject"]) == "[無害化] 通知"
        assert "application/pdf" not in parts(g)
        assert str(g.message["Subject"]) == "[外部メール] 通知"
        assert "組織の方針により" in text(g)
        assert "控え: hxxps://files.partner.example.jp/a" in text(k)
        assert "控え: [リンク削除]" in text(g) and "files.partner" not in text(g)
        counts = _tenant_counts(gw)
        assert {tenant: counts.get((tenant, "delivered")) for tenant in ("default", "katsuragi", "gose")} == {
            "default": 1.0, "katsuragi": 1.0, "gose": 1.0}, counts
        assert counts.get(("gose", "quarantined")) == 1.0, counts
        held = _families(gw)["mugaika_tenant_quarantine_entries"]
        assert {s.labels["tenant"]: s.value for s in held.samples} == {
            "default": 1.0, "katsuragi": 1.0, "gose": 1.0}  # each copy's original
    finally:
        katsuragi.stop()
        gose.stop()


def _families(gw: Gateway) -> dict[str, Metric]:
    text = httpx.get(f"http://127.0.0.1:{gw.api_port}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def _tenant_counts(gw: Gateway) -> dict[tuple[str, str], float]:
    """mugaika_tenant_messages_total by (tenant, outcome), from the group's /metrics."""
    deadline = time.monotonic() + 20
    while True:  # the delivered counts follow the sink's 250 by a moment
        family = _families(gw).get("mugaika_tenant_messages")
        counts = {(s.labels["tenant"], s.labels["outcome"]): s.value
                  for s in (family.samples if family else []) if s.name.endswith("_total")}
        delivered = [k for k in counts if k[1] == "delivered"]
        if len(delivered) >= 3 or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def test_a_split_is_spooled_all_or_none(tmp_path: Path) -> None:
    """A full disk after the first tenant's copy: 452, and that copy is taken back (the
    client sends again; a copy left behind would arrive twice)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    config = write_config(tmp_path)
    settings = load_settings(config)
    spool = Spool(tmp_path / "spool")
    real_put = spool.put
    calls: list[str] = []

    def put_then_fill(raw: bytes, envelope: Envelope, queue_id: str | None = None,
                      **kw: Any) -> str:
        calls.append(str(queue_id))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(raw, envelope, queue_id, **kw)

    spool.put = put_then_fill  # type: ignore[method-assign]
    handler = IngressHandler(settings, spool, ThreadPoolExecutor(1))
    session, txn = Session(peer="192.0.2.1"), Transaction()
    txn.mail_from = "a@example.com"
    txn.rcpt_tos = ["x@city.katsuragi.example.lg.jp", "y@city.gose.example.lg.jp"]
    txn.content = b"Subject: t\r\n\r\nbody\r\n"
    reply = asyncio.run(handler.handle_DATA(session, txn))
    assert reply == REPLY_NO_STORAGE and len(calls) == 2
    assert spool.incoming_ids() == []


def test_a_global_treatment_removes_a_kind_and_the_notice_says_why() -> None:
    """MUGAIKA_TREATMENT_IMAGE=remove: the image is not delivered; the recipient reads why."""
    import io

    from PIL import Image

    from tests.bodies_helpers import deliver

    png = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(png, "PNG")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "staff@example.lg.jp", "写真"
    msg.set_content("写真です。\n")
    msg.add_attachment(png.getvalue(), maintype="image", subtype="png", filename="photo.png")
    result, out = deliver(msg.as_bytes(), treatment_image="remove")
    [action] = [a for a in result.report.actions if a.filename == "photo.png"]  # type: ignore[attr-defined]
    assert action.code == "policy_remove" and action.action.value == "removed"
    delivered = email.message_from_bytes(out, policy=email.policy.default)
    assert all(p.get_content_type() != "image/png" for p in delivered.walk())
    body = delivered.get_body(preferencelist=("plain",))
    assert body is not None and "組織の方針により" in str(body.get_content())


@pytest.mark.parametrize(("detected", "kind"), [
    ("application/pdf", "pdf"), ("application/vnd.openxmlformats-officedocument"
                                 ".wordprocessingml.document", "office"),
    ("application/zip", "archive"), ("image/jpeg", "image"), ("text/csv", "text"),
    ("application/x-unknown", "unknown"),
])
def test_content_kinds(detected: str, kind: str) -> None:
    from gateway.pipeline.attachments import kind_of

    assert kind_of(detected) == kind


def _log_has(gw: Gateway, text: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while gw.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} not in the log"
        time.sleep(0.2)


def test_sighup_applies_a_new_tenant_and_refuses_a_broken_file(
        tmp_path: Path, make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    """A tenant added while the gateway runs: its mail is accepted after SIGHUP, a session
    opened before goes on, and a broken file changes nothing."""
    import signal

    katsuragi, gose = Sink().start(), Sink().start()
    try:
        config = write_config(tmp_path, katsuragi.port, gose.port)
        full = config.read_text("utf-8")
        config.write_text(full[:full.index('[[tenants]]\nid = "gose"')], "utf-8")
        gw = make_gateway(sink.port, MUGAIKA_CONFIG=str(config), MUGAIKA_PROCESSES="2")
        assert gw.proc is not None
        before = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60)
        before.ehlo()
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@example.com", ["b@city.gose.example.lg.jp"], b"Subject: 1\r\n\r\nx")
        config.write_text(full, "utf-8")
        gw.proc.send_signal(signal.SIGHUP)
        _log_has(gw, "config_reloaded", 2)  # both processes of the group
        before.sendmail("a@example.com", ["b@city.gose.example.lg.jp"], b"Subject: 2\r\n\r\nx")
        before.quit()
        assert gose.wait(1, timeout=90)[0].rcpt_tos == ["b@city.gose.example.lg.jp"]

        config.write_text(full.replace('id = "gose"', 'id = "katsuragi"'), "utf-8")
        gw.proc.send_signal(signal.SIGHUP)
        _log_has(gw, "config_reload_refused", 2)
        assert "is used twice" in gw.log_text()
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as client:
            client.sendmail("a@example.com", ["c@city.gose.example.lg.jp"], b"Subject: 3\r\n\r\nx")
        assert len(gose.wait(2, timeout=90)) == 2
    finally:
        katsuragi.stop()
        gose.stop()


def test_a_reload_sent_while_the_members_start_kills_none_of_them(
        tmp_path: Path, sink: Sink) -> None:
    """`systemctl reload` right after `start`: a member still importing used to die of the
    forwarded SIGHUP (its default action). Now it waits, blocked, for the handler."""
    import signal

    config = write_config(tmp_path, sink.port, sink.port)
    gw = Gateway(tmp_path / "gw", sink.port, MUGAIKA_CONFIG=str(config), MUGAIKA_PROCESSES="2")
    gw.data_dir.mkdir(parents=True)
    with open(gw.log, "ab") as logfile:
        gw.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT,
                                   env=gw.env, stdout=logfile, stderr=subprocess.STDOUT)
    try:
        _log_has(gw, "group_prepared")  # the supervisor's handler is in place
        for _ in range(10):  # while the members import (a second or two)
            gw.proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        _log_has(gw, '"serving"', 2)
        _log_has(gw, "config_reloaded", 2)
        time.sleep(1)
        assert "member_died" not in gw.log_text()
    finally:
        gw.stop()


def test_first_contact_holds_attachments_of_a_new_sender_only(
        make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    """m-FILTER's 90-day rule: the first mail of a sender has its PDF held (the notice says
    why); the next one, and a partner's first one, arrive rendered."""
    gw = make_gateway(sink.port, MUGAIKA_FIRST_CONTACT_DAYS="90",
                      MUGAIKA_FIRST_CONTACT_EXEMPT="partner.example.jp")

    def send(sender: str, count: int) -> Any:
        raw = mail_with_pdf(["staff@example.lg.jp"]).replace(
            b"kensyo@partner.example.jp", sender.encode())
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=60) as client:
            client.sendmail(sender, ["staff@example.lg.jp"], raw)
        return sink.wait(count, timeout=90)[count - 1]

    first = send("new@unknown.example.com", 1)
    assert "application/pdf" not in parts(first)
    assert "初めて受信する送信元" in text(first)
    second = send("new@unknown.example.com", 2)
    assert "application/pdf" in parts(second)
    partner = send("tanto@mail.partner.example.jp", 3)
    assert "application/pdf" in parts(partner)
