"""HTML built to stall the parser (nesting bombs) is delivered as text, with the reason."""

from __future__ import annotations

import email
import email.policy

from converters.html import MAX_NESTING, html_to_text
from tests.bodies_helpers import base_headers, deliver, message, newsletter


def html_mail(html: str) -> bytes:
    return message(base_headers(Content_Type="text/html; charset=utf-8",
                                Content_Transfer_Encoding="8bit"), html.encode())


def nested_div_bomb(depth: int) -> str:
    inner = ("<p>市からのお知らせです。</p><script>alert('x')</script>"
             "<a href='https://www.city.example.lg.jp/a'>詳細</a>")
    return "<div>" * depth + inner + "</div>" * depth


def _delivered(raw: bytes, **overrides: object) -> tuple[list[str], str, str]:
    """(report defects, action notes of the body, delivered text) of one message."""
    result, out = deliver(raw, **overrides)
    report = result.report  # type: ignore[attr-defined]
    notes = [note for action in report.actions for note in action.notes]
    msg = email.message_from_bytes(out, policy=email.policy.default)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return list(report.defects), notes, str(part.get_content())


def test_200000_nested_divs_are_delivered_as_text_with_the_reason() -> None:
    defects, notes, text = _delivered(html_mail(nested_div_bomb(200_000)))
    assert "市からのお知らせです。" in text
    assert "詳細 <hxxps://www.city.example.lg.jp/a>" in text
    assert "alert" not in text
    assert "html_nesting_too_deep" in defects
    assert "html_nesting_depth=200000" in notes
    assert "HTMLの入れ子が異常に深かった" in text


def test_english_notice_names_the_nesting() -> None:
    _, _, text = _delivered(html_mail(nested_div_bomb(5_000)), language="en")
    assert "nested abnormally deeply" in text


def test_nesting_hidden_under_other_tags_is_measured() -> None:
    """Unclosed <span>s and self-closed <div/>s nest like any element (HTML ignores "/>")."""
    for bomb in ("<span>" * 3_000 + "本文", "<div/>" * 3_000 + "本文"):
        rendered = html_to_text(bomb)
        assert rendered.text == "本文"
        assert rendered.nesting_depth == 3_000


def test_layout_up_to_the_cap_is_kept() -> None:
    html = ("<div>" * (MAX_NESTING - 1) + "<table><tr><td>a</td><td>b</td></tr></table>"
            + "</div>" * (MAX_NESTING - 1))
    rendered = html_to_text(html)
    assert rendered.text == "a | b"
    assert rendered.nesting_depth == 0


def test_flattened_tags_keep_words_apart_and_the_rest_of_the_document() -> None:
    html = ("<div>" * (MAX_NESTING + 10) + "<span>one</span><span>two</span>"
            + "</div>" * (MAX_NESTING + 10) + "<p>after</p>")
    rendered = html_to_text(html)
    assert rendered.text.split() == ["one", "two", "after"]
    assert rendered.nesting_depth == MAX_NESTING + 11


def test_sloppy_legacy_html_is_not_taken_for_a_bomb() -> None:
    """Thousands of unclosed <p>, <li>, <td> and <br> do not nest; a newsletter neither."""
    legacy = ("<P>段落" * 2_000 + "<ul>" + "<li>項目" * 2_000 + "</ul><table>"
              + "<tr><td>a<td>b" * 2_000 + "</table>" + "行<br>" * 2_000)
    for html in (legacy, newsletter(300_000)):
        assert html_to_text(html).nesting_depth == 0
    defects, _, text = _delivered(html_mail(newsletter(30_000)))
    assert "html_nesting_too_deep" not in defects
    assert "入れ子" not in text

