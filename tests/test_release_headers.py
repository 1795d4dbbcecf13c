"""The headers mugaika adds on release (who approved it) are folded with CRLF only."""

from __future__ import annotations

import email
import email.policy

from gateway.queue.worker import _with_headers


def test_long_japanese_approver_is_folded_with_crlf_and_reads_back() -> None:
    name = "情報政策課 " * 12 + "鈴木"
    out = _with_headers(b"Subject: x\r\n\r\nbody\r\n", (("X-Mugaika-Released-By", name),))
    assert b"\n" not in out.replace(b"\r\n", b""), "a bare LF would reach the LGWAN side"
    assert out.count(b"\r\n ") >= 2, "a value this long is folded"
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg["X-Mugaika-Released-By"] == " ".join(name.split())
    assert msg["Subject"] == "x"
