"""Japanese mail arrives readable: every legacy encoding, no 文字化け, no U+FFFD."""

from __future__ import annotations

import base64

import pytest

from converters.charset import decode_bytes, encode_iso2022jp
from tests.bodies_helpers import (
    b_word,
    base_headers,
    deliver,
    delivered_message,
    delivered_text,
    message,
    multipart,
    text_part,
)

NEC_IBM = "①②⑳ ㈱㈲ ⅠⅢⅩ ㍻㍼ ～ 髙橋 﨑 ∑ №"
TEXT = f"お世話になっております。{NEC_IBM} の確認をお願いします。"


def single(text_bytes: bytes, content_type: str, cte: str = "8bit", subject: str = "t") -> bytes:
    return message(base_headers(subject=subject, Content_Type=content_type,
                                Content_Transfer_Encoding=cte), text_bytes)


def test_iso2022jp_with_nec_and_ibm_characters_in_body_and_subject() -> None:
    """CP50220 mail (what Outlook sends) decodes fully, body and subject alike."""
    raw_body = encode_iso2022jp(TEXT)
    assert raw_body is not None
    raw = single(raw_body, "text/plain; charset=ISO-2022-JP", "7bit",
                 subject=b_word("①会議のご案内㈱髙橋", "ISO-2022-JP"))
    msg = delivered_message(raw)
    assert msg["Subject"] == "[無害化] ①会議のご案内㈱髙橋"
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert TEXT in text.replace("\r\n", "\n")
    assert "\ufffd" not in text


def test_stdlib_codec_really_fails_on_these_characters() -> None:
    """Guard for the test above: Python's own iso2022_jp cannot do it."""
    raw = encode_iso2022jp("①㈱")
    assert raw is not None
    with pytest.raises(UnicodeDecodeError):
        raw.decode("iso2022_jp")


def test_shift_jis_label_is_read_as_cp932() -> None:
    """髙 and ① exist only in CP932, which is what 'Shift_JIS' mail really is."""
    raw = single(TEXT.encode("cp932"), "text/plain; charset=Shift_JIS")
    assert TEXT in delivered_text(raw)


def test_shift_jis_subject_split_mid_character_across_encoded_words() -> None:
    """Mailers cut encoded words inside a double-byte character; we join bytes first."""
    sj = "髙橋①です".encode("cp932")
    subject = (f"=?Shift_JIS?B?{base64.b64encode(sj[:3]).decode()}?= "
               f"=?Shift_JIS?B?{base64.b64encode(sj[3:]).decode()}?=")
    msg = delivered_message(single(b"x", "text/plain", subject=subject))
    assert msg["Subject"] == "[無害化] 髙橋①です"


def test_euc_jp_html_body() -> None:
    """EUC-JP HTML becomes text in the right characters."""
    html = "<html><body><p>市役所からのお知らせ</p><p>第二回 説明会</p></body></html>"
    text = delivered_text(single(html.encode("euc_jp"), "text/html; charset=EUC-JP"))
    assert "市役所からのお知らせ\n\n第二回 説明会" in text


def test_euc_jp_with_nec_row13_characters() -> None:
    """CP51932 (Windows EUC-JP) carries ① in row 13; strict EUC-JP would fail."""
    jis = encode_iso2022jp("①㈱ですね")
    assert jis is not None
    # ISO-2022-JP pairs → EUC-JP bytes: set the high bit inside the escape-delimited run.
    inner = jis.split(b"\x1b$B")[1].split(b"\x1b(B")[0]
    euc = bytes(b | 0x80 for b in inner)
    assert decode_bytes(euc, "EUC-JP")[0] == "①㈱ですね"


def test_unlabelled_jis_is_detected() -> None:
    """7-bit JIS without any charset label is recognised by its escape sequences."""
    raw = encode_iso2022jp(TEXT)
    assert raw is not None
    assert TEXT in delivered_text(single(raw, "text/plain", "7bit"))


@pytest.mark.parametrize("codec", ["cp932", "euc_jp", "utf-8"])
def test_unlabelled_8bit_japanese_is_detected(codec: str) -> None:
    """No charset at all: the Japanese reading wins over Latin guesses."""
    text = "来週の打ち合わせは予定どおり行います。よろしくお願いします。"
    raw = single(text.encode(codec), "text/plain", "8bit")
    assert text in delivered_text(raw)


@pytest.mark.parametrize("label", ["us-ascii", "iso-8859-1", "X-UNKNOWN", "shift-jls"])
def test_mislabelled_or_unknown_charset_is_detected(label: str) -> None:
    """A label the bytes contradict is overruled by detection."""
    text = "請求書を送付いたします。ご確認ください。"
    raw = single(text.encode("cp932"), f"text/plain; charset={label}", "8bit")
    assert text in delivered_text(raw)


def test_utf7_body() -> None:
    raw = single("日本語のUTF-7本文".encode("utf-7"), "text/plain; charset=UTF-7", "7bit")
    assert "日本語のUTF-7本文" in delivered_text(raw)


def test_quoted_printable_utf8_and_raw_8bit_subject() -> None:
    """Raw 8-bit UTF-8 in a header (against RFC, common) is decoded, not mangled."""
    part = text_part("ＱＰで送った本文です", "utf-8", cte="quoted-printable")
    head, _, body = part.partition(b"\n\n")
    raw = (b"From: a@example.com\r\nSubject: \xe4\xbb\xb6\xe5\x90\x8d\r\nMIME-Version: 1.0\r\n"
           + head.replace(b"\n", b"\r\n") + b"\r\n\r\n" + body)
    msg = delivered_message(raw)
    assert msg["Subject"] == "[無害化] 件名"
    assert "ＱＰで送った本文です" in msg.get_body(preferencelist=("plain",)).get_content()


def test_iso2022jp_output_option_for_legacy_clients() -> None:
    """With output_charset=iso-2022-jp the body and subject are CP50220, still readable."""
    raw = single(TEXT.encode("utf-8"), "text/plain; charset=utf-8",
                 subject=b_word("①のご案内", "utf-8"))
    msg = delivered_message(raw, output_charset="iso-2022-jp")
    part = msg.get_body(preferencelist=("plain",))
    assert part.get_content_charset() == "iso-2022-jp"
    payload = part.get_payload(decode=True)
    assert payload.isascii() and b"\x1b$B" in payload
    assert TEXT in decode_bytes(payload, "iso-2022-jp")[0]
    raw_subject = msg.as_bytes().split(b"Subject:", 1)[1].split(b"\n", 1)[0]
    assert b"=?ISO-2022-JP?B?" in raw_subject


def test_iso2022jp_option_keeps_utf8_when_text_has_no_jis_form() -> None:
    """An emoji has no ISO-2022-JP form: the body stays UTF-8 instead of losing it."""
    raw = single("絵文字 😀 です".encode(), "text/plain; charset=utf-8")
    msg = delivered_message(raw, output_charset="iso-2022-jp")
    part = msg.get_body(preferencelist=("plain",))
    assert part.get_content_charset() == "utf-8"
    assert "絵文字 😀 です" in part.get_content()


def test_multipart_alternative_uses_text_part_by_default() -> None:
    body = multipart("alternative", "alt", [
        text_part("テキスト版の本文", "iso-2022-jp"),
        text_part("<p>HTML版の本文</p>", "utf-8", subtype="html"),
    ])
    raw = message(base_headers(Content_Type='multipart/alternative; boundary="alt"'), body)
    text = delivered_text(raw)
    assert "テキスト版の本文" in text
    assert "HTML版の本文" not in text


def test_multipart_alternative_prefer_html_policy() -> None:
    body = multipart("alternative", "alt", [
        text_part("テキスト版の本文", "utf-8"),
        text_part("<table><tr><td>品目</td><td>数量</td></tr></table>", "utf-8",
                  subtype="html"),
    ])
    raw = message(base_headers(Content_Type='multipart/alternative; boundary="alt"'), body)
    text = delivered_text(raw, prefer_html=True)
    assert "品目 | 数量" in text
    assert "テキスト版の本文" not in text


def test_no_text_part_converts_html() -> None:
    body = multipart("alternative", "alt", [
        text_part("<p>HTMLだけの本文</p>", "shift_jis", subtype="html"),
    ])
    raw = message(base_headers(Content_Type='multipart/alternative; boundary="alt"'), body)
    text = delivered_text(raw)
    assert "HTMLだけの本文" in text
    assert "HTML形式の本文をテキストに変換しました" in text


def test_one_broken_byte_does_not_turn_utf8_into_mojibake() -> None:
    text = "日本語のテキストです。よろしくお願いします。"
    data = text.encode()[:15] + b"\xff" + text.encode()[15:]
    delivered = delivered_text(single(data, "text/plain; charset=utf-8"))
    assert "日本語のテ" in delivered and "よろしくお願いします。" in delivered
    assert delivered.count("\ufffd") == 1


def test_iso2022jp_output_lines_stay_short_and_kana_is_widened() -> None:
    """Long paragraphs are split below SMTP's 998-octet limit; ｶﾀｶﾅ becomes カタカナ."""
    long_line = "長い段落です。" * 200 + "ﾊﾝｶｸｶﾀｶﾅ"
    raw = single(long_line.encode(), "text/plain; charset=utf-8")
    _, out = deliver(raw, output_charset="iso-2022-jp")
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    msg = delivered_message(raw, output_charset="iso-2022-jp")
    payload = msg.get_body(preferencelist=("plain",)).get_payload(decode=True)
    text = decode_bytes(payload, "iso-2022-jp")[0].replace("\r\n", "").replace("\n", "")
    assert "長い段落です。" * 200 + "ハンカクカタカナ" in text
