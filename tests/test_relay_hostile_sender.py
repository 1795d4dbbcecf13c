"""What a hostile sender tried on the relay (issue 16), over real SMTP on 127.0.0.1.

Addresses with control characters or broken dot-atoms are refused at MAIL and RCPT
before they can reach our Received line or the envelope sent downstream; the bare
`postmaster` is always accepted; and a front MTA that keeps its 20 sessions going, each
a new connection after the last one's QUIT, is never told it has too many.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.queue.envelope import Envelope
from gateway.queue.spool import Spool
from gateway.relay.ingress import IngressHandler
from gateway.settings import Settings
from tests.conftest import Gateway, Sink, plain_message


def _replies(port: int, commands: list[bytes], message: bytes) -> list[bytes]:
    """Send each command line (bytes as they are, bare CR and NUL included) and read
    its one-line reply, after the greeting and EHLO; then `message` (with its end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220")
        conn.sendall(b"EHLO client.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        replies = []
        for command in commands:
            conn.sendall(command + b"\r\n")
            replies.append(reader.readline().rstrip(b"\r\n"))
        conn.sendall(message)
        replies.append(reader.readline().rstrip(b"\r\n"))
        return replies


_BAD_LOCAL_PARTS = [b'"x\rX-Injected: yes"', b'"a\x00b"', b'"a\x1b[31m"', b'"a\x7fb"',
                    b'"a\\\rb"', b"a..b", b".a", b"a."]


def test_addresses_outside_rfc_5321_are_refused(gateway: Gateway, sink: Sink) -> None:
    """553 5.1.3 at MAIL and at RCPT, for each; the session goes on, and the mail sent
    in it afterwards reaches only the good recipient, with no injected header."""
    commands = [b"MAIL FROM:<" + local + b"@evil.example>" for local in _BAD_LOCAL_PARTS]
    commands.append(b"MAIL FROM:<a@example.com>")
    commands += [b"RCPT TO:<" + local + b"@example.lg.jp>" for local in _BAD_LOCAL_PARTS]
    commands += [b"RCPT TO:<staff@example.lg.jp>", b"DATA"]
    replies = _replies(gateway.smtp_port, commands, plain_message() + b".\r\n")
    refused = [b"553 5.1.3"] * len(_BAD_LOCAL_PARTS)
    assert [r[:9] for r in replies] == [*refused, b"250 2.1.0", *refused, b"250 2.1.5",
                                        b"354 End d", b"250 2.0.0"]
    got = sink.wait(1)[0]
    assert got.rcpt_tos == ["staff@example.lg.jp"]
    assert b"X-Injected" not in got.data


def test_quoted_local_part_that_rfc_5321_allows_is_delivered(gateway: Gateway,
                                                               sink: Sink) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail('"a b"@example.com', ['"staff x"@example.lg.jp'], plain_message())
    got = sink.wait(1)[0]
    assert (got.mail_from, got.rcpt_tos) == ('"a b"@example.com', ['"staff x"@example.lg.jp'])


def test_our_received_line_is_checked_like_the_rebuilt_header(tmp_path: Path) -> None:
    """Defence behind the address check: a recipient that would break our Received line
    makes ingress fail (451, the client keeps the mail), never write it."""
    handler = IngressHandler(Settings(), Spool(tmp_path / "spool"))
    env = Envelope(mail_from="a@example.com", rcpt_tos=('"x\rX-Injected: yes"@example.lg.jp',),
                   client_addr="192.0.2.1", helo="c", received_at=0.0)
    with pytest.raises(ValueError, match="Received"):
        handler._received(env, "q1")
    fine = handler._received(Envelope(mail_from="", rcpt_tos=("s@example.lg.jp",),
                                      client_addr="192.0.2.1", helo="c", received_at=0.0), "q1")
    assert fine.startswith(b"Received: from c ([192.0.2.1])") and fine.endswith(b"\r\n")


def test_bare_postmaster_is_accepted_and_delivered(gateway: Gateway, sink: Sink) -> None:
    """RFC 5321 4.5.1: accepted in any case, to postmaster@ the first accepted domain."""
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        for postmaster in ("postmaster", "PostMaster", "POSTMASTER"):
            client.ehlo()
            client.mail("a@example.com")
            assert client.rcpt(postmaster)[0] == 250
            assert client.data(plain_message(to="postmaster"))[0] == 250
    assert [r.rcpt_tos for r in sink.wait(3)] == [["postmaster@example.lg.jp"]] * 3


def test_postmaster_goes_where_configured(make_gateway: Callable[..., Gateway],
                                          sink: Sink) -> None:
    gw = make_gateway(sink.port, MUGAIKA_POSTMASTER="it-admin@city.example.lg.jp")
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
        client.sendmail("a@example.com", ["postmaster"], plain_message(to="postmaster"))
    assert sink.wait(1)[0].rcpt_tos == ["it-admin@city.example.lg.jp"]


#: Postfix's default_destination_concurrency_limit, and the default per-client cap.
FRONT_MTA_SESSIONS = 20


@pytest.mark.parametrize("reads_221", [True, False], ids=["reads-221", "skips-quit-response"])
def test_a_front_mta_at_its_default_concurrency_is_never_refused(
        make_gateway: Callable[..., Gateway], reads_221: bool) -> None:
    """20 clients from 127.0.0.1, each sending a message, QUIT, and at once a new
    connection, for 3 seconds, against a group of two gateway processes on the
    default cap: not one 421 (a session must not count once its 221 is sent). Also as
    Postfix does by default (`smtp_skip_quit_response = yes`): QUIT sent, the connection
    closed without reading the 221, the next one opened at once."""
    gw = make_gateway(None, MUGAIKA_PROCESSES="2")
    deadline = time.monotonic() + 3
    refusals: list[str] = []
    sent = [0] * FRONT_MTA_SESSIONS

    def front_mta_session(index: int) -> None:
        while time.monotonic() < deadline and not refusals:
            try:
                client = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30)
                client.sendmail("a@example.com", ["staff@example.lg.jp"], plain_message())
                if reads_221:
                    client.quit()
                else:
                    assert client.sock is not None
                    client.sock.sendall(b"QUIT\r\n")
                    client.close()
                sent[index] += 1
            except smtplib.SMTPException as error:
                refusals.append(repr(error))

    threads = [threading.Thread(target=front_mta_session, args=(i,))
               for i in range(FRONT_MTA_SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert refusals == []
    assert all(sent), "every session got through at least once"
