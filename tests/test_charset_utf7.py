"""Unlabelled UTF-7 is read as Japanese; ASCII that merely contains "+" is left alone."""

from __future__ import annotations

import pytest

from converters.charset import decode_bytes
from tests.bodies_helpers import base_headers, delivered_text, message

TEXT = "日本語のUTF-7本文です。お世話になっております。①㈱ 1+1=2"


def unlabelled(body: bytes) -> bytes:
    """A text/plain mail with no charset parameter at all."""
    return message(base_headers(Content_Type="text/plain", Content_Transfer_Encoding="7bit"),
                   body)


def test_unlabelled_utf7_body_is_delivered_as_japanese() -> None:
    raw_body = TEXT.encode("utf-7")
    assert raw_body.isascii() and b"+" in raw_body
    text = delivered_text(unlabelled(raw_body))
    assert TEXT in text
    assert "+ZeVn" not in text


def test_the_short_example_decodes() -> None:
    assert decode_bytes(b"+ZeVnLIqe-") == ("日本語", "utf_7")


@pytest.mark.parametrize("ascii_text", [
    b"C++ and 1+1=2",
    b"Tel: +81-3-1234-5678, +8190-1234-5678",
    b"=A1+B1-C1 price+tax-free",
    b"x+dGVzdA- and +Zm9vYmFy-",  # decodable runs, but random CJK code points
    b"mailto:a+tag-x@example.jp",  # decodes to a Hangul syllable
    b"Tel:+81312345678- ext",  # decodes to private-use characters
    b"Caf+AOk-",  # one Latin letter: not Japanese, so not taken for UTF-7
])
def test_ascii_with_plus_signs_stays_as_written(ascii_text: bytes) -> None:
    assert decode_bytes(ascii_text) == (ascii_text.decode("ascii"), "ascii")
    assert ascii_text.decode("ascii") in delivered_text(unlabelled(ascii_text))


def test_a_label_is_still_trusted_over_detection() -> None:
    """Declared US-ASCII bytes stay ASCII even when they would decode as UTF-7."""
    assert decode_bytes(b"+ZeVnLIqe-", "us-ascii") == ("+ZeVnLIqe-", "ascii")
