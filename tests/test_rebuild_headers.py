"""The delivered message carries only allow-listed headers, rebuilt, never injected."""

from __future__ import annotations

import base64
import email
import email.policy
from pathlib import Path

import pytest

from converters.base import Rendering
from gateway.pipeline.rebuild import assert_safe_headers, rebuild
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.bodies_helpers import b_word, base_headers, deliver, delivered_message, message


def header_names(out: bytes) -> list[str]:
    head = out.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]


def encoded(text: str) -> str:
    return f"=?utf-8?B?{base64.b64encode(text.encode()).decode()}?="


def test_only_allow_listed_headers_survive() -> None:
    raw = message([*base_headers(), ("Received", "from evil"), ("X-Spam", "no"),
                   ("Return-Path", "<x@y>"), ("DKIM-Signature", "v=1"), ("Bcc", "a@b"),
                   ("Disposition-Notification-To", "track@evil.example"),
                   # a forged verdict in our own name (issue 21): never copied
                   ("Authentication-Results", "mugaika.localdomain; dmarc=pass")], b"body")
    names = {n.lower() for n in header_names(deliver(raw)[1])}
    assert names == {"from", "to", "subject", "date", "message-id", "mime-version",
                     "content-type", "content-transfer-encoding", "x-mugaika-verdict",
                     "x-mugaika-actions", "x-mugaika-queue-id", "x-mugaika-sanitized"}


@pytest.mark.parametrize("field", ["Subject", "From", "Message-ID", "In-Reply-To"])
def test_encoded_crlf_cannot_inject_a_header(field: str) -> None:
    evil = encoded("hello\r\nBcc: victim@example.lg.jp\r\nX-Evil: 1")
    value = f"{evil} <a@example.com>" if field == "From" else evil
    headers = [(k, v) for k, v in base_headers() if k != field] + [(field, value)]
    out = deliver(message(headers, b"x"))[1]
    names = [n.lower() for n in header_names(out)]
    assert "bcc" not in names and "x-evil" not in names
    assert_safe_headers(out)


def test_display_name_cannot_smuggle_a_second_address() -> None:
    """An encoded display name holding '<boss@city>' stays a name, not an address."""
    name = encoded('市長 <mayor@city.example.lg.jp>, "x"')
    headers = [(k, v) for k, v in base_headers() if k != "From"]
    msg = delivered_message(message([*headers, ("From", f"{name} <evil@example.net>")], b"x"))
    addresses = msg["From"].addresses
    assert [a.addr_spec for a in addresses] == ["evil@example.net"]
    assert "市長" in addresses[0].display_name


def test_japanese_display_names_are_re_encoded() -> None:
    sender = f'{b_word("山田 太郎①", "ISO-2022-JP")} <yamada@example.co.jp>'
    msg = delivered_message(message(
        [*[(k, v) for k, v in base_headers() if k != "From"], ("From", sender)], b"x"))
    assert msg["From"].addresses[0].display_name == "山田 太郎①"


def test_subject_tag_and_mugaika_headers() -> None:
    raw = message(base_headers(subject=b_word("会議の件", "utf-8")), b"x")
    msg = delivered_message(raw)
    assert msg["Subject"] == "[無害化] 会議の件"
    assert msg["X-Mugaika-Verdict"] == "clean"
    assert msg["X-Mugaika-Queue-Id"] == "Q-TEST"
    assert msg["X-Mugaika-Actions"] == "1=kept"
    assert delivered_message(raw, subject_tag="")["Subject"] == "会議の件"


def test_subject_tag_is_not_doubled_on_replies() -> None:
    raw = message(base_headers(subject=b_word("[無害化] 会議の件", "utf-8")), b"x")
    assert delivered_message(raw)["Subject"] == "[無害化] 会議の件"


def test_bad_date_is_replaced_and_ids_are_kept() -> None:
    headers = [(k, v) for k, v in base_headers() if k != "Date"] + [
        ("Date", "yesterday-ish"), ("In-Reply-To", "<a@x> garbage"),
        ("References", "<a@x> <b@y>")]
    msg = delivered_message(message(headers, b"x"))
    assert msg["Date"].datetime is not None
    assert msg["In-Reply-To"] == "<a@x>"
    assert msg["References"] == "<a@x> <b@y>"
    assert msg["Message-ID"] == "<m1@example.com>"


def test_english_notice_by_setting() -> None:
    raw = message(base_headers(Content_Type="text/html; charset=utf-8"), b"<p>hi</p>")
    text = delivered_message(raw, language="en").get_body().get_content()
    assert "[Sanitization notice]" in text and "converted to plain text" in text


def test_operator_template_overrides_single_entries(tmp_path: Path) -> None:
    (tmp_path / "notice.ja.toml").write_text(
        'head = "【外部メール】$contact までご連絡ください"\n[reasons]\n'
        'unsupported_type = "市の規定で受け取れない形式です"\n', encoding="utf-8")
    opaque = base64.b64encode(bytes(range(256)) * 4)  # no known format: unsupported_type
    att = (b"Content-Type: application/x-foo\nContent-Disposition: attachment; filename=a.foo"
           b"\nContent-Transfer-Encoding: base64\n\n" + opaque + b"\n")
    body = (b"--b\nContent-Type: text/plain; charset=utf-8\n\n\xe6\x9c\xac\xe6\x96\x87\n--b\n"
            + att + b"--b--\n")
    raw = message(base_headers(Content_Type='multipart/mixed; boundary="b"'), body)
    text = delivered_message(raw, templates_dir=tmp_path).get_body().get_content()
    assert "【外部メール】情報政策課 (内線 1234) までご連絡ください" in text
    assert "・添付ファイル「a.foo」: 削除しました（理由: 市の規定で受け取れない形式です）。" in text
    assert "隔離ID: Q-TEST / 部品 2" in text


def test_broken_operator_template_is_reported(tmp_path: Path) -> None:
    from gateway.pipeline.notice import load_templates

    (tmp_path / "notice.ja.toml").write_text("head = \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notice\.ja\.toml"):
        load_templates(Settings(templates_dir=tmp_path))


def test_only_safe_rendering_types_are_attached() -> None:
    settings = Settings()
    result = sanitize(message(base_headers(), b"x"), "Q", settings)
    good = Rendering("page-1.png", "image/png", b"\x89PNG....")
    text = Rendering("本文.txt", "text/plain; charset=utf-8", "抽出テキスト".encode())
    bad = Rendering("evil.html", "text/html", b"<script>x</script>")
    rendered = type(result)(result.parsed, result.report, result.body, (good, text, bad))
    out = rebuild(rendered, settings)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert [p.get_filename() for p in msg.iter_attachments()] == ["page-1.png", "本文.txt"]
    assert list(msg.iter_attachments())[1].get_content() == "抽出テキスト"
    assert b"<script>" not in out


def test_assert_safe_headers_rejects_what_the_cve_would_produce() -> None:
    with pytest.raises(ValueError, match="allow-list"):
        assert_safe_headers(b"Subject: a\r\nBcc: x@y\r\n\r\nbody")
    with pytest.raises(ValueError, match="bare CR"):
        assert_safe_headers(b"Subject: a\nb\r\n\r\nbody")
