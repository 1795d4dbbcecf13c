"""parse → sanitize → rebuild fuzzed, bounded: hypothesis messages and the seeds replayed.

`fuzz.pipeline_harness.check` runs the pipeline as the worker does and checks the
output: nothing raised; 7-bit, CRLF only; re-parses with the stdlib's strict SMTP policy
without defects; allow-listed fields only; no text/html, only rendering types. The
converters are answered in-process (`FakeConverters`): the gateway's own code runs at
full speed; the sandboxed converters have their own tests. `make fuzz` runs the same
harness coverage-guided for minutes.
"""

from __future__ import annotations

import base64

import pytest
from bodies_helpers import b_word, base_headers, message, multipart, newsletter, text_part
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.pipeline_harness import SETTINGS, SETTINGS_JIS, check, fake_context, output_problems
from fuzz.seeds import pipeline_seeds
from gateway.pipeline.attachments import AttachmentContext

CTX: AttachmentContext = fake_context()


def assert_safe(raw: bytes, jis: bool = False) -> None:
    problems = check(raw, SETTINGS_JIS if jis else SETTINGS, CTX)
    assert not problems, problems


# -- regressions: inputs the fuzzer found ----------------------------------------------

@pytest.mark.parametrize("bad", ["<sample@samples.mugaika.]nvalid>", "<no-at-sign>",
                                 "<a..b@example.com>", "<a@b@c>", "<a(b@c>"])
def test_malformed_message_ids_are_not_copied(bad: str) -> None:
    """Found by `make fuzz` (pipeline, first minute): one changed byte in a sample's
    Message-ID (`.invalid` → `.]nvalid`) was copied as it was, and the stdlib's strict
    parser reads the rebuilt Message-ID as defective. Only RFC 5322 msg-ids are kept."""
    headers = [(k, v) for k, v in base_headers() if k != "Message-ID"]
    raw = message([*headers, ("Message-ID", bad), ("In-Reply-To", f"{bad} <ok@example.com>"),
                   ("References", f"<r@x.example> {bad}")], b"body")
    assert_safe(raw)
    from bodies_helpers import delivered_message
    msg = delivered_message(raw)
    assert bad not in str(msg["Message-ID"])
    assert msg["In-Reply-To"] == "<ok@example.com>"
    assert msg["References"] == "<r@x.example>"


def test_valid_message_ids_are_kept() -> None:
    headers = [(k, v) for k, v in base_headers() if k != "Message-ID"]
    raw = message([*headers, ("Message-ID", "<a.b+c@[192.0.2.1]>"),
                   ("References", "<x@y.example><z@w.example>")], b"body")
    from bodies_helpers import delivered_message
    msg = delivered_message(raw)
    assert msg["Message-ID"] == "<a.b+c@[192.0.2.1]>"
    assert msg["References"] == "<x@y.example> <z@w.example>"


@pytest.mark.parametrize("name", ["0\u00a1\U00010000\U00010000\U00010000\U00010000",
                                  "見積書" * 12 + ".docx", "é" * 40, "\U0001f600" * 9 + "x"])
def test_long_names_are_cut_between_characters(name: str) -> None:
    """Found by the hypothesis run of this file: an RFC 2231 continuation of an output
    name ended inside a UTF-8 sequence (`%F0%90%80` | `%80.txt`); the stdlib decodes each
    continuation alone and got undecodable bytes. Every name must come back whole."""
    import email
    import email.policy

    from gateway.pipeline.mimewrite import Part, attachment, disposition
    from gateway.pipeline.mimewrite import message as write_message

    for line in disposition(name).split("\r\n"):
        assert len(line) <= 78
    part: Part = attachment("text/plain", name, b"x")
    out = write_message("Subject: s\r\n", [attachment("text/plain", "a.txt", b"y"), part])
    assert not output_problems(out)
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert [p.get_filename() for p in parsed.iter_attachments()][-1] == name


def test_undecodable_encoded_words_are_not_passed_on() -> None:
    """Found by `make fuzz` (pipeline, second run): a display name whose encoded word our
    decoder refuses (a backquote in its base64) was written back as it was, an ASCII
    phrase that a lenient client would still decode, past our cleaning. Text holding
    `=?` is now encoded itself: it reads back as the characters we checked."""
    from bodies_helpers import delivered_message

    word = "=?utf-8?b?5aSW6`YOoIOmAgeS/oeiAhQ==?="
    headers = [(k, v) for k, v in base_headers() if k not in ("From", "Subject")]
    raw = message([*headers, ("From", f"{word} <sender@example.com>"), ("Subject", word)], b"x")
    assert_safe(raw)
    assert_safe(raw, jis=True)
    msg = delivered_message(raw)
    assert msg["From"].addresses[0].display_name == word
    assert msg["Subject"].endswith(word)


def test_undecodable_bytes_in_a_display_name_do_not_break_rebuild() -> None:
    """Found by `make fuzz` (pipeline, third run; two NULs in the header-injection seed's
    base64): the decoded display name held a lone surrogate (an undecodable byte), and
    encoding the rebuilt Reply-To raised UnicodeEncodeError: the worker would have
    quarantined the mail as a processing error. Surrogates are cleaned like controls."""
    raw = (b"From: Alice <alice@example.com>\r\nTo: staff@example.lg.jp\r\n"
           b"Subject: s\r\nReply-To: =?utf-8?B?IngiIDxldmlsQGV4YW1wbGU\x00\x00mV0PiwgeQ==?="
           b" <r@example.com>\r\nCc: \"x\xe2\x80\" <c@example.com>\r\n\r\nbody\r\n")
    assert_safe(raw)
    assert_safe(raw, jis=True)


@pytest.mark.parametrize("where", ["body", "subject"])
def test_a_nul_in_a_charset_label_does_not_break_the_pipeline(where: str) -> None:
    """Found by `make fuzz` (pipeline, fourth run): `charset=S\\x00hift_JIS`, in a
    Content-Type or an encoded word, makes `codecs.lookup` raise ValueError (not
    LookupError) and the whole message becomes a processing error."""
    head = b"From: a@example.com\r\nTo: s@example.lg.jp\r\n"
    raw = (head + b"Subject: =?S\x00hift_JIS?B?gqA=?=\r\n\r\nx\r\n" if where == "subject" else
           head + b"Content-Type: text/plain; charset=S\x00hift_JIS\r\n\r\n\x82\xa0\r\n")
    assert_safe(raw)


# -- seeds: `mugaika samples`, hand-made cases and the tests' own builders -------------

def builder_messages() -> list[tuple[str, bytes]]:
    """Messages built by tests/bodies_helpers.py, as the body tests use them."""
    parts = [text_part("本文です", "iso-2022-jp"), text_part("<p>html</p>", "utf-8", subtype="html"),
             text_part("quoted ü", "utf-8", cte="quoted-printable")]
    return [
        ("japanese-subject", message(base_headers(b_word("件名①", "iso-2022-jp")), b"x\n")),
        ("newsletter", message(base_headers(Content_Type="text/html; charset=utf-8"),
                               newsletter(20_000).encode())),
        ("alternative", message(base_headers(Content_Type='multipart/alternative; boundary="a"'),
                                multipart("alternative", "a", parts))),
    ]


SEEDS = pipeline_seeds() + builder_messages()


@pytest.mark.parametrize("name,raw", SEEDS, ids=[name for name, _ in SEEDS])
def test_seed_messages(name: str, raw: bytes) -> None:
    assert_safe(raw)
    assert_safe(raw, jis=True)


# -- hypothesis: messages from a grammar of MIME ---------------------------------------

NASTY = st.sampled_from(["\r\n", "\n", "\r", "\x00", "\x1b$B", "=?utf-8?B?", "?=", "<", ">",
                         "\"", ",", ";", "\\", "@", "\u202e", "①", "\t", " ", "=?", "(", ")"])
TEXT = st.lists(NASTY | st.text(max_size=8), max_size=8).map("".join)
FIELD_NAMES = st.sampled_from(["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID",
                               "In-Reply-To", "References", "Bcc", "X-Evil", "Content-Type",
                               "MIME-Version", "Content-Transfer-Encoding", "Received"])
TYPES = st.sampled_from(["text/plain", "text/html", "application/octet-stream",
                         "application/pdf", "image/png", "message/rfc822", "text/x-weird",
                         "application/ms-tnef", "multipart/mixed"])
CHARSETS = st.sampled_from(["utf-8", "iso-2022-jp", "shift_jis", "utf-7", "x-unknown", ""])
CTES = st.sampled_from(["7bit", "base64", "quoted-printable", "x-uuencode", "bogus", ""])


def _encoded_value(text: str) -> str:
    return f"=?utf-8?B?{base64.b64encode(text.encode('utf-8', 'surrogatepass')).decode()}?="


@st.composite
def fields(draw: st.DrawFn) -> bytes:
    name = draw(FIELD_NAMES)
    value = draw(TEXT)
    if draw(st.booleans()):
        value = _encoded_value(value)
    return f"{name}: {value}".encode("utf-8", "surrogatepass")


@st.composite
def leaves(draw: st.DrawFn) -> bytes:
    ctype, charset, cte = draw(TYPES), draw(CHARSETS), draw(CTES)
    name = draw(st.none() | TEXT)
    head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "")
    if name is not None:
        head += f"\r\nContent-Disposition: attachment; filename=\"{name}\""
    if cte:
        head += f"\r\nContent-Transfer-Encoding: {cte}"
    body = draw(st.binary(max_size=200) | TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
    if cte == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    return head.encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body


def multiparts(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
        parts = draw(st.lists(children, max_size=4))
        boundary = draw(st.sampled_from(["b", "=_x", "a b", ""]))
        head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
        return head + multipart(subtype, boundary, parts)
    return build()


ENTITIES = st.recursive(leaves(), multiparts, max_leaves=6)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    head = b"\r\n".join(draw(st.lists(fields(), max_size=8)))
    entity = draw(ENTITIES)
    if draw(st.booleans()):  # sometimes forwarded: a whole message as a part
        inner = draw(st.lists(fields(), max_size=3))
        entity = b"Content-Type: message/rfc822\r\n\r\n" + b"\r\n".join(inner) + b"\r\n" + entity
    raw = head + (b"\r\n" if head else b"") + entity
    ending = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    return raw.replace(b"\r\n", ending)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=messages(), jis=st.booleans())
def test_messages_keep_the_invariants(raw: bytes, jis: bool) -> None:
    assert_safe(raw, jis)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(raw=st.binary(max_size=2000))
def test_any_bytes_keep_the_invariants(raw: bytes) -> None:
    assert_safe(raw)


# -- the checks can fail: planted unsafe outputs are caught ----------------------------

GOOD = (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n'
        b"\r\naGk=\r\n")


@pytest.mark.parametrize("bad,why", [
    (GOOD.replace(b"Subject: s", b"Bcc: x@y.example"), "outside the allow-list"),
    (GOOD.replace(b"text/plain", b"text/html"), "part of type text/html"),
    (GOOD.replace(b"aGk=\r\n", b"aGk=\n"), "bare CR or LF"),
    (GOOD.replace(b"Subject: s", "Subject: ü".encode()), "not 7-bit"),
    (GOOD.replace(b"From: a@example.com", b"From: a@b@c"), "From"),
])
def test_unsafe_outputs_are_caught(bad: bytes, why: str) -> None:
    assert not output_problems(GOOD)
    assert any(why in p for p in output_problems(bad)), output_problems(bad)
