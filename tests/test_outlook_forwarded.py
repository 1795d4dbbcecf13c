"""Forwarded mail (message/rfc822) runs through the whole pipeline again."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from gateway.pipeline.forwarded import sanitize_forwarded
from gateway.pipeline.parse import Leaf
from gateway.pipeline.report import ActionKind
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings

EXE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 56 + b"This program cannot be run in DOS mode"


def _forwarded_with_exe() -> bytes:
    inner = EmailMessage()
    inner["From"] = "attacker@example.com"
    inner["To"] = "staff@example.lg.jp"
    inner["Subject"] = "請求書の送付"
    inner.set_content("請求書を添付します。ご確認ください。")
    inner.add_attachment(EXE, maintype="application", subtype="octet-stream",
                         filename="請求書.exe")
    return inner.as_bytes()


def _leaf(payload: bytes) -> Leaf:
    return Leaf(part="2", content_type="message/rfc822", filename="転送メール.eml",
                disposition="attachment", charset=None, payload=payload)


def test_forwarded_mail_with_an_executable_arrives_as_a_clean_eml() -> None:
    settings = Settings(language="ja")
    outcome = sanitize_forwarded(_leaf(_forwarded_with_exe()), "Q1", settings, sanitize)
    (eml,) = outcome.outputs
    assert eml.filename == "転送メール.eml" and eml.content_type == "message/rfc822"
    assert b"MZ\x90" not in eml.data and b"TVqQ" not in eml.data  # raw or base64 of "MZ\x90"
    rebuilt = email.message_from_bytes(eml.data, policy=email.policy.default)
    assert rebuilt["Subject"] == "[無害化] 請求書の送付"
    body = rebuilt.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "請求書.exe" in text and "削除しました" in text  # the inner notice says so
    assert "請求書を添付します。" in text
    assert [p.get_filename() for p in rebuilt.iter_attachments()] == []


def test_the_report_and_quarantine_cover_the_inner_parts() -> None:
    forwarded = _forwarded_with_exe()
    outcome = sanitize_forwarded(_leaf(forwarded), "Q1", Settings(), sanitize)
    own, *nested = outcome.actions
    assert own.part == "2" and own.action is ActionKind.CONVERTED
    assert own.outputs == ("転送メール.eml",)
    exe = next(a for a in nested if a.filename == "請求書.exe")
    assert exe.part == "2/2" and exe.action is ActionKind.REMOVED and exe.quarantined
    held = {h.part: h for h in outcome.held}
    assert held["2"].data == forwarded
    assert held["2/2"].data == EXE


def test_inline_policy_gives_text_with_headers_notice_and_body() -> None:
    settings = Settings(forward_output="inline", language="en")
    outcome = sanitize_forwarded(_leaf(_forwarded_with_exe()), "Q1", settings, sanitize)
    text = outcome.outputs[0].data.decode()
    assert outcome.outputs[0].filename == "転送メール.txt"
    assert "Subject: 請求書の送付" in text
    assert "From: attacker@example.com" in text
    # The notice's wording is the notice module's; what matters is the line for the exe.
    assert any("請求書.exe" in line and "removed" in line for line in text.splitlines())
    assert text.rstrip().endswith("ご確認ください。")


def test_nesting_beyond_the_depth_budget_is_held_not_recursed() -> None:
    forwarded = _forwarded_with_exe()
    outcome = sanitize_forwarded(_leaf(forwarded), "Q1", Settings(forward_max_depth=0), sanitize)
    (action,) = outcome.actions
    assert action.action is ActionKind.REMOVED and action.code == "limit_exceeded"
    assert outcome.outputs == () and outcome.held[0].data == forwarded


def test_the_inner_pipeline_is_injectable_and_gets_a_smaller_depth_budget() -> None:
    """The attachment stage passes a pipeline bound to its warm converter context."""
    from gateway.pipeline.message import Sanitized

    calls: list[int] = []

    def pipeline(raw: bytes, queue_id: str, settings: Settings) -> Sanitized:
        calls.append(settings.forward_max_depth)
        return sanitize(raw, queue_id, settings)

    outcome = sanitize_forwarded(_leaf(_forwarded_with_exe()), "Q1", Settings(), pipeline)
    assert calls == [2]
    assert outcome.outputs[0].filename == "転送メール.eml"
