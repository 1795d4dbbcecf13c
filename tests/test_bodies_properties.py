"""Property tests for HTML→text: any tag soup gives text without markers or script links."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.html import html_to_text

TAGS = ["p", "div", "table", "tr", "td", "th", "ul", "ol", "li", "b", "blockquote", "pre",
        "br", "hr", "style", "script", "dialog", "h1", "textarea", "TD", "TR", "Table",
        "BLOCKQUOTE", "a href='http://x.example/a'", "a href='javascript:steal()'",
        "span style='display:none'", "span hidden", "font style='font-size:0'",
        "img src='cid:x' alt='a'"]
pieces = st.one_of(
    st.sampled_from(TAGS).map(lambda t: f"<{t}>"),
    st.sampled_from(TAGS).map(lambda t: f"</{t.split()[0]}>"),
    st.text(alphabet="あいう abc\n\t&;", max_size=8),
    st.sampled_from(["\ue000", "\ue003", "\ue007", "<!--", "-->", "&nbsp;", "<", ">"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pieces, max_size=60))
def test_any_tag_soup_converts_cleanly(parts: list[str]) -> None:
    result = html_to_text("".join(parts), cid_names={"x": "n.png"})
    assert "steal" not in result.text
    assert not any("\ue000" <= ch <= "\ue00f" for ch in result.text)
