"""Real-world MIME layouts: which parts become the text, which go to the converters."""

from __future__ import annotations

import base64

from tests.bodies_helpers import base_headers, deliver, delivered_text, message, multipart, text_part

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def image(cid: str) -> bytes:
    return (f"Content-Type: image/png\nContent-ID: <{cid}>\nContent-Disposition: inline\n"
            "Content-Transfer-Encoding: base64\n\n").encode() + base64.encodebytes(PNG)


def pdf(name: str) -> bytes:
    return (f'Content-Type: application/pdf; name="{name}"\nContent-Disposition: attachment; '
            f'filename="{name}"\nContent-Transfer-Encoding: base64\n\n').encode() + \
        base64.encodebytes(b"%PDF-1.4\n%%EOF\n")


def outlook_style() -> bytes:
    """mixed( alternative( text, related( html, image ) ), pdf ) — what Outlook sends."""
    related = (b'Content-Type: multipart/related; boundary="rel"\n\n' + multipart("related", "rel", [
        text_part('<p>本文HTML <img src="cid:img1@x"></p>', "utf-8", subtype="html"),
        image("img1@x"),
    ]))
    alternative = (b'Content-Type: multipart/alternative; boundary="alt"\n\n'
                   + multipart("alternative", "alt", [text_part("本文テキスト", "iso-2022-jp"),
                                                      related]))
    body = multipart("mixed", "mix", [alternative, pdf("見積書.pdf")])
    return message(base_headers(Content_Type='multipart/mixed; boundary="mix"'), body)


def test_outlook_layout_text_body_and_every_other_part_to_converters() -> None:
    result, _ = deliver(outlook_style())
    kinds = {a.part: (a.action.value, a.code) for a in result.report.actions}  # type: ignore[attr-defined]
    assert kinds["1.1"] == ("kept", "")
    assert kinds["1.2.1"] == ("removed", "alternative_unused")
    # the inline image and the PDF both went to sanitize_attachment (held until converters exist)
    assert {h.part for h in result.held} == {"1.2.2", "2"}  # type: ignore[attr-defined]
    names = {a.part: a.filename for a in result.report.actions}  # type: ignore[attr-defined]
    assert names["1.2.2"] == "inline-1.2.2.png"
    assert names["2"] == "見積書.pdf"
    text = delivered_text(outlook_style())
    assert "本文テキスト" in text and "本文HTML" not in text
    assert "・添付ファイル「見積書.pdf」" in text


def test_outlook_layout_with_prefer_html_names_the_inline_image() -> None:
    text = delivered_text(outlook_style(), prefer_html=True)
    assert "本文HTML [画像: inline-1.2.2.png]" in text


def test_text_parts_around_an_attachment_are_all_kept() -> None:
    """Apple Mail: text, attachment, text."""
    body = multipart("mixed", "m", [text_part("前半です", "utf-8"), pdf("a.pdf"),
                                    text_part("後半です", "utf-8")])
    text = delivered_text(message(base_headers(Content_Type='multipart/mixed; boundary="m"'),
                                  body))
    assert text.index("前半です") < text.index("後半です")


def test_named_text_file_is_an_attachment_not_body() -> None:
    part = (b"Content-Type: text/plain; charset=utf-8\nContent-Disposition: attachment; "
            b"filename=memo.txt\n\nSECRET-ATTACHMENT\n")
    body = multipart("mixed", "m", [text_part("本文", "utf-8"), part])
    text = delivered_text(message(base_headers(Content_Type='multipart/mixed; boundary="m"'),
                                  body))
    assert "SECRET-ATTACHMENT" not in text
    assert "memo.txt" in text


def test_format_flowed_soft_breaks_are_joined() -> None:
    """Thunderbird/Apple Mail wrap with trailing spaces; our output is not flowed."""
    body = ("これは長い文章で、送信側のメールソフトが途中で \r\n折り返しています。\r\n"
            "> 引用も \r\n> 続きます\r\n-- \r\n署名").encode()
    raw = message(base_headers(Content_Type="text/plain; charset=utf-8; format=flowed"), body)
    text = delivered_text(raw)
    assert "これは長い文章で、送信側のメールソフトが途中で 折り返しています。\n" in text
    assert "> 引用も 続きます\n-- \n署名" in text
    delsp = message(base_headers(
        Content_Type="text/plain; charset=utf-8; format=flowed; delsp=yes"), body)
    assert "途中で折り返しています。" in delivered_text(delsp)
