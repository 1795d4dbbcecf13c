"""What the writer produces reads back, through the stdlib parser, as what was meant."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from converters.jis import decode_cp50220
from gateway.pipeline import mimewrite
from gateway.pipeline.headers import decode_words
from gateway.pipeline.rebuild import assert_safe_headers
from tests.bodies_helpers import b_word, base_headers, deliver, message

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=300)


def _read(fields: str) -> email.message.EmailMessage:
    raw = (fields + "MIME-Version: 1.0\r\n\r\nx\r\n").encode("ascii")
    assert_safe_headers(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def _lines_fit(fields: str, tokens: list[str]) -> bool:
    """78 columns, unless one ASCII word is longer (it is never split)."""
    longest_token = max((len(t) for t in tokens), default=0)
    return all(len(line) <= max(78, len("Subject: ") + longest_token)
               for line in fields.split("\r\n"))


@settings(max_examples=150, deadline=None)
@given(_TEXT)
def test_any_subject_reads_back_and_folds_to_78(text: str) -> None:
    text = " ".join(text.split())  # rebuild cleans control characters and runs of space
    if not text:
        return
    tokens = mimewrite.text_tokens(text)
    fields = mimewrite.fold("Subject", tokens)
    assert _read(fields)["Subject"] == text
    assert _lines_fit(fields, tokens)


@settings(max_examples=150, deadline=None)
@given(_TEXT)
def test_any_display_name_stays_one_mailbox(name: str) -> None:
    name = " ".join(name.split())
    if not name:
        return  # a bare addr-spec: covered by the address-list test
    box = mimewrite.mailbox_tokens(name, "clerk@example.lg.jp")
    fields = mimewrite.address_field("From", [box])
    addresses = _read(fields)["From"].addresses
    assert [a.addr_spec for a in addresses] == ["clerk@example.lg.jp"]
    # The stdlib puts a space between adjacent encoded words of a display name (RFC 2047
    # 6.2 says to ignore it, as mail clients and our own decoder do): read it as they do.
    phrase = fields[len("From: "):fields.rindex("<")].replace("\r\n ", " ").strip()
    if phrase.startswith("=?"):
        assert decode_words(phrase) == name
    else:
        assert addresses[0].display_name == name
    assert _lines_fit(fields, box)


def test_address_list_quotes_what_needs_quoting() -> None:
    boxes = [mimewrite.mailbox_tokens('Yamada, Taro "T"', "taro@example.jp"),
             mimewrite.mailbox_tokens("", "a..b@example.jp"),
             mimewrite.mailbox_tokens("山田 太郎", "yamada@example.jp")]
    msg = _read(mimewrite.address_field("To", boxes))
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ('Yamada, Taro "T"', "taro@example.jp"), ("", "a..b@example.jp"),
        ("山田 太郎", "yamada@example.jp")]


def test_long_japanese_file_name_uses_rfc2231_continuations() -> None:
    name = "令和6年度_予算要求資料_市民生活部_第一四半期の見直し案（最終版）.pdf"
    part = mimewrite.attachment("application/pdf", name, b"%PDF-1.7 ...")
    raw = mimewrite.message("Subject: x\r\n", [mimewrite.text_part("本文\n", False), part])
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    [attached] = list(msg.iter_attachments())
    assert attached.get_filename() == name
    assert attached.get_content() == b"%PDF-1.7 ..."
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))


def test_iso2022jp_output_encodes_display_names_in_jis() -> None:
    """Legacy clients get ISO-2022-JP words in From/To too, not only in the Subject."""
    headers = [(k, v) for k, v in base_headers() if k != "From"]
    sender = f'{b_word("山田 太郎①", "ISO-2022-JP")} <yamada@example.co.jp>'
    raw = message([*headers, ("From", sender)], b"x")
    out = deliver(raw, output_charset="iso-2022-jp")[1]
    from_line = out.split(b"\r\nTo:", 1)[0].split(b"From: ", 1)[1].decode("ascii")
    words = [w for w in from_line.split() if w.startswith("=?")]
    assert words and all(w.startswith("=?ISO-2022-JP?B?") for w in words)
    decoded = "".join(decode_cp50220(base64.b64decode(w[16:-2])) for w in words)
    assert decoded == "山田 太郎①"
    assert "<yamada@example.co.jp>" in from_line


_MAILBOXES = st.one_of(
    st.builds(lambda n, a: f"{n} <{a}>", st.text("ab .'_-\"<>,=?", max_size=20),
              st.sampled_from(["a@b.jp", "x.y+z@mail.example.lg.jp", "a..b@c.jp"])),
    st.builds(lambda w, a: f"{b_word(w, 'utf-8')} <{a}>", st.text("山田 太郎<>,\"x", max_size=16),
              st.sampled_from(["a@b.jp", "y@c.jp"])),
    st.builds(lambda w: f"=?utf-8?q?{''.join(w)}?= <q@b.jp>",
              st.lists(st.sampled_from(["a", "_", "=3D", "=2C", "=3C", "=E5=B1=B1"]),
                       min_size=1, max_size=6)),
    st.sampled_from(["a@b.jp", "<a@b.jp>", "a@b.jp (comment)", "a@b.jp, c@d.jp",
                     '"Yamada, Taro" <t@b.jp>', "undisclosed-recipients:;"]),
)


@settings(max_examples=300, deadline=None)
@given(_MAILBOXES)
def test_simple_mailbox_fast_path_reads_as_the_stdlib_does(value: str) -> None:
    from gateway.pipeline.rebuild import _PARSE_POLICY, _SIMPLE_MAILBOX, _display_name, _mailboxes

    if _SIMPLE_MAILBOX.fullmatch(value) is None:
        return
    try:
        header = _PARSE_POLICY.header_factory("From", value)
    except Exception:  # the 3.11 parser crashes on some of these (". <a@b.jp>", odd
        return  # encoded words), which used to cost the header; the fast path keeps it
    expected = [(_display_name(a.display_name), a.addr_spec) for a in header.addresses]
    got = [(_display_name(d), spec) for d, spec in _mailboxes("From", value)]
    assert got == expected
