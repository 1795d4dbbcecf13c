"""Carrier emoji (docomo, au, SoftBank) reach the recipient as Unicode emoji (issue 16).

Before this, Shift_JIS mail from a docomo phone showed U+E63E/U+E6E2 and SoftBank mail
U+E59F: private-use code points no LGWAN-side client displays; au's ISO-2022-JP emoji
rows failed to decode at all. Codes come from Unicode's EmojiSources.txt (Debian's
unicode-data), which the tests read too, so a wrong table cannot agree with itself.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable

import pytest

from converters.charset import decode_bytes
from converters.emoji import EMOJI_SOURCES, carrier_for_domain, sender_carrier
from tests.bodies_helpers import base_headers, delivered_message, message
from tests.conftest import Gateway, Sink

SUN = "\u2600"  # EmojiSources: 2600;F89F;F660;F98B
KEYCAP_1 = "1\u20e3"  # 0031 20E3;F987;F6FB;F7BC
RIBBON = "\U0001f380"  # 1F380;F8E5;F7BC;F9B4  (au's F7BC is SoftBank's keycap 1)
MAPLE = "\U0001f342"  # 1F342;;F340;F759      (au only; JIS 7921 in au mail)
WARNING = "\u26a0"  # 26A0;F9DC;F659;F7F2    (JIS 753A in au mail)


def emoji_sources_line(code: str, column: int) -> str:
    """The Unicode emoji Debian's EmojiSources.txt gives for a carrier's Shift_JIS code."""
    for line in EMOJI_SOURCES.read_text("utf-8").splitlines():
        fields = line.split("#")[0].strip().split(";")
        if len(fields) == 4 and fields[column] == code:
            return "".join(chr(int(cp, 16)) for cp in fields[0].split())
    raise AssertionError(f"{code} not in {EMOJI_SOURCES}")


def test_the_table_is_installed_and_agrees_with_the_figures_here() -> None:
    assert EMOJI_SOURCES.exists(), "make setup installs Debian's unicode-data"
    assert emoji_sources_line("F89F", 1) == SUN
    assert emoji_sources_line("F7BC", 3) == KEYCAP_1
    assert emoji_sources_line("F7BC", 2) == RIBBON
    assert emoji_sources_line("F340", 2) == MAPLE
    assert emoji_sources_line("F659", 2) == WARNING


def carrier_mail(sender: str, subject_word: str, body: bytes, charset: str) -> bytes:
    headers = [(k, v) for k, v in base_headers(subject_word) if k != "From"]
    headers += [("From", sender), ("Content-Type", f"text/plain; charset={charset}"),
                ("Content-Transfer-Encoding", "8bit" if not body.isascii() else "7bit")]
    return message(headers, body)


def b_word_bytes(raw: bytes, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(raw).decode('ascii')}?="


def read(raw: bytes) -> tuple[str, str]:
    msg = delivered_message(raw)
    body = msg.get_body(preferencelist=("plain",)).get_content()
    return str(msg["Subject"]), body


def test_docomo_shift_jis_body_and_subject() -> None:
    """The issue's U+E6E2 is docomo's keycap 1 (Shift_JIS F987)."""
    body = "明日は".encode("cp932") + b"\xf8\x9f" + "です ".encode("cp932") + b"\xf9\x87"
    subject = b_word_bytes("晴れ".encode("cp932") + b"\xf8\x9f", "Shift_JIS")
    raw = carrier_mail("taro@docomo.ne.jp", subject, body, "Shift_JIS")
    subject_seen, text = read(raw)
    assert f"明日は{SUN}です {KEYCAP_1}" in text
    assert subject_seen.endswith(f"晴れ{SUN}")
    assert not any("\ue000" <= ch <= "\uf8ff" for ch in text + subject_seen)


def test_softbank_shift_jis_needs_the_sender_to_tell_keycap_from_ribbon() -> None:
    """F7BC is SoftBank's keycap 1 and au's ribbon: the sender's domain decides."""
    body = "番号".encode("cp932") + b"\xf7\xbc"
    _, softbank = read(carrier_mail("hanako@softbank.ne.jp", "t", body, "Shift_JIS"))
    _, au = read(carrier_mail("jiro@ezweb.ne.jp", "t", body, "Shift_JIS"))
    assert f"番号{KEYCAP_1}" in softbank
    assert f"番号{RIBBON}" in au


def test_au_iso2022jp_rows_0x75_to_0x7c_become_emoji() -> None:
    """au mail carries emoji as JIS 753A (F659 on the handset) and 7921 (F340)."""
    body = b"\x1b$B$3$s$K$A$O\x75\x3a\x79\x21\x1b(B\n"
    subject = b_word_bytes(b"\x1b$B5$$r$D$1$F\x75\x3a\x1b(B", "ISO-2022-JP")
    subject_seen, text = read(carrier_mail("jiro@ezweb.ne.jp", subject, body, "ISO-2022-JP"))
    assert f"こんにちは{WARNING}{MAPLE}" in text
    assert subject_seen.endswith(f"気をつけて{WARNING}")
    assert "\ufffd" not in text


def test_the_same_jis_rows_stay_ibm_kanji_in_other_mail() -> None:
    """Outside au mail rows 0x79-0x7C keep CP50220's NEC-selected IBM kanji (髙)."""
    from converters.charset import encode_iso2022jp

    raw = encode_iso2022jp("髙橋")
    assert raw is not None
    _, text = read(carrier_mail("clerk@example.co.jp", "t", raw, "ISO-2022-JP"))
    assert "髙橋" in text


def test_without_a_carrier_sender_docomo_codes_are_still_recognised() -> None:
    """Mail forwarded from a phone through a PC keeps docomo's codes; all of them are in
    docomo's table, so they map; a company's 外字 at F040 is left alone."""
    body = "転送".encode("cp932") + b"\xf8\x9f"
    _, text = read(carrier_mail("someone@example.com", "t", body, "Shift_JIS"))
    assert f"転送{SUN}" in text
    assert decode_bytes(b"\xf0\x40", "Shift_JIS")[0] == "\ue000"
    assert decode_bytes(b"\xf8\x9f\xf0\x40", "Shift_JIS")[0] == "\ue63e\ue000"


def test_softbank_utf8_private_use_is_mapped_for_softbank_senders_only() -> None:
    """iPhones on SoftBank once sent U+E21C (keycap 1) in UTF-8."""
    with sender_carrier("softbank"):
        assert decode_bytes("\ue21c".encode(), "utf-8")[0] == KEYCAP_1
    assert decode_bytes("\ue21c".encode(), "utf-8")[0] == "\ue21c"


def test_a_code_with_no_unicode_emoji_becomes_geta() -> None:
    """docomo F8A0 .. exist in EmojiSources; F9FC-style gaps have no Unicode form."""
    unmapped = next(code for code in range(0xF940, 0xF9FD)
                    if code != 0xF97F and not _in_sources(f"{code:04X}", 1))
    with sender_carrier("docomo"):
        assert decode_bytes(unmapped.to_bytes(2, "big"), "Shift_JIS")[0] == "\u3013"


def _in_sources(code: str, column: int) -> bool:
    try:
        emoji_sources_line(code, column)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize(("domain", "carrier"), [
    ("docomo.ne.jp", "docomo"), ("ezweb.ne.jp", "kddi"), ("biz.ezweb.ne.jp", "kddi"),
    ("au.com", "kddi"), ("softbank.ne.jp", "softbank"), ("i.softbank.jp", "softbank"),
    ("t.vodafone.ne.jp", "softbank"), ("example.com", None), ("notdocomo.ne.jp", None),
    ("docomo.ne.jp.evil.example", None),
])
def test_carrier_domains(domain: str, carrier: str | None) -> None:
    assert carrier_for_domain(domain) == carrier


def test_over_smtp_the_recipient_sees_the_emoji(
        make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    gw = make_gateway(sink.port)
    body = "了解です".encode("cp932") + b"\xf7\xbc"
    raw = carrier_mail("hanako@softbank.ne.jp", "t", body, "Shift_JIS")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
        client.sendmail("hanako@softbank.ne.jp", ["staff@example.lg.jp"], raw)
    delivered = sink.wait(1)[0].message
    part = delivered.get_body(preferencelist=("plain",))
    assert part is not None
    assert f"了解です{KEYCAP_1}" in part.get_content()
