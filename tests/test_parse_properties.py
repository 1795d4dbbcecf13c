"""Property tests over generated MIME trees: whatever arrives, what leaves is safe.

Properties: sanitize never raises; the rebuilt message parses without a single defect;
it never contains a text/html part; it never carries a header outside the allow-list.
"""

from __future__ import annotations

import base64
import email
import email.policy
import quopri

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pipeline.rebuild import OUTPUT_HEADERS, rebuild
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings

SETTINGS = Settings()
HEADER_NAMES = ["Subject", "From", "To", "Cc", "Received", "X-Evil", "Bcc", "Content-Type",
                "Reply-To", "Message-ID", "References", "Date", "DKIM-Signature"]
CHARSETS = ["utf-8", "iso-2022-jp", "shift_jis", "euc-jp", "utf-7", "x-unknown", "rot13",
            "", "us-ascii", "iso-8859-1"]
LEAF_TYPES = ["text/plain", "text/html", "application/octet-stream", "image/png",
              "message/rfc822", "text/calendar", "multipart/mixed"]
CTES = ["7bit", "8bit", "base64", "quoted-printable", "x-gzip", ""]

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
header_values = st.one_of(
    texts,
    texts.map(lambda t: f"=?utf-8?B?{base64.b64encode(t.encode()).decode()}?="),
    st.sampled_from(["a\r\nBcc: x@y", "=?utf-8?Q?a=0D=0ABcc:_x@y?=", "<a@b>", "a@b, c@d",
                     "=?iso-2022-jp?B?GyRCLSEbKEI=?=", "=?broken", "\"q\" <x@y>"]),
)


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(LEAF_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(CTES))
    payload = draw(st.one_of(texts.map(lambda t: t.encode()), st.binary(max_size=60),
                             st.just(b"<html><script>x</script><p>hi</p></html>")))
    if cte == "base64":
        payload = base64.encodebytes(payload)
    elif cte == "quoted-printable":
        payload = quopri.encodestring(payload)
    head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "")
    if draw(st.booleans()):
        head += f"\nContent-Disposition: attachment; filename=\"{draw(texts)}\""
    if cte:
        head += f"\nContent-Transfer-Encoding: {cte}"
    return head.encode("utf-8", "surrogateescape") + b"\n\n" + payload


def multipart_of(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
        boundary = draw(st.sampled_from(["b1", "=_x", "same", "a b", ""]))
        parts = draw(children)
        body = b"".join(b"--" + boundary.encode() + b"\n" + p + b"\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\n"
        return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"\n\n').encode() + body
    return build()


trees = st.recursive(leaf(), lambda inner: multipart_of(st.lists(inner, max_size=4)),
                     max_leaves=12)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values),
                            max_size=6))
    head = "".join(f"{k}: {v}\n" for k, v in headers).encode("utf-8", "surrogateescape")
    raw = head + draw(trees)
    if draw(st.booleans()):
        raw = raw.replace(b"\n", b"\r\n")
    return raw


def check(raw: bytes) -> None:
    result = sanitize(raw, "Q", SETTINGS)
    out = rebuild(result, SETTINGS)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    for part in msg.walk():
        assert part.get_content_type() != "text/html"
        assert not part.defects, part.defects
    for name in msg.keys():
        assert name.lower() in OUTPUT_HEADERS or name.lower().startswith("x-mugaika-")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_mime_trees_are_always_safe(raw: bytes) -> None:
    check(raw)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_always_safe(raw: bytes) -> None:
    check(raw)
