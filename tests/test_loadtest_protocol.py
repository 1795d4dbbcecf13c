"""The load test's own SMTP client and sink on real loopback sockets: pipelined commands,
DATA ends split across reads, dot transparency, multi-line replies, refusals and retries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import aiosmtplib
import pytest

from gateway.loadtest import sink as load_sink
from gateway.loadtest.check import Sent
from gateway.loadtest.client import Client, ClientOptions
from gateway.loadtest.mix import Template, plan
from gateway.loadtest.sink import SinkFaults, SinkState, start_sink
from gateway.pipeline.mimewrite import crlf
from gateway.relay.smtpclient import Reply, stuff, take_replies
from gateway.relay.smtpd import DATA_END, unstuff
from tests.conftest import free_port

#: Lines that DATA must stuff (and the sink unstuff): a leading dot, two dots, a lone dot.
DOTTED = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two\r\nmiddle . dot\r\n.\r\nend\r\n"


async def _with_sink(body: Callable[[int, SinkState], Awaitable[None]],
                     faults: SinkFaults | None = None) -> SinkState:
    state = SinkState()
    server = await start_sink("127.0.0.1", 0, state, faults)
    try:
        await body(server.sockets[0].getsockname()[1], state)
    finally:
        server.close()
        await server.wait_closed()
    return state


async def _read(reader: asyncio.StreamReader, count: int) -> list[Reply]:
    """The next `count` replies, however the server split or joined them."""
    buffer, replies = bytearray(), []
    while len(replies) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, f"connection closed after {replies}"
        buffer += data
        replies += take_replies(buffer)
    assert len(replies) == count and not buffer
    return replies


async def _greeted(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"EHLO test\r\n")
    greeting, ehlo = await _read(reader, 2)
    assert greeting.code == 220 and ehlo.code == 250
    assert ehlo.text.split("\n")[1:] == ["PIPELINING", f"SIZE {64 * 2**20}", "8BITMIME",
                                         "ENHANCEDSTATUSCODES"]
    return reader, writer


def _planned(number: int) -> bytes:
    """The data `_send` sends as message `number` (DOTTED with its Message-ID stamped)."""
    return list(plan([Template("t", DOTTED)], "abcd0123", number + 1, "a", "b"))[-1].data


def _codes(replies: list[Reply]) -> list[int]:
    return [r.code for r in replies]


async def _send(port: int, count: int = 1, rcpt: str = "u@example.lg.jp",
                data: bytes = DOTTED, retries: int = 3, timeout: float = 5.0) -> list[Sent]:
    client = Client(ClientOptions("127.0.0.1", port, concurrency=1, tempfail_retries=retries,
                                  timeout=timeout))
    return await client.run(plan([Template("t", data)], "abcd0123", count, "a@b.example", rcpt))


# -- the wire pieces -----------------------------------------------------------------------

@pytest.mark.parametrize("data", [DOTTED, b"", b".", b"..", b"a\nb\n.c", b"x\r\n..\r\n", b"a\rb"])
def test_stuffed_data_ends_once_and_unstuffs_to_the_message(data):
    message = crlf(data)
    wire = stuff(message)
    # the sink sees DATA's body right after the CRLF of the DATA command
    assert (b"\r\n" + wire).find(DATA_END) == len(wire) - 3
    expected = message if not message or message.endswith(b"\r\n") else message + b"\r\n"
    assert unstuff(wire[:-3]) == expected


def test_crlf_leaves_crlf_mail_alone_and_fixes_bare_line_ends():
    assert crlf(DOTTED) is DOTTED
    assert crlf(b"a\rb\nc\r\nd") == b"a\r\nb\r\nc\r\nd"


def test_multiline_reply_is_complete_only_with_its_last_line():
    buffer = bytearray(b"220 hi\r\n250-one\r\n250-SIZE 10\r\n")
    assert take_replies(buffer) == [Reply(220, "hi")]
    assert buffer == b"250-one\r\n250-SIZE 10\r\n"
    buffer += b"250 last\r\n354"
    assert take_replies(buffer) == [Reply(250, "one\nSIZE 10\nlast")]
    buffer += b"\r\n"
    assert take_replies(buffer) == [Reply(354, "")] and not buffer
    with pytest.raises(ValueError, match="not an SMTP reply"):
        take_replies(bytearray(b"hello there\r\n"))


# -- the sink --------------------------------------------------------------------------------

def test_sink_answers_pipelined_commands_from_one_segment_in_order():
    async def talk(port: int, state: SinkState) -> None:
        reader, writer = await _greeted(port)
        writer.write(b"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<u@x.example>\r\n"
                     b"DATA\r\n")
        assert _codes(await _read(reader, 3)) == [250, 250, 354]
        writer.write(stuff(DOTTED) + b"NOOP\r\nQUIT\r\n")
        assert _codes(await _read(reader, 3)) == [250, 250, 221]
        assert await reader.read() == b""
        writer.close()

    state = asyncio.run(_with_sink(talk))
    assert [a.size for a in state.arrivals] == [len(DOTTED)]  # unstuffed exactly


def test_sink_finds_the_end_of_data_split_across_reads_and_an_empty_message():
    async def talk(port: int, state: SinkState) -> None:
        reader, writer = await _greeted(port)
        for pieces in ([b"Subject: s\r\n\r\nbody\r", b"\n", b".", b"\r", b"\n"], [b".", b"\r\n"]):
            writer.write(b"MAIL FROM:<>\r\nRCPT TO:<u@x.example>\r\nDATA\r\n")
            assert _codes(await _read(reader, 3)) == [250, 250, 354]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)  # one read each
            assert _codes(await _read(reader, 1)) == [250]
        writer.close()

    state = asyncio.run(_with_sink(talk))
    assert [a.size for a in state.arrivals] == [len(b"Subject: s\r\n\r\nbody\r\n"), 0]
    assert state.arrivals[0].kind == "bounced"  # the null sender


def test_sink_faults_refuse_and_the_session_goes_on():
    async def talk(port: int, state: SinkState) -> None:
        reader, writer = await _greeted(port)
        writer.write(b"RCPT TO:<u@x>\r\nFOO\r\nMAIL FROM:<a@b> SIZE=99999999999\r\n"
                     b"MAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<nobody@x>\r\n"
                     b"RCPT TO:<u@x>\r\nDATA\r\n")
        assert _codes(await _read(reader, 8)) == [503, 500, 552, 250, 503, 550, 250, 354]
        writer.write(b"x\r\n.\r\nRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@x>\r\nDATA\r\n")
        assert _codes(await _read(reader, 5)) == [451, 250, 250, 250, 354]
        writer.write(b"x\r\n.\r\n")
        assert _codes(await _read(reader, 1)) == [250]
        writer.close()

    state = asyncio.run(_with_sink(talk, SinkFaults(tempfail_first=1, reject_rcpt="nobody@")))
    assert (state.refused, state.rejected_rcpts, len(state.arrivals)) == (1, 1, 1)


def test_sink_refuses_an_oversized_message_after_reading_it(monkeypatch):
    monkeypatch.setattr(load_sink, "SIZE_LIMIT", 1000)

    async def talk(port: int, state: SinkState) -> None:
        reader, writer = await _greeted(port)
        for size, code in ((5000, 552), (500, 250)):
            writer.write(b"MAIL FROM:<a@b>\r\nRCPT TO:<u@x>\r\nDATA\r\n")
            assert _codes(await _read(reader, 3)) == [250, 250, 354]
            for _ in range(size // 500):
                writer.write(b"y" * 498 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b".\r\n")
            assert _codes(await _read(reader, 1)) == [code]
        writer.close()

    state = asyncio.run(_with_sink(talk))
    assert [a.size for a in state.arrivals] == [500]


def test_sink_classifies_a_large_message_in_a_thread_and_answers_in_order(monkeypatch):
    monkeypatch.setattr(load_sink, "INLINE_CLASSIFY_BYTES", 10)
    message = b"Message-ID: <lt.0123abcd.5@loadtest.mugaika.invalid>\r\n\r\n" + b"z" * 5000 + b"\r\n"

    async def talk(port: int, state: SinkState) -> None:
        reader, writer = await _greeted(port)
        writer.write(b"MAIL FROM:<a@b>\r\nRCPT TO:<u@x>\r\nDATA\r\n")
        assert _codes(await _read(reader, 3)) == [250, 250, 354]
        writer.write(stuff(message) + b"MAIL FROM:<a@b>\r\n")
        accepted, mail = await _read(reader, 2)
        assert (accepted.text, mail.code) == ("2.0.0 accepted by the load test sink", 250)
        writer.close()

    state = asyncio.run(_with_sink(talk))
    assert [(a.token, a.size) for a in state.arrivals] == [("lt.0123abcd.5", len(message))]


def test_sink_closes_an_idle_connection(monkeypatch):
    monkeypatch.setattr(load_sink, "IDLE_TIMEOUT", 0.2)

    async def talk(port: int, state: SinkState) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert _codes(await _read(reader, 2)) == [220, 421]
        assert await reader.read() == b""
        writer.close()

    asyncio.run(_with_sink(talk))


def test_gateway_delivery_client_aiosmtplib_talks_to_the_sink():
    """A stock client (aiosmtplib: opportunistic STARTTLS, SIZE) talks to the sink too."""
    async def deliver(port: int, state: SinkState) -> None:
        errors, reply = await aiosmtplib.send(
            DOTTED, sender="a@b.example", recipients=["u@x.example", "nobody@x.example"],
            hostname="127.0.0.1", port=port, start_tls=None, timeout=5)
        assert reply.startswith("2.0.0 accepted")
        assert {r: e.code for r, e in errors.items()} == {"nobody@x.example": 550}

    state = asyncio.run(_with_sink(deliver, SinkFaults(reject_rcpt="nobody@")))
    assert [a.size for a in state.arrivals] == [len(DOTTED)]


# -- the client --------------------------------------------------------------------------------

class Scripted(asyncio.Protocol):
    """A server with a chosen greeting and EHLO reply, recording the command lines of each
    read (to see whether the client pipelines) and answering DATA with a queue id. One
    instance serves the connections of a test one after another (concurrency 1)."""

    def __init__(self, greeting: bytes = b"220 scripted\r\n",
                 ehlo: bytes = b"250-scripted\r\n250 8BITMIME\r\n") -> None:
        self.greeting, self.ehlo = greeting, ehlo
        self.reads: list[list[bytes]] = []
        self.buffer = bytearray()
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.greeting)
        if self.greeting.startswith(b"421"):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        lines = []
        while (end := self.buffer.find(DATA_END if self.in_data else b"\r\n")) >= 0:
            line = bytes(self.buffer[:end])
            del self.buffer[:end + (5 if self.in_data else 2)]
            if self.in_data:
                self.in_data = False
                self.transport.write(b"250 2.0.0 queued as Q7.\r\n")
                continue
            lines.append(line)
            self.in_data = line == b"DATA"
            answers = {b"EHLO": self.ehlo, b"DATA": b"354 go on\r\n", b"QUIT": b"221 bye\r\n"}
            self.transport.write(answers.get(line[:4], b"250 ok\r\n"))
        if lines:
            self.reads.append(lines)


async def _scripted(server: Scripted, go: Callable[[int], Awaitable[list[Sent]]]) -> list[Sent]:
    listening = await asyncio.get_running_loop().create_server(lambda: server, "127.0.0.1", 0)
    try:
        return await go(listening.sockets[0].getsockname()[1])
    finally:
        listening.close()


def test_client_goes_lock_step_without_pipelining_and_reads_the_queue_id():
    server = Scripted()
    sent = asyncio.run(_scripted(server, lambda port: _send(port, count=2)))
    assert [(s.code, s.queue_id, s.attempts) for s in sent] == [(250, "Q7", 1)] * 2
    assert all(len(lines) == 1 for lines in server.reads), server.reads
    mail = [line for lines in server.reads for line in lines if line.startswith(b"MAIL")]
    assert mail == [b"MAIL FROM:<a@b.example>"] * 2  # 7-bit data: no BODY=8BITMIME though offered
    assert server.reads[-1] == [b"QUIT"]


def test_client_pipelines_when_the_multiline_ehlo_offers_it():
    server = Scripted(ehlo=b"250-scripted\r\n250-SIZE 1000000\r\n250 PIPELINING\r\n")
    sent = asyncio.run(_scripted(server, _send))
    assert (sent[0].code, sent[0].queue_id) == (250, "Q7")
    size = len(_planned(0))
    assert [f"MAIL FROM:<a@b.example> SIZE={size}".encode(), b"RCPT TO:<u@example.lg.jp>",
            b"DATA"] in server.reads


def test_client_records_a_421_greeting_and_retries_it():
    server = Scripted(greeting=b"421 4.3.2 too busy\r\n")
    sent = asyncio.run(_scripted(server, lambda port: _send(port, retries=1)))
    assert [(s.code, s.reply, s.attempts) for s in sent] == [(421, "4.3.2 too busy", 2)]


def test_client_times_out_a_silent_server_and_records_a_refused_connection():
    server = Scripted(greeting=b"")
    sent = asyncio.run(_scripted(server, lambda port: _send(port, retries=0, timeout=0.3)))
    assert [(s.code, s.reply) for s in sent] == [(0, "TimeoutError")]
    sent = asyncio.run(_send(free_port(), retries=0))
    assert [(s.code, s.reply) for s in sent] == [(0, "ConnectionRefusedError")]


def test_client_retries_a_4xx_then_is_accepted_by_the_sink():
    async def go(port: int, state: SinkState) -> None:
        sent = await _send(port, count=2)
        assert [(s.code, s.attempts) for s in sent] == [(250, 2), (250, 1)]

    state = asyncio.run(_with_sink(go, SinkFaults(tempfail_first=1)))
    assert state.refused == 1
    assert [(a.token, a.size) for a in state.arrivals] == [
        (f"lt.abcd0123.{n}", len(_planned(n))) for n in (0, 1)]


def test_client_takes_a_5xx_rcpt_as_final():
    async def go(port: int, state: SinkState) -> None:
        sent = await _send(port, rcpt="nobody@example.lg.jp")
        assert [(s.code, s.attempts, s.accepted) for s in sent] == [(550, 1, False)]
        assert "no such mailbox" in sent[0].reply

    state = asyncio.run(_with_sink(go, SinkFaults(reject_rcpt="nobody@")))
    assert (state.rejected_rcpts, state.arrivals) == (1, [])
