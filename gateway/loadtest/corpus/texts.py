"""Samples whose difficulty is in the body and headers: legacy charsets, HTML, defects."""

from __future__ import annotations

import base64

from gateway.loadtest.corpus.japanese import encode_iso2022jp_cp932, encoded_word_iso2022jp
from gateway.loadtest.corpus.mail import mime_mail, raw_mail

NEC_TEXT = (
    "関係各位\n\n"
    "お世話になっております。㈱山田商事の髙橋…ではなく高橋です。\n"
    "第①回説明会はⅢ期工事の件で、㍻から続く案件です。\n"
    "№123、㌔、㍉、∑ を含みます。\n\n"
    "よろしくお願いいたします。\n"
)


def iso2022jp_nec() -> bytes:
    """ISO-2022-JP body and subject with NEC row-13 characters (CP50220 style)."""
    text = NEC_TEXT.replace("髙橋…ではなく", "")  # 髙 is an IBM extension: not in JIS
    return raw_mail("iso2022jp-nec", [
        ("Subject", encoded_word_iso2022jp("【ご案内】第①回説明会（㈱山田商事）")),
        ("Content-Type", 'text/plain; charset="ISO-2022-JP"'),
        ("Content-Transfer-Encoding", "7bit"),
    ], encode_iso2022jp_cp932(text))


def shift_jis() -> bytes:
    """Labelled Shift_JIS but containing CP932-only characters (髙, ①): decode as CP932."""
    subject = base64.b64encode("髙橋より①のご連絡".encode("cp932")).decode()
    return raw_mail("shift-jis", [
        ("Subject", f"=?Shift_JIS?B?{subject}?="),
        ("Content-Type", "text/plain; charset=Shift_JIS"),
        ("Content-Transfer-Encoding", "8bit"),
    ], NEC_TEXT.encode("cp932"))


def euc_jp() -> bytes:
    text = "住民税の申告期限は3月15日です。\n窓口は市役所本庁舎2階です。\n"
    return raw_mail("euc-jp", [
        ("Subject", "=?EUC-JP?B?" + base64.b64encode("申告のご案内".encode("euc_jp")).decode()
         + "?="),
        ("Content-Type", "text/plain; charset=EUC-JP"),
        ("Content-Transfer-Encoding", "8bit"),
    ], text.encode("euc_jp"))


NEWSLETTER = """<!DOCTYPE html><html><head><meta charset="utf-8">
<style>.hide{display:none}</style><script>document.title='tracking';</script></head>
<body>
<h1>市政だより 4月号</h1>
<p>春の健康診断のお知らせです。</p>
<div style="display:none">隠しテキスト: このテキストは表示されません</div>
<span style="font-size:0">ゼロサイズの隠しテキスト</span>
<p>詳しくは <a href="http://phish.example.invalid/login">https://www.city.example.lg.jp/kenshin</a>
をご覧ください。</p>
<table><tr><th>日付</th><th>会場</th></tr><tr><td>4月10日</td><td>市民会館</td></tr></table>
<a href="javascript:alert(1)">クリック</a>
<img src="http://tracker.example.invalid/pixel.gif?id=12345" width="1" height="1">
<!-- a comment that must not survive -->
</body></html>
"""


def html_newsletter() -> bytes:
    """HTML only: hidden text, a link whose text shows another URL, script, tracker."""
    return raw_mail("html-newsletter", [
        ("Subject", "=?UTF-8?B?" + base64.b64encode("市政だより 4月号".encode()).decode() + "?="),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Transfer-Encoding", "base64"),
    ], base64.encodebytes(NEWSLETTER.encode()))


def duplicate_content_type() -> bytes:
    """Two Content-Type headers: the stdlib takes the first, some clients the second."""
    body = (
        "--dup\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
        "--dup\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="hidden.exe"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"MZ" + bytes(62)).decode() + "--dup--\r\n"
    ).encode()
    return raw_mail("duplicate-content-type", [
        ("Content-Type", "text/plain; charset=us-ascii"),
        ("Content-Type", 'multipart/mixed; boundary="dup"'),
    ], body)


def broken_base64() -> bytes:
    """A text attachment whose base64 has junk characters and lost padding."""
    encoded = base64.b64encode("報告書の本文です。\n".encode()).decode().rstrip("=")
    broken = encoded[:8] + "!!**" + encoded[8:]
    body = (
        "--b64\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n本文\r\n"
        "--b64\r\nContent-Type: text/plain; charset=utf-8\r\n"
        'Content-Disposition: attachment; filename="report.txt"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + broken + "\r\n--b64--\r\n"
    ).encode()
    return raw_mail("broken-base64", [("Content-Type", 'multipart/mixed; boundary="b64"')],
                    body)


def deep_nesting(depth: int = 40) -> bytes:
    """Multiparts nested beyond any sane depth: the whole message must be quarantined."""
    opening = "".join(f'--n{i}\r\nContent-Type: multipart/mixed; boundary="n{i + 1}"\r\n\r\n'
                      for i in range(depth))
    closing = "".join(f"--n{i}--\r\n" for i in reversed(range(depth + 1)))
    body = (opening + f"--n{depth}\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" + closing)
    return raw_mail("deep-nesting", [("Content-Type", 'multipart/mixed; boundary="n0"')],
                    body.encode())


def ppap_password() -> bytes:
    """The second PPAP mail: the password for the previous one, in plain text."""
    return mime_mail("ppap-password", "【パスワード】見積書送付の件",
                     "先ほどお送りしたファイルのパスワードをお知らせします。\n"
                     "パスワード: Mugaika2025\n", [])


def plain_5kb(name: str = "plain-5kb") -> bytes:
    """About 5 KB of Japanese UTF-8 text: the smtp-source-style default load."""
    line = "市役所からのお知らせ：窓口の受付時間は平日8時30分から17時15分までです。\n"
    return mime_mail(name, "窓口受付時間のお知らせ", line * 33, [])

