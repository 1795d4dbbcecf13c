"""DATA as the gateway reads it (in blocks, not line by line), over a real socket.

Only <CRLF>.<CRLF> ends a message, wherever TCP cuts it; dot-stuffing is undone; an
empty message, an oversized one and an overlong line get their precise replies, and the
session goes on after each.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.mimewrite import crlf
from gateway.relay.ingress import has_line_longer
from tests.conftest import Gateway, Sink

HEAD = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<staff@example.lg.jp>\r\nDATA\r\n"


class Session:
    """A raw SMTP session: send bytes in pieces, read replies line by line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buffer = b""
        assert self.reply().startswith(b"220")
        self.send(b"EHLO client.example\r\n")
        while not (line := self.reply()).startswith(b"250 "):
            assert line.startswith(b"250-")

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:  # separate segments: the end marker may be cut anywhere
            self.sock.sendall(piece)
            time.sleep(0.02)

    def reply(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def transaction(self, *data: bytes) -> bytes:
        self.send(HEAD)
        assert self.reply().startswith(b"250")  # MAIL
        assert self.reply().startswith(b"250")  # RCPT
        assert self.reply().startswith(b"354")
        self.send(*data)
        return self.reply()


def test_data_blocks_end_marker_and_stuffing(make_gateway: Callable[..., Gateway],
                                             sink: Sink) -> None:
    gw = make_gateway(sink.port, MUGAIKA_MAX_MESSAGE_BYTES="20000", MUGAIKA_MAX_LINE_BYTES="200")
    session = Session(gw.smtp_port)
    body = b"Subject: cut\r\n\r\n..leading dot\r\nend.\r\n.hidden\r\n"
    assert session.transaction(body + b"\r", b"\n.", b"\r", b"\n").startswith(b"250 2.0.0")
    assert session.transaction(b"Subject: x\r\n\r\n" + b"y" * 300 + b"\r\n.\r\n") == (
        b"500 5.5.6 Message line too long")
    big = (b"z" * 150 + b"\r\n") * 200  # 30 KB, over the 20 KB limit
    assert session.transaction(b"Subject: big\r\n\r\n" + big + b".\r\n").startswith(
        b"552 5.3.4")
    assert session.transaction(b".\r\n").startswith(b"250 2.0.0"), "an empty message"
    session.send(b"QUIT\r\n")
    assert session.reply().startswith(b"221")
    got = sink.wait(2)
    cut = next(r for r in got if r.message["Subject"].endswith("cut"))
    text = cut.message.get_content()
    assert ".leading dot\n" in text and "..leading" not in text, "dot-stuffing undone"
    assert "end.\n" in text and "\nhidden" in text


_LINES = st.lists(st.tuples(st.integers(0, 700), st.sampled_from([b"\r\n", b"\n", b"\r", b""])),
                  max_size=30)


@settings(max_examples=300, deadline=None)
@given(_LINES, st.integers(3, 600))
def test_long_line_check_agrees_with_splitting_the_lines(lines: list[tuple[int, bytes]],
                                                         limit: int) -> None:
    """Lines as `crlf` will make them: a CRLF, a bare CR and a bare LF each end one."""
    data = b"".join(b"x" * n + end for n, end in lines)
    expected = any(len(line) + 2 > limit for line in crlf(data).split(b"\r\n"))
    assert has_line_longer(data, limit) == expected


def test_cr_only_mail_is_measured_by_its_normalised_lines(
        make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    """Real mail with CR-only line ends (lines of 150 octets) is accepted and arrives with
    its lines; a real 10,000-octet line is still refused, whatever ends it."""
    gw = make_gateway(sink.port)
    session = Session(gw.smtp_port)
    lines = [b"line %03d " % n + b"z" * 140 for n in range(100)]  # 14.9 KB, no LF at all
    body = b"Subject: cr only\r\r" + b"\r".join(lines) + b"\r\n.\r\n"
    assert session.transaction(body).startswith(b"250 2.0.0")
    for end in (b"\r", b"\n", b"\r\n"):
        long_line = b"Subject: long\r\n\r\n" + b"y" * 10_000 + end + b"ok\r\n.\r\n"
        assert session.transaction(long_line) == b"500 5.5.6 Message line too long"
    text = sink.wait(1)[0].message.get_content()
    assert "line 000 " + "z" * 140 + "\n" in text and "line 099 " in text


@given(_LINES)
def test_crlf_mail_is_not_copied_and_bare_line_ends_become_crlf(
        lines: list[tuple[int, bytes]]) -> None:
    data = b"".join(b"x" * n + end for n, end in lines)
    normalized = crlf(data)
    assert b"\n" not in normalized.replace(b"\r\n", b"")
    assert b"\r" not in normalized.replace(b"\r\n", b"")
    if data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r"):
        assert normalized is data
