"""Issue 16: a leading mbox `From sender date` line is the envelope, not the start of the body.

Exports and mbox files put it before the header (68 of 875 real mails in public corpora);
before this, the recipient got the raw header fields and escape-stripped JIS (`$BK\\J8(B`)
as body text.
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
from pathlib import Path

from gateway.pipeline.parse import parse
from tests.bodies_helpers import b_word, base_headers, deliver, delivered_message, message
from tests.conftest import ROOT

MBOX_LINE = b"From x@y Mon Jan  1 00:00:00 2024\r\n"
BODY = "本文です。会議は明日１０時からです。"
SUBJECT = "会議のご案内"
RECEIVED = (b"Received: from mta.example.com ([192.0.2.1])\r\n\tby mugaika.localdomain"
            b" with ESMTP id Q1 for <staff@example.lg.jp>; Mon, 1 Jan 2024 00:00:00 +0900\r\n")


def iso2022jp_mail() -> bytes:
    body = BODY.encode("iso2022_jp")
    return message(base_headers(subject=b_word(SUBJECT, "ISO-2022-JP"),
                                Content_Type="text/plain; charset=ISO-2022-JP",
                                Content_Transfer_Encoding="7bit"), body)


def assert_read_as_mail(raw: bytes) -> None:
    """What the recipient sees: the subject and the Japanese text, no header lines."""
    result, _ = deliver(raw)
    assert "mbox_from_line" in result.report.defects  # type: ignore[attr-defined]
    msg = delivered_message(raw)
    assert msg["Subject"] == f"[無害化] {SUBJECT}"
    assert msg["From"] == "Sender <sender@example.com>"
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert BODY in text
    for leaked in ("x@y", "Subject:", "Content-Type", "$B", "\ufffd"):
        assert leaked not in text


def test_iso2022jp_mail_after_an_mbox_from_line_keeps_subject_and_body() -> None:
    """`mugaika sanitize` of an mbox export: the line goes, the header parses normally."""
    assert_read_as_mail(MBOX_LINE + iso2022jp_mail())


def test_mbox_from_line_after_our_received_line_in_the_relay() -> None:
    """In the relay, ingress writes its Received line in front of what the client sent."""
    assert_read_as_mail(RECEIVED + MBOX_LINE + iso2022jp_mail())


def test_the_mbox_line_is_never_delivered() -> None:
    """Not in the body, not in a header: the envelope line is the sender's, not content."""
    msg = delivered_message(RECEIVED + MBOX_LINE + iso2022jp_mail())
    seen = [str(value) for _, value in msg.items()]
    seen += [part.get_content() for part in msg.walk() if part.get_content_maintype() == "text"]
    assert seen and not [text for text in seen if "x@y" in text or "Jan  1" in text]


def test_sanitize_command_reports_the_line_and_delivers_the_mail(tmp_path: Path) -> None:
    src, out, report = tmp_path / "in.eml", tmp_path / "out.eml", tmp_path / "r.json"
    src.write_bytes(MBOX_LINE + iso2022jp_mail())
    done = subprocess.run([sys.executable, "-m", "gateway", "sanitize", str(src), "-o", str(out),
                           "--report", str(report)], cwd=ROOT, capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "mbox_from_line" in json.loads(report.read_text(encoding="utf-8"))["defects"]
    msg = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == f"[無害化] {SUBJECT}"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and BODY in body.get_content()


def test_a_from_field_with_space_before_the_colon_is_a_field() -> None:
    """`From : a@b` (obsolete syntax) is the From header, not an envelope line."""
    parsed = parse(b"From : Sender <a@example.com>\r\nSubject: s\r\n\r\nbody\r\n")
    assert parsed.header("From") == "Sender <a@example.com>"
    assert "mbox_from_line" not in parsed.defects


def test_from_line_in_the_body_stays_text() -> None:
    """Only the line before the header is the envelope; in the body it is the sender's text."""
    parsed = parse(message(base_headers(), b"From here on, see below.\r\n"))
    assert parsed.leaves[0].payload == b"From here on, see below.\n"
    assert "mbox_from_line" not in parsed.defects
