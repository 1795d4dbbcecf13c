"""Whole messages through sanitize + rebuild: renderings delivered, dangers held, rest intact."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage

import pypdfium2 as pdfium
import pytest

from gateway.pipeline.attachments import AttachmentContext, policy_from_settings
from gateway.pipeline.message import Sanitized
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.report import ActionKind, Verdict
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.convert_helpers import (
    encrypted_pdf,
    hostile_registry,
    japanese_pdf,
    mail,
    pe_bytes,
    photo_jpeg,
)

MiB = 1024 * 1024
SETTINGS = Settings(converter_timeout_seconds=3, converter_memory_bytes=256 * MiB, workers=2,
                    archive_max_depth=2)


@pytest.fixture(scope="module")
def ctx() -> Iterator[AttachmentContext]:
    with AttachmentContext.from_settings(SETTINGS) as context:
        yield context


@pytest.fixture(scope="module")
def hostile_ctx() -> Iterator[AttachmentContext]:
    with AttachmentContext.from_settings(SETTINGS, registry=hostile_registry()) as context:
        yield context


def _delivered(s: Sanitized) -> EmailMessage:
    msg = email.message_from_bytes(rebuild(s, SETTINGS), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _attachments(msg: EmailMessage) -> dict[str, bytes]:
    out = {}
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[str(part.get_filename())] = payload
    return out


def test_mixed_mail_is_converted_and_dangers_held(ctx: AttachmentContext) -> None:
    raw = mail([
        ("お知らせ.pdf", "application/pdf", japanese_pdf(2)),
        ("invoice.pdf", "application/pdf", pe_bytes()),
        ("請求書\u202etxt.exe", "text/plain", b"looks like text\n"),
        ("名簿.csv", "text/csv", "氏名,金額\r\n=cmd(),1\r\n".encode()),
        ("photo.jpg", "image/jpeg", photo_jpeg()),
    ])
    s = sanitize(raw, "Q1", SETTINGS, ctx)
    by_name = {a.filename: a for a in s.report.actions}
    assert s.report.verdict is Verdict.SANITIZED
    assert by_name["お知らせ.pdf"].action is ActionKind.CONVERTED
    assert by_name["お知らせ.pdf"].outputs == ("お知らせ.pdf", "お知らせ.txt")
    assert by_name["お知らせ.pdf"].pages == 2
    pe = by_name["invoice.pdf"]
    assert (pe.action, pe.code, pe.detected_type) == (
        ActionKind.REMOVED, "blocked_type", "application/x-dosexec")
    assert pe.quarantined and not pe.releasable
    trick = by_name["請求書txt.exe"]  # the RTLO is gone from the name shown to staff
    assert trick.code == "deceptive_name" and trick.action is ActionKind.REMOVED
    held = {h.part: h for h in s.held}
    assert held[pe.part].data == pe_bytes() and held[pe.part].reason == "blocked_type"

    msg = _delivered(s)
    files = _attachments(msg)
    assert set(files) == {"お知らせ.pdf", "お知らせ.txt", "名簿.csv", "photo.jpg"}
    assert len(pdfium.PdfDocument(files["お知らせ.pdf"])) == 2
    assert "市役所からのお知らせ" in files["お知らせ.txt"].decode()
    assert "'=cmd()" in files["名簿.csv"].decode("utf-8-sig")
    assert pe_bytes() not in rebuild(s, SETTINGS)
    body = msg.get_body(("plain",))
    assert body is not None and "本文です。" in body.get_content()


def test_encrypted_pdf_is_held_for_release(ctx: AttachmentContext) -> None:
    s = sanitize(mail([("secret.pdf", "application/pdf", encrypted_pdf())]), "Q2", SETTINGS, ctx)
    (action,) = [a for a in s.report.actions if a.filename == "secret.pdf"]
    assert action.code == "encrypted" and action.releasable and action.quarantined
    assert _attachments(_delivered(s)) == {}


@pytest.mark.parametrize(("verb", "code"), [
    (b"sleep", "timeout"), (b"alloc", "limit_exceeded"), (b"connect 25", "corrupt"),
])
def test_runaway_converter_quarantines_only_its_attachment(
        hostile_ctx: AttachmentContext, verb: bytes, code: str) -> None:
    raw = mail([("bad.txt", "text/plain", verb),
                ("good.pdf", "application/pdf", japanese_pdf(1))])
    s = sanitize(raw, "Q3", SETTINGS, hostile_ctx)
    bad, good = (a for a in s.report.actions if a.filename in {"bad.txt", "good.pdf"})
    assert (bad.action, bad.code, bad.quarantined) == (ActionKind.REMOVED, code, True)
    assert good.action is ActionKind.CONVERTED
    files = _attachments(_delivered(s))
    assert set(files) == {"good.pdf", "good.txt"}


def test_container_members_are_handled_like_attachments_up_to_the_depth_cap(
        hostile_ctx: AttachmentContext) -> None:
    s = sanitize(mail([("box.txt", "text/plain", b"nest")]), "Q4", SETTINGS, hostile_ctx)
    actions = {a.part: a for a in s.report.actions}
    assert actions["2/dir/inner.csv"].action is ActionKind.CONVERTED
    # named by the gateway after the member, never by the converter, with its folder
    assert actions["2/dir/inner.csv"].outputs == ("dir_inner.txt",)
    assert actions["2/dir/tool.exe"].code == "blocked_type"
    assert actions["2/deeper/again.txt"].action is ActionKind.CONVERTED  # depth 1
    assert actions["2/deeper/again.txt/deeper/again.txt"].action is ActionKind.CONVERTED
    capped = actions["2/deeper/again.txt/deeper/again.txt/deeper/again.txt"]
    assert (capped.action, capped.code) == (ActionKind.REMOVED, "limit_exceeded")
    names = [r.filename for r in s.outputs]
    # Each rendering carries its folder (and nested container) in its name: no clashes.
    assert names == ["dir_inner.txt", "deeper_again_dir_inner.txt"]
    assert {h.part for h in s.held} >= {"2/dir/tool.exe", "2"}


def test_policy_follows_settings() -> None:
    settings = Settings(pdf_dpi=100, pdf_max_pages=7, pdf_output="png", pdf_extract_text=False,
                        converter_timeout_seconds=9.5, archive_max_depth=4)
    policy = policy_from_settings(settings)
    assert (policy.dpi, policy.limits.max_pages, policy.pdf_output, policy.extract_text) == (
        100, 7, "png", False)
    assert policy.limits.wall_seconds == 9.5 and policy.limits.cpu_seconds == 10
    assert policy.limits.archive_max_depth == 4


def test_forwarded_mail_is_sanitized_again_with_the_same_pools(ctx: AttachmentContext) -> None:
    inner = EmailMessage()
    inner["From"] = "attacker@example.com"
    inner["Subject"] = "請求書"
    inner.set_content("請求書を添付します。")
    inner.add_attachment(pe_bytes(), maintype="application", subtype="octet-stream",
                         filename="setup.exe")
    inner.add_attachment(japanese_pdf(1), maintype="application", subtype="pdf",
                         filename="明細.pdf")
    outer = EmailMessage()
    outer["From"] = "colleague@example.com"
    outer["Subject"] = "転送"
    outer.set_content("転送します。")
    outer.add_attachment(inner)
    s = sanitize(outer.as_bytes(), "Q5", SETTINGS, ctx)
    actions = {a.part: a for a in s.report.actions}
    assert actions["2"].action is ActionKind.CONVERTED
    assert actions["2/2"].code == "blocked_type"  # setup.exe, one level down
    assert actions["2/3"].action is ActionKind.CONVERTED  # the PDF, rendered
    (eml,) = [o for o in s.outputs if o.content_type == "message/rfc822"]
    forwarded = email.message_from_bytes(eml.data, policy=email.policy.default)
    assert isinstance(forwarded, EmailMessage)
    assert set(_attachments(forwarded)) == {"明細.pdf", "明細.txt"}
    assert pe_bytes() not in eml.data


@pytest.mark.slow
def test_word_document_is_rendered_through_the_office_pool(ctx: AttachmentContext) -> None:
    import io

    from docx import Document

    doc = Document()
    doc.add_paragraph("令和6年度 予算説明会のお知らせ")
    buf = io.BytesIO()
    doc.save(buf)
    s = sanitize(mail([("案内.docx", "application/octet-stream", buf.getvalue())]), "Q6",
                 SETTINGS, ctx)
    (action,) = [a for a in s.report.actions if a.filename == "案内.docx"]
    assert action.action is ActionKind.CONVERTED, action
    files = _attachments(_delivered(s))
    assert set(files) == {"案内.pdf", "案内.txt"}
    assert "予算説明会" in files["案内.txt"].decode()


def test_output_names_are_unique_across_attachments(ctx: AttachmentContext) -> None:
    pdf = japanese_pdf(1)
    s = sanitize(mail([("報告.pdf", "application/pdf", pdf), ("報告.pdf", "application/pdf", pdf)]),
                 "Q7", SETTINGS, ctx)
    converted = [a.outputs for a in s.report.actions if a.action is ActionKind.CONVERTED]
    assert converted == [("報告.pdf", "報告.txt"), ("報告 (2).pdf", "報告 (2).txt")]
    assert set(_attachments(_delivered(s))) == {"報告.pdf", "報告.txt", "報告 (2).pdf",
                                                 "報告 (2).txt"}
