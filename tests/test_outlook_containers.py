"""Outlook .msg and winmail.dat: the body as UTF-8 text, the attachments as members."""

from __future__ import annotations

import pytest
from compressed_rtf import compress

from converters import errors
from converters.limits import ConversionPolicy, Limits
from converters.outlook import OutlookConverter, html_to_text
from tests.outlook_helpers import build_msg, build_tnef, mapi_binary_props, msg_tree, tnef_attr

POLICY = ConversionPolicy()
CONVERT = OutlookConverter()


def test_winmail_dat_in_cp932_gives_japanese_text_and_its_attachments() -> None:
    data = build_tnef("会議の件", "来週の会議資料を添付します。",
                      [("資料.docx", b"PK\x03\x04docx"), ("setup.exe", b"MZ\x90\x00")])
    conv = CONVERT.convert(data, "winmail.dat", POLICY)
    (body,) = conv.outputs
    assert body.filename == "winmail.txt" and body.content_type == "text/plain"
    assert body.data.decode("utf-8") == "Subject: 会議の件\n\n来週の会議資料を添付します。"
    assert [(m.path, m.data) for m in conv.members] == [
        ("資料.docx", b"PK\x03\x04docx"), ("setup.exe", b"MZ\x90\x00")]


def test_winmail_dat_with_only_an_rtf_body_hands_the_rtf_on_as_a_member() -> None:
    rtf = b"{\\rtf1\\ansi Hello from RTF\\par}"
    prop = mapi_binary_props(0x1009, compress(rtf))  # PR_RTF_COMPRESSED
    data = build_tnef("s", "", []).replace(tnef_attr(1, 0x800C, 0x0002, b"\x00"), b"")
    data += tnef_attr(1, 0x9003, 0x0006, prop)
    conv = CONVERT.convert(data, "winmail.dat", POLICY)
    assert [m.path for m in conv.members] == ["body.rtf"]
    assert conv.members[0].data.startswith(b"{\\rtf1")


def test_msg_gives_headers_body_and_attachments() -> None:
    data = build_msg("見積の件", "お世話になっております。\r\n見積書を送ります。",
                     "山田 <yamada@example.jp>", "taro@example.lg.jp",
                     [("見積書.xlsx", b"PK\x03\x04xlsx"), ("請求書.pdf", b"%PDF-1.7")])
    conv = CONVERT.convert(data, "見積.msg", POLICY)
    text = conv.outputs[0].data.decode("utf-8")
    assert conv.outputs[0].filename == "見積.txt"
    assert "From: 山田 <yamada@example.jp>" in text
    assert "Subject: 見積の件" in text
    assert text.endswith("お世話になっております。\r\n見積書を送ります。")
    assert {m.path: m.data for m in conv.members} == {
        "見積書.xlsx": b"PK\x03\x04xlsx", "請求書.pdf": b"%PDF-1.7"}


def test_attachment_caps_apply_to_outlook_files() -> None:
    data = build_tnef("s", "b", [(f"{i}.txt", b"x") for i in range(4)])
    with pytest.raises(errors.LimitExceeded):
        CONVERT.convert(data, "w.dat", ConversionPolicy(limits=Limits(archive_max_members=3)))


def test_garbage_is_refused_with_a_reason() -> None:
    with pytest.raises(errors.Unsupported):
        CONVERT.convert(b"hello", "a.msg", POLICY)
    with pytest.raises(errors.Corrupt):
        CONVERT.convert(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "a.msg", POLICY)


def test_html_bodies_become_visible_text_only() -> None:
    html = "<html><head><style>p{}</style></head><body><p>本文</p><script>x()</script></body>"
    assert html_to_text(html) == "本文"


def test_msg_forwarded_as_an_attachment_comes_back_as_a_msg_member_that_opens_again() -> None:
    inner = msg_tree("元のメール", "転送元の本文", "a@example.com", "b@example.lg.jp",
                     [("請求書.exe", b"MZ\x90\x00")], {}, top_level=False)
    outer = build_msg("FW: 元のメール", "転送します", "c@example.jp", "d@example.lg.jp", [],
                      {"元のメール": inner})
    (member,) = CONVERT.convert(outer, "fw.msg", POLICY).members
    assert member.path == "元のメール.msg"
    again = CONVERT.convert(member.data, member.path, POLICY)
    assert "Subject: 元のメール" in again.outputs[0].data.decode()
    assert [(m.path, m.data) for m in again.members] == [("請求書.exe", b"MZ\x90\x00")]
