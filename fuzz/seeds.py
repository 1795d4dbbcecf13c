"""Seed inputs: the `mugaika samples` corpus, plus hand-made edge cases.

The samples (gateway.loadtest.corpus) are built in memory, as `mugaika samples` writes
them, leaving out the 20 MB one. The hand-made cases name what they aim at: the places
where a mistake would let something through (header injection, bare line ends,
smuggling, hidden addresses) or make the gateway answer wrongly.
"""

from __future__ import annotations

import base64
from pathlib import Path

from fuzz.smtp_harness import session_bytes

#: Larger seeds only slow the fuzzer down (and libFuzzer cuts inputs at -max_len).
MAX_SEED_BYTES = 64_000


def sample_messages(max_bytes: int = MAX_SEED_BYTES) -> list[tuple[str, bytes]]:
    """(name, message) of every `mugaika samples` sample up to `max_bytes`."""
    from gateway.loadtest.corpus.catalogue import catalogue

    out = []
    for sample in catalogue():
        if "heavy" in sample.tags:
            continue
        data = sample.build()
        if len(data) <= max_bytes:
            out.append((sample.name, data))
    return out


def _b64word(text: str) -> str:
    return f"=?utf-8?B?{base64.b64encode(text.encode()).decode()}?="


_HEAD = (b"From: Alice <alice@example.com>\r\nTo: staff@example.lg.jp\r\n"
         b"Date: Wed, 25 Nov 2026 10:00:00 +0900\r\nMessage-ID: <m1@example.com>\r\n"
         b"MIME-Version: 1.0\r\n")


def crafted_messages() -> list[tuple[str, bytes]]:
    """Hand-made messages at the pipeline's edges."""
    injected = _b64word("hi\r\nBcc: evil@example.net\r\nX-Evil: 1")
    hidden = _b64word('"x" <evil@example.net>, y')
    mixed = (b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
             b'Content-Type: multipart/alternative; boundary="b2"\r\n\r\n--b2\r\n'
             b"Content-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n--b2\r\n"
             b"Content-Type: text/html\r\n\r\n<p>html<script>x()</script></p>\r\n--b2--\r\n"
             b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + _HEAD +
             b"Subject: inner\r\nContent-Type: text/html\r\n\r\n<b>inner</b>\r\n--b1\r\n"
             b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment;"
             b" filename*=utf-8''a%0D%0Ab%E2%80%AEfdp.exe\r\n\r\nMZ\x90\x00\r\n--b1--\r\n")
    return [
        ("header-injection", _HEAD + f"Subject: {injected}\r\nReply-To: {hidden} <r@example.com>"
         "\r\n\r\nbody\r\n".encode()),
        ("mixed-alternative-forwarded", _HEAD + b"Subject: mixed\r\n" + mixed),
        ("bare-line-ends", _HEAD + b"Subject: bare\r\n\r\na\rb\nc\r\n.\n.\r\r.\r\n"),
        ("html-only", _HEAD + b"Subject: h\r\nContent-Type: text/html; charset=shift_jis\r\n\r\n"
         b"<html><body onload=x()><a href='javascript:1'>\x82\xa0</a></body></html>\r\n"),
        ("utf7-qp", _HEAD + b"Subject: =?utf-7?Q?+ZeVnLIqe-?=\r\nContent-Type: text/plain;"
         b" charset=utf-7\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n+ZeVnLIqe-=0D=0A=\r\n"),
        ("long-lines", _HEAD + b"Subject: " + b"s" * 2000 + b"\r\n\r\n" + b"x" * 9000 + b"\r\n"),
        ("ids-and-dates", _HEAD.replace(b"Date: Wed", b"Date: Xyz") +
         b"In-Reply-To: <a@b> <c@d>\r\nReferences: " + b"<r@x> " * 80 + b"\r\n\r\nx\r\n"),
        ("no-header", b"\r\njust a body\r\n"),
        ("empty", b""),
        ("iso2022jp-junk", _HEAD + b"Subject: =?iso-2022-jp?B?GyRCJCIbKEI=?=\r\n"
         b"Content-Type: text/plain; charset=iso-2022-jp\r\n\r\n\x1b$B$\"\x1b(J\x1b$@\x7f\r\n"),
    ]


def crafted_sessions() -> list[tuple[str, bytes]]:
    """Hand-made SMTP sessions at the server's edges."""
    body = b"Subject: s\r\n\r\nline\r\n"
    return [
        ("pipelined-two", session_bytes(body).replace(b"QUIT\r\n", b"") + session_bytes(body)),
        ("smuggling", b"HELO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<staff@example.lg.jp>\r\n"
         b"DATA\r\nx\n.\nMAIL FROM:<b@example.com>\r\n\r.\ry\n.\r\nz\r\n.\r\n"),
        ("bad-addresses", b"EHLO c\r\nMAIL FROM:<\"x\rX-Injected: y\"@example.com>\r\n"
         b"MAIL FROM:<a..b@example.com> SIZE=100 BODY=8BITMIME\r\n"
         b"RCPT TO:<user%evil@example.lg.jp>\r\nRCPT TO:<postmaster>\r\n"
         b"RCPT TO:<x@[127.0.0.1]>\r\nRCPT TO:<\"a@b\"@example.lg.jp>\r\nRCPT TO:<a\x00@x>\r\n"
         b"DATA\r\n.\r\nQUIT\r\n"),
        ("params-and-order", b"DATA\r\nMAIL FROM:<a@b.c>\r\nEHLO c\r\nMAIL FROM:<> SIZE=99999999\r\n"
         b"MAIL FROM:<a@b.c> FOO=1\r\nMAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\nDATA\r\n"
         b"RSET x\r\nRSET\r\nVRFY\r\nVRFY a\r\nHELP\r\nNOOP\r\nquit now\r\nqUiT\r\n"),
        ("limits", b"EHLO c\r\n" + b"X" * 600 + b"\r\nMAIL FROM:<a@b.c>\r\n" +
         b"".join(b"RCPT TO:<r%d@example.lg.jp>\r\n" % i for i in range(7)) +
         b"DATA\r\n" + b"y" * 1500 + b"\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<s@example.lg.jp>\r\n"
         b"DATA\r\n" + b"z\r\n" * 8000 + b".\r\n"),
        ("junk", b"\xff\xfe\r\n\r\n\x00\x01\r\nEHLO\r\nHELO\r\n\xe3\x81\x82 x\r\nFOO\r\n"),
        ("bare-lf-commands", b"helo c\nmail from:<a@b.c>\nrcpt to:<s@example.lg.jp>\ndata\n"
         b"a\r\n..b\r\n.\r\n"),
    ]


def smtp_seeds() -> list[tuple[str, bytes]]:
    """Sessions: each sample delivered whole, and the hand-made sessions."""
    samples = [(f"sample-{name}", session_bytes(data, rcpt="staff@example.lg.jp"))
               for name, data in sample_messages()]
    return samples + crafted_sessions()


def pipeline_seeds() -> list[tuple[str, bytes]]:
    return sample_messages() + crafted_messages()


def write_seeds(directory: Path, seeds: list[tuple[str, bytes]], prefixes: bytes) -> int:
    """Seed files for libFuzzer: each seed once per mode byte in `prefixes`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds:
        for mode in prefixes:
            (directory / f"{name}-{mode:02x}").write_bytes(bytes([mode]) + data)
    return len(seeds) * len(prefixes)
