"""HTML mail becomes readable plain text with nothing active or hidden left in it."""

from __future__ import annotations

import time

from converters.html import defang_urls, html_to_text
from tests.bodies_helpers import (
    base_headers,
    deliver,
    delivered_message,
    delivered_text,
    message,
    multipart,
    newsletter,
    text_part,
)


def html_mail(html: str, charset: str = "utf-8") -> bytes:
    return message(base_headers(Content_Type=f"text/html; charset={charset}",
                                Content_Transfer_Encoding="8bit"), html.encode(charset))


def test_newsletter_keeps_shape_and_drops_hidden_text() -> None:
    """Headings, paragraphs, table rows and list items keep their lines; hidden text goes."""
    text = delivered_text(html_mail(newsletter(30_000)))
    assert "第1号 市からのお知らせ\n\n市民の皆さまへ。" in text
    assert "日時 | 会場 | 定員\n12月1日 10:00 | 市民会館 第1会議室 | 50名\n" in text
    assert "・申込は不要です\n・駐車場に限りがあります" in text
    for hidden in ("PREHEADER-HIDDEN", "HIDDEN-DIV", "ZERO-FONT-"):
        assert hidden not in text


def test_links_show_their_real_target_defanged() -> None:
    text = delivered_text(html_mail(
        '<p>詳しくは<a href="https://www.city.example.lg.jp/a?b=1">こちら</a>へ</p>'))
    assert "こちら <hxxps://www.city.example.lg.jp/a?b=1>へ" in text
    assert "https://" not in text.split("――")[-1]


def test_defang_can_be_turned_off() -> None:
    text = delivered_text(html_mail('<a href="http://example.com/x">見る</a>'), links="keep")
    assert "見る <http://example.com/x>" in text


def test_links_can_be_removed_from_html_and_plain_text() -> None:
    text = delivered_text(html_mail(
        '<p>申請は<a href="https://evil.example.net/login?id=1">こちら</a>から。'
        '控え：HTTPS://evil.example.net/x、ftp://files.example.net/a</p>'), links="remove")
    body = text.split("――")[-1]
    assert "こちら <[リンク削除]>から。" in body
    assert "控え：[リンク削除]、[リンク削除]" in body
    assert "evil.example.net" not in body and "hxxp" not in body
    assert "本文中のリンク（URL）は組織の方針により削除しています。" in text


def test_mismatched_link_is_flagged_in_notice_and_report() -> None:
    raw = html_mail('<a href="https://login.evil.example.net/">https://www.city.example.lg.jp/</a>'
                    ' <a href="https://www.city.example.lg.jp/top">www.city.example.lg.jp</a>')
    result, _ = deliver(raw)
    warnings = result.report.link_warnings  # type: ignore[attr-defined]
    assert [(w.text, w.target) for w in warnings] == [
        ("https://www.city.example.lg.jp/", "https://login.evil.example.net/")]
    text = delivered_text(raw)
    assert "フィッシングの可能性" in text
    assert "実際のリンク先: hxxps://login.evil.example.net/" in text
    msg = delivered_message(raw)
    assert msg["X-Mugaika-Link-Warnings"] == "1"


def test_link_with_user_info_hiding_the_real_host_is_flagged() -> None:
    html = '<a href="https://www.city.example.lg.jp@evil.example/x">市のお知らせ</a>'
    assert html_to_text(html).mismatched_links == (
        ("市のお知らせ", "https://www.city.example.lg.jp@evil.example/x"),)


def test_file_names_and_plain_words_are_not_taken_for_hosts() -> None:
    html = ('<a href="https://files.example.com/r.pdf">report.pdf</a> '
            '<a href="https://a.example.com/">example.com</a> '
            '<a href="https://b.example.net/">詳しくはこちら</a>')
    assert html_to_text(html).mismatched_links == (("example.com", "https://a.example.com/"),)


def test_javascript_and_data_urls_are_removed() -> None:
    raw = html_mail('<a href="javascript:alert(1)">押す</a> <a href=" jav&#x09;ascript:x">二</a>'
                    ' <a href="data:text/html;base64,PHNjcmlwdD4=">三</a>'
                    ' <img src="data:image/png;base64,AAAA" alt="埋め込み">')
    text = delivered_text(raw)
    assert "押す" in text and "三" in text
    for bad in ("javascript", "data:", "base64", "alert"):
        assert bad not in text


def test_scripts_styles_comments_and_head_never_show() -> None:
    raw = html_mail("<html><head><title>TITLE</title><style>p{color:red}</style></head><body>"
                    "<script>var SECRET=1</script><!-- COMMENT --><p>見える</p>"
                    "<noscript>NOSCRIPT</noscript></body></html>")
    text = delivered_text(raw)
    assert "見える" in text
    for gone in ("TITLE", "color:red", "SECRET", "COMMENT", "NOSCRIPT"):
        assert gone not in text


def test_hidden_styles_of_every_kind() -> None:
    html = ('<div style="DISPLAY: NONE !important">A1</div><span style="visibility:hidden">A2'
            '</span><p style="font-size:0px">A3</p><p style="opacity:0">A4</p>'
            '<div hidden>A5</div><div style="max-height:0;overflow:hidden">A6</div>'
            '<p style="font-size:12px">VISIBLE</p>'
            '<style>.x{display:none} @media (max-width:600px){.y{display:none}}</style>'
            '<p class="x">A7</p><p class="y">RESPONSIVE</p>')
    text = html_to_text(html).text
    assert "VISIBLE" in text and "RESPONSIVE" in text
    for n in range(1, 8):
        assert f"A{n}" not in text


def test_pre_and_ordered_lists_and_line_breaks() -> None:
    html = "<ol><li>一</li><li>二</li></ol><pre>  a\n    b</pre>行1<br>行2<br><br>行3"
    text = html_to_text(html).text
    assert "1. 一\n2. 二" in text
    assert "  a\n    b" in text
    assert "行1\n行2\n\n行3" in text


def test_inline_cid_image_becomes_attachment_and_is_named_in_text() -> None:
    """A cid: image is handed to the attachment pipeline like any image, with a name."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    import base64
    image = (b"Content-Type: image/png\nContent-ID: <logo@x>\nContent-Transfer-Encoding: base64"
             b"\n\n" + base64.encodebytes(png))
    related = multipart("related", "rel", [
        text_part('<p>ロゴ: <img src="cid:logo@x" alt="logo"></p>', "utf-8", subtype="html"),
        image,
    ])
    raw = message(base_headers(Content_Type='multipart/related; boundary="rel"'), related)
    result, _ = deliver(raw)
    actions = {a.part: a for a in result.report.actions}  # type: ignore[attr-defined]
    assert actions["2"].filename == "inline-2.png"
    assert "ロゴ: [画像: inline-2.png]" in delivered_text(raw)


def test_output_never_contains_html() -> None:
    raw = html_mail("<p><b>太字</b></p>")
    msg = delivered_message(raw)
    assert all(part.get_content_type() != "text/html" for part in msg.walk())
    assert b"<b>" not in deliver(raw)[1]


def test_defang_urls_rewrites_only_schemes() -> None:
    assert defang_urls("see http://a.b and HTTPS://C.D, ftp://e") == \
        "see hxxp://a.b and HXXPS://C.D, fxp://e"
    assert defang_urls("xhttp://a mailto:x@y") == "xhttp://a mailto:x@y"


def test_plain_text_urls_are_defanged_too() -> None:
    raw = message(base_headers(Content_Type="text/plain; charset=utf-8"),
                  "資料: https://files.example.com/a.zip".encode())
    assert "資料: hxxps://files.example.com/a.zip" in delivered_text(raw)


def test_html_to_text_speed_on_100kb_newsletter() -> None:
    """Generous bound (shared CI cores); bench/bench_text.py measures it properly."""
    html = newsletter(70_000)
    assert 90_000 < len(html.encode()) < 110_000
    html_to_text(html)
    start = time.perf_counter()
    for _ in range(5):
        html_to_text(html)
    assert (time.perf_counter() - start) / 5 < 0.1


def test_blockquotes_are_quoted_like_a_mail_client_does() -> None:
    html = ("<p>返信です</p><blockquote><p>元のメール</p><p>二段落目<br>改行</p>"
            "<blockquote>さらに前</blockquote></blockquote><p>署名</p>")
    assert html_to_text(html).text == (
        "返信です\n\n> 元のメール\n\n> 二段落目\n> 改行\n\n>> さらに前\n\n署名")


def test_link_text_after_a_line_break_is_still_checked_for_phishing() -> None:
    """A <br> or block inside a link must not hide its URL-looking text from the check."""
    raw = html_mail('<a href="https://login.evil.example.net/"><br>www.city.example.lg.jp</a>'
                    '<a href="https://login.evil.example.net/x"><div>https://www.city.example.lg.jp/'
                    '</div></a>')
    result, _ = deliver(raw)
    warnings = result.report.link_warnings  # type: ignore[attr-defined]
    assert [(w.text, w.target) for w in warnings] == [
        ("www.city.example.lg.jp", "https://login.evil.example.net/"),
        ("https://www.city.example.lg.jp/", "https://login.evil.example.net/x")]
    text = delivered_text(raw)
    assert "実際のリンク先: hxxps://login.evil.example.net/" in text
    assert not any("\ue000" <= ch <= "\ue00f" for ch in text)


def test_rows_without_end_tags_keep_their_lines() -> None:
    assert html_to_text("<table><tr><td>a<td>b<tr><td>c<td>d</table>後").text == "ab\ncd\n\n後"


def test_tags_in_mixed_case_are_laid_out_and_dropped_alike() -> None:
    """Only the first letter upper-case or only a later one: the same layout either way."""
    for html in ("<tAble><tr><td>一</tD><td>二</td></tr></taBle>後<sCRIPT>var SECRET=1</sCRIPT>"
                 "<p>段落</p><sTyle>.x{display:none}</sTyle><span class='x'>HIDDEN</span>",
                 "<TAble><tr><td>一</TD><td>二</td></tr></Table>後<SCRIPT>var SECRET=1</SCRIPT>"
                 "<P>段落</p><STyle>.x{display:none}</STyle><span class='x'>HIDDEN</span>"):
        assert html_to_text(html).text == "一 | 二\n\n後\n\n段落"


def test_a_greater_than_sign_inside_a_br_attribute_leaves_no_stray_text() -> None:
    assert html_to_text('<p>前<br title="a>b">後</p>').text == "前\n後"


def test_a_frameset_replacing_the_body_does_not_bring_back_scripts() -> None:
    """lexbor keeps pointing at a body a <frameset> replaced; its script must not show."""
    for html in ("<td><script>var SECRET=1</script><frameset>",
                 "<td><style>.SECRET{}</style><frameset><frame></frameset>"):
        assert "SECRET" not in html_to_text(html).text
