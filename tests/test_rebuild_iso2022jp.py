"""With output_charset=iso-2022-jp, display names are ISO-2022-JP words like the Subject."""

from __future__ import annotations

from gateway.pipeline.headers import decode_words
from tests.bodies_helpers import b_word, base_headers, deliver, message


def delivered_header(out: bytes, name: str) -> bytes:
    """The raw bytes of one delivered header, folds included."""
    head = out.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(name.lower() + b":"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\r\n".join(lines[start:end])


def japanese_mail() -> bytes:
    headers = [(k, v) for k, v in base_headers() if k not in ("From", "To")] + [
        ("From", f'{b_word("山田 太郎①", "ISO-2022-JP")} <yamada@example.co.jp>'),
        ("To", f'{b_word("情報政策課", "utf-8")} <joho@city.example.lg.jp>, '
               "Plain Name <plain@example.lg.jp>"),
        ("Cc", f'{b_word("髙橋 ㈱テスト 総務部 第一係の担当者", "utf-8")} <t@example.jp>'),
    ]
    return message(headers, "本文".encode())


def test_display_names_are_iso2022jp_words_with_the_iso2022jp_option() -> None:
    _, out = deliver(japanese_mail(), output_charset="iso-2022-jp")
    for name in (b"From", b"To", b"Cc"):
        raw = delivered_header(out, name)
        assert raw.isascii()
        assert b"=?ISO-2022-JP?B?" in raw
        assert b"=?utf-8?" not in raw.lower()
        assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    def unfolded(name: bytes) -> str:
        return decode_words(delivered_header(out, name).decode().replace("\r\n ", " "))

    assert unfolded(b"From") == "From: 山田 太郎① <yamada@example.co.jp>"
    assert unfolded(b"To") == \
        "To: 情報政策課 <joho@city.example.lg.jp>, Plain Name <plain@example.lg.jp>"
    assert unfolded(b"Cc") == "Cc: 髙橋 ㈱テスト 総務部 第一係の担当者 <t@example.jp>"


def test_display_names_stay_utf8_words_by_default() -> None:
    _, out = deliver(japanese_mail())
    raw = delivered_header(out, b"From")
    assert b"=?utf-8?" in raw.lower() and b"ISO-2022-JP" not in raw


def test_a_name_without_a_jis_form_keeps_its_utf8_word() -> None:
    """An emoji has no ISO-2022-JP form: the name is kept in UTF-8 rather than lost."""
    headers = [(k, v) for k, v in base_headers() if k != "From"] + [
        ("From", f'{b_word("山田 😀", "utf-8")} <yamada@example.co.jp>')]
    _, out = deliver(message(headers, b"x"), output_charset="iso-2022-jp")
    raw = delivered_header(out, b"From")
    assert b"=?utf-8?" in raw.lower()
    assert decode_words(raw.decode().replace("\r\n ", " ")) == "From: 山田 😀 <yamada@example.co.jp>"
