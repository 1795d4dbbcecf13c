"""Test messages for bodies, headers and Japanese text, built by the tests themselves.

Each builder returns raw bytes exactly as a sending MTA would hand them over (CRLF line
ends), so that the tests exercise parsing, decoding and rebuilding end to end.
"""

from __future__ import annotations

import base64
import quopri

from converters.charset import encode_iso2022jp

CRLF = b"\r\n"


def message(headers: list[tuple[str, str]], body: bytes) -> bytes:
    """Join ASCII header lines and a body with CRLF line ends."""
    head = CRLF.join(f"{k}: {v}".encode("ascii") for k, v in headers)
    return head + CRLF + CRLF + body.replace(b"\r\n", b"\n").replace(b"\n", CRLF)


def b_word(text: str, charset: str) -> str:
    """One RFC 2047 B-encoded word; ISO-2022-JP uses the CP50220 encoder (NEC chars)."""
    raw = encode_iso2022jp(text) if charset.lower() == "iso-2022-jp" else text.encode(charset)
    assert raw is not None
    return f"=?{charset}?B?{base64.b64encode(raw).decode('ascii')}?="


def base_headers(subject: str = "test", **extra: str) -> list[tuple[str, str]]:
    headers = [
        ("From", "Sender <sender@example.com>"),
        ("To", "staff@example.lg.jp"),
        ("Subject", subject),
        ("Date", "Wed, 25 Nov 2026 10:00:00 +0900"),
        ("Message-ID", "<m1@example.com>"),
        ("MIME-Version", "1.0"),
    ]
    headers.extend((k.replace("_", "-"), v) for k, v in extra.items())
    return headers


def text_part(text: str, charset: str, cte: str = "base64", subtype: str = "plain") -> bytes:
    """A MIME leaf (headers and body) holding `text` in `charset`."""
    if charset.lower() == "iso-2022-jp":
        raw = encode_iso2022jp(text)
        assert raw is not None
        cte = "7bit"
    else:
        raw = text.encode(charset)
    if cte == "base64":
        body = base64.encodebytes(raw)
    elif cte == "quoted-printable":
        body = quopri.encodestring(raw)
    else:
        body = raw
    head = (f"Content-Type: text/{subtype}; charset={charset}\n"
            f"Content-Transfer-Encoding: {cte}\n\n").encode("ascii")
    return head + body


def multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    """The body of a multipart (without its own Content-Type header)."""
    out = [b"This is a multi-part message in MIME format.\n"]
    for part in parts:
        out.append(f"--{boundary}\n".encode("ascii") + part.rstrip(b"\n") + b"\n")
    out.append(f"--{boundary}--\n".encode("ascii"))
    return b"".join(out)


def newsletter(target_bytes: int = 100_000) -> str:
    """A municipal-style HTML newsletter: nested layout tables, inline styles, hidden
    preheader, a data table, lists, tracking pixel and many links, about `target_bytes`."""
    head = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>メールマガジン</title>"
        "<style>.preheader{display:none!important} body{font-family:sans-serif}"
        "@media only screen and (max-width:600px){.wide{width:100%!important}}</style></head>"
        "<body><span class='preheader'>PREHEADER-HIDDEN</span>"
        "<div style='display:none;max-height:0;overflow:hidden'>HIDDEN-DIV</div>"
        "<table width='600' cellpadding='0' cellspacing='0' border='0' class='wide'>"
    )
    section = (
        "<tr><td style='padding:10px;font-size:14px;color:#333'>"
        "<h2 style='font-size:18px;margin:0'>第{n}号 市からのお知らせ</h2>"
        "<p style='line-height:1.6'>市民の皆さまへ。令和8年度の予算説明会を開催します。"
        "詳しくは<a href='https://www.city.example.lg.jp/news/{n}?utm_source=mail'>こちら</a>"
        "をご覧ください。<br>お問い合わせは情報政策課まで。</p>"
        "<table border='1' style='border-collapse:collapse'><tr><th>日時</th><th>会場</th>"
        "<th>定員</th></tr><tr><td>12月{n}日 10:00</td><td>市民会館 第{n}会議室</td>"
        "<td>50名</td></tr><tr><td>12月{n}日 14:00</td><td>北部支所</td><td>30名</td></tr>"
        "</table><ul><li>申込は不要です</li><li>駐車場に限りがあります</li></ul>"
        "<span style='font-size:0px'>ZERO-FONT-{n}</span>"
        "<img src='https://track.example.com/open/{n}.gif' width='1' height='1'>"
        "</td></tr>"
    )
    tail = (
        "<tr><td><a href='https://phish.example.net/login'>https://www.city.example.lg.jp/login</a>"
        " <a href='javascript:alert(1)'>スクリプト</a></td></tr></table></body></html>"
    )
    parts = [head]
    n = 1
    while sum(len(p) for p in parts) < target_bytes - len(tail):
        parts.append(section.replace("{n}", str(n)))
        n += 1
    parts.append(tail)
    return "".join(parts)


def deliver(raw: bytes, **overrides: object) -> tuple[object, bytes]:
    """Run sanitize + rebuild like the worker does; return (Sanitized, delivered bytes)."""
    from gateway.pipeline.rebuild import rebuild
    from gateway.pipeline.sanitize import sanitize
    from gateway.settings import Settings

    settings = Settings(**overrides)  # type: ignore[arg-type]
    result = sanitize(raw, "Q-TEST", settings)
    return result, rebuild(result, settings)


def delivered_message(raw: bytes, **overrides: object):  # type: ignore[no-untyped-def]
    """The delivered message as a recipient's client would parse it."""
    import email
    import email.policy

    _, out = deliver(raw, **overrides)
    return email.message_from_bytes(out, policy=email.policy.default)


def delivered_text(raw: bytes, **overrides: object) -> str:
    """The decoded text/plain body the recipient reads (notice included)."""
    msg = delivered_message(raw, **overrides)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")
