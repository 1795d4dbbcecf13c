"""The relay end to end over real SMTP on 127.0.0.1: what an operator relies on."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import Gateway, Sink, free_port, journaled_bytes, plain_message


def send(gw: Gateway, data: bytes, rcpts: list[str] | None = None,
         sender: str = "alice@example.com") -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
        return client.sendmail(sender, rcpts or ["staff@example.lg.jp"], data)


def test_mail_arrives_sanitized_with_trace_headers(gateway: Gateway, sink: Sink) -> None:
    """A plain mail reaches the LGWAN side rebuilt, with Received and verdict headers."""
    send(gateway, plain_message(subject="会議の件", body="明日の会議は10時からです。"))
    got = sink.wait(1)[0]
    msg = got.message
    assert got.rcpt_tos == ["staff@example.lg.jp"]
    assert got.mail_from == "alice@example.com"
    assert msg["X-Mugaika-Verdict"] == "clean"
    assert msg["X-Mugaika-Queue-Id"]
    assert "明日の会議は10時からです。" in msg.get_content()
    assert "会議の件" in msg["Subject"]
    received = msg.get_all("Received") or []
    assert any("by mugaika.localdomain (mugaika) with ESMTP id" in r for r in received)


def test_attachment_removed_with_notice_until_converters_exist(gateway: Gateway, sink: Sink) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "staff@example.lg.jp", "x"
    msg.set_content("本文です")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 200, maintype="application",
                       subtype="octet-stream", filename="invoice.exe")
    send(gateway, msg.as_bytes())
    out = sink.wait(1)[0].message
    assert out["X-Mugaika-Verdict"] == "sanitized"
    assert not any(part.get_filename() for part in out.walk())
    text = out.get_content()
    assert "invoice.exe" in text and "本文です" in text
    assert b"MZ\x90" not in sink.received[0].data


def test_queue_id_in_reply_matches_delivered_header(gateway: Gateway, sink: Sink) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("a@example.com")
        client.rcpt("staff@example.lg.jp")
        code, reply = client.data(plain_message())
    assert code == 250 and reply.startswith(b"2.0.0 queued as ")
    queue_id = reply.split()[-1].decode()
    assert sink.wait(1)[0].message["X-Mugaika-Queue-Id"] == queue_id


@pytest.mark.parametrize("rcpt", [
    "user%other.example@example.lg.jp",
    "other.example!user@example.lg.jp",
    '"user@other.example"@example.lg.jp',
    "user@[127.0.0.1]",
    "user@other.example",
    "user@example.lg.jp.evil.example",
])
def test_relay_attempts_refused(gateway: Gateway, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("a@example.com")
        code, reply = client.rcpt(rcpt)
    assert (code, reply[:5]) == (550, b"5.7.1")


def test_address_the_parser_chokes_on_is_a_syntax_error(gateway: Gateway) -> None:
    """`<x@[>` crashes the 3.11 stdlib address parser: the client gets aiosmtpd's answers
    to a malformed address (553 5.1.3), not 451 (which would have it retry for days)."""
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.ehlo()
        assert client.docmd("MAIL FROM:<x@[>")[0] == 553
        assert client.mail("a@example.com")[0] == 250
        assert client.docmd("RCPT TO:<x@[>")[0] == 553
        assert client.rcpt("clerk@example.lg.jp")[0] == 250


def test_too_many_recipients(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("a@example.com")
        codes = [client.rcpt(f"u{i}@example.lg.jp")[0] for i in range(101)]
        code, reply = client.rcpt("one-more@example.lg.jp")
    assert codes[:100] == [250] * 100
    assert codes[100] == 452 and code == 452 and reply.startswith(b"4.5.3")


def test_size_advertised_and_enforced(make_gateway, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(sink.port, MUGAIKA_MAX_MESSAGE_BYTES="20000")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("size") and client.esmtp_features["size"] == "20000"
        code, reply = client.mail("a@example.com", ["SIZE=50000"])
        assert (code, reply[:5]) == (552, b"5.3.4")
        client.rset()
        client.mail("a@example.com")
        client.rcpt("staff@example.lg.jp")
        code, reply = client.data(plain_message(body="x" * 40000))
        assert (code, reply[:5]) == (552, b"5.3.4")


def _greeting(port: int) -> tuple[socket.socket, bytes]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    return conn, conn.recv(200)


def _two_slots(port: int) -> list[socket.socket]:
    """Two accepted connections, once earlier probes' slots are free (bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        pairs = [_greeting(port) for _ in range(2)]
        if all(reply.startswith(b"220 ") for _, reply in pairs):
            return [conn for conn, _ in pairs]
        for conn, _ in pairs:
            conn.close()
        assert time.monotonic() < deadline, "slots of closed connections never freed"
        time.sleep(0.2)


def test_per_client_connection_cap(make_gateway, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(sink.port, MUGAIKA_MAX_CONNECTIONS_PER_CLIENT="2")
    held = _two_slots(gw.smtp_port)
    try:
        third, reply = _greeting(gw.smtp_port)
        third.close()
        assert reply.startswith(b"421 4.7.0")
    finally:
        for conn in held:
            conn.close()
    for conn in _two_slots(gw.smtp_port):  # closing frees the slots again
        conn.close()


def _converse(port: int, script: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.recv(500)
        s.sendall(script)
        chunks = b""
        while b"221 " not in chunks and (chunk := s.recv(4096)):
            chunks += chunk
        return chunks


@pytest.mark.parametrize("terminator", [b"\n.\n", b"\n.\r\n", b"\r.\r"])
def test_smtp_smuggling_yields_one_message(gateway: Gateway, sink: Sink, terminator: bytes) -> None:
    """A fake end-of-data followed by a second transaction stays inside the first message."""
    script = (
        b"EHLO attacker.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<staff@example.lg.jp>\r\n"
        b"DATA\r\nFrom: a@example.com\r\nTo: staff@example.lg.jp\r\nSubject: first\r\n\r\nbody"
        + terminator
        + b"MAIL FROM:<ceo@example.lg.jp>\r\nRCPT TO:<staff@example.lg.jp>\r\nDATA\r\n"
        b"From: ceo@example.lg.jp\r\nSubject: smuggled\r\n\r\npay now\r\n.\r\nQUIT\r\n"
    )
    replies = _converse(gateway.smtp_port, script)
    assert replies.count(b"queued as") == 1
    got = sink.wait(1)
    time.sleep(1.0)
    assert len(sink.received) == 1
    data = got[0].data
    assert b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF reached the output"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR reached the output"
    assert got[0].mail_from == "a@example.com"


def test_internal_error_answers_451_and_nothing_is_lost(gateway: Gateway, sink: Sink) -> None:
    """Spool unwritable → 451 (the client keeps the mail); once fixed, the retry is delivered.

    Both places a message is made durable are broken: tmp/ (spool files) and the journals
    of the gateway's processes (not made yet: nothing was journaled)."""
    spool = gateway.data_dir / "spool"
    tmp, journals = spool / "tmp", [spool / name for name in ("journal", "journal.0", "journal.1")]
    tmp.rmdir()
    for broken in (tmp, *journals):
        broken.write_text("not a directory")
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("a@example.com")
        client.rcpt("staff@example.lg.jp")
        code, reply = client.data(plain_message(body="大事な連絡"))
    assert (code, reply[:5]) == (451, b"4.3.0")
    assert b"Error" not in reply and b"Errno" not in reply
    assert not list((gateway.data_dir / "spool" / "incoming").iterdir())
    for broken in (tmp, *journals):
        broken.unlink()
    tmp.mkdir()
    send(gateway, plain_message(body="大事な連絡"))
    assert "大事な連絡" in sink.wait(1)[0].message.get_content()


def test_kill_9_after_250_then_restart_delivers(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The 250 is a promise: SIGKILL before delivery, restart, and the mail still arrives."""
    port = free_port()  # the downstream is down while the first gateway runs
    gw = make_gateway(port, data_dir=tmp_path / "data")
    send(gw, plain_message(body="停電テスト"))
    gw.kill()
    spool = tmp_path / "data" / "spool"
    areas = [*spool.glob("active*"), spool / "incoming", spool / "deferred", spool / "hold"]
    assert journaled_bytes(spool) or any(any(area.iterdir()) for area in areas), "the message is in the spool"
    sink = Sink(port).start()
    try:
        make_gateway(port, data_dir=tmp_path / "data")
        got = sink.wait(1)
        assert "停電テスト" in got[0].message.get_content()
        time.sleep(1.5)
        assert len(sink.received) == 1
    finally:
        sink.stop()


def test_downstream_down_then_up_delivers(make_gateway) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    gw = make_gateway(port)
    send(gw, plain_message(body="再送テスト"))
    gw.wait_for_spool("deferred")
    sink = Sink(port).start()
    try:
        assert "再送テスト" in sink.wait(1, timeout=30)[0].message.get_content()
        deadline = time.monotonic() + 10
        spool = gw.data_dir / "spool"
        areas = ["deferred", "hold", "incoming", *(p.name for p in spool.glob("active*"))]
        while any(gw.spool_has(a) for a in areas):
            assert time.monotonic() < deadline, "spool not emptied after delivery"
            time.sleep(0.1)
    finally:
        sink.stop()


def test_permanent_refusal_bounces_dsn_to_sender(gateway: Gateway, sink: Sink) -> None:
    sink.handler.rcpt_reply = lambda addr: "550 5.1.1 no such user" if addr.startswith("gone") else None
    send(gateway, plain_message(to="gone@example.lg.jp"), rcpts=["gone@example.lg.jp"],
         sender="alice@example.com")
    dsn = sink.wait(1)[0]
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == ["alice@example.com"]
    msg = dsn.message
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "Final-Recipient: rfc822; gone@example.lg.jp" in text
    assert "Status: 5.1.1" in text and "Action: failed" in text
    gateway.wait_for_spool("failed")  # the bounced mail is kept for operators


def test_null_sender_bounce_gets_no_dsn(gateway: Gateway, sink: Sink) -> None:
    sink.handler.rcpt_reply = lambda addr: "550 5.1.1 no such user" if addr.startswith("staff") else None
    send(gateway, plain_message(), sender="")
    gateway.wait_for_spool("failed")
    time.sleep(0.5)
    assert sink.received == []


def test_swaks_client(gateway: Gateway, sink: Sink) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{gateway.smtp_port}", "--to", "staff@example.lg.jp",
         "--from", "bob@example.com", "--header", "Subject: swaks test", "--body", "swaks body"],
        capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout.decode(errors="replace")[-500:]
    assert b"queued as" in result.stdout
    assert "swaks body" in sink.wait(1)[0].message.get_content()
