"""The gateway's delivery client (`SMTPForwarder` on `gateway.relay.smtpclient`) against real
servers on 127.0.0.1: per-recipient answers, pipelining, refused transactions, a pooled
connection the server closed, STARTTLS policy, dot transparency, garbage and silence."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from gateway.loadtest import sink as load_sink
from gateway.loadtest.sink import SinkState, start_sink
from gateway.relay.egress import DeliveryResult, SMTPForwarder
from gateway.relay.smtpd import DATA_END, unstuff
from gateway.settings import Settings
from tests.conftest import Sink
from tests.test_relay_tls import self_signed

T = TypeVar("T")
MESSAGE = b"From: a@example.com\r\nTo: x@example.lg.jp\r\nSubject: hi\r\n\r\nbody\r\n"
PIPELINED = ("PIPELINING", "SIZE 1000000", "8BITMIME")


@dataclass
class Delivered:
    mail_from: str
    rcpts: list[str]
    content: bytes  # unstuffed, as the server stores it


@dataclass
class Downstream:
    """A scripted server: what it offers and answers, and what each connection said.

    `replies` overrides the answer to a verb, "END." for the message (None: never
    answer); `drop_at_mail` hangs up without a word at the MAIL of a connection's
    transaction of that number (2: as a server that timed the connection out just as it
    was reused)."""

    ehlo: tuple[str, ...] = PIPELINED
    greeting: bytes = b"220 downstream ESMTP\r\n"
    replies: dict[str, bytes | None] = field(default_factory=dict)
    refuse_rcpt: Callable[[str], bytes | None] = lambda _rcpt: None
    drop_at_mail: int | None = None
    #: said after each message's reply, unasked, on a connection left open
    unsolicited: bytes = b""
    connections: int = 0
    reads: list[list[bytes]] = field(default_factory=list)
    delivered: list[Delivered] = field(default_factory=list)

    @property
    def commands(self) -> list[bytes]:
        return [line for lines in self.reads for line in lines]

    def protocol(self) -> asyncio.Protocol:
        self.connections += 1
        return _Connection(self)


class _Connection(asyncio.Protocol):
    def __init__(self, script: Downstream) -> None:
        self.script = script
        self.buffer = bytearray()
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.in_data = False
        self.transactions = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.script.greeting)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        lines: list[bytes] = []
        out: list[bytes] = []
        while not self.transport.is_closing():
            if self.in_data:
                if not self._message(out):
                    break
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 2]
            lines.append(line)
            verb = line[:4].decode().upper()
            if verb in self.script.replies:
                answer = self.script.replies[verb]
                self.in_data = verb == "DATA" and answer is not None and answer.startswith(b"354")
            else:
                answer = self._answer(verb, line[5:].decode())
            if answer is not None:
                out.append(answer)
        if lines:
            self.script.reads.append(lines)
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def _message(self, out: list[bytes]) -> bool:
        probe = b"\r\n" + bytes(self.buffer)  # the CRLF of the DATA line starts the end marker
        end = probe.find(DATA_END)
        if end < 0:
            return False
        del self.buffer[:end + 3]
        self.in_data = False
        self.script.delivered.append(Delivered(self.mail_from or "", self.rcpts,
                                               unstuff(probe[2:end + 2])))
        self.mail_from, self.rcpts = None, []
        answer = self.script.replies.get("END.", b"250 2.0.0 queued as Q1\r\n")
        if answer is not None:
            out.append(answer + self.script.unsolicited)
        return True

    def _answer(self, verb: str, arg: str) -> bytes:
        if verb == "EHLO":
            lines = ["downstream", *self.script.ehlo]
            return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n"
                           for i, text in enumerate(lines)).encode()
        if verb == "MAIL":
            self.transactions += 1
            if self.transactions == self.script.drop_at_mail:
                self.transport.close()
                return b""
            self.mail_from = arg.partition(">")[0].removeprefix("FROM:<")
            return b"250 2.1.0 ok\r\n"
        if verb == "RCPT":
            if self.mail_from is None:
                return b"503 5.5.1 need MAIL\r\n"
            rcpt = arg.partition(">")[0].removeprefix("TO:<")
            refusal = self.script.refuse_rcpt(rcpt)
            if refusal is None:
                self.rcpts.append(rcpt)
            return refusal or b"250 2.1.5 ok\r\n"
        if verb == "DATA":
            self.in_data = bool(self.rcpts)
            return b"354 go ahead\r\n" if self.rcpts else b"554 5.5.1 no valid recipients\r\n"
        if verb == "RSET":
            self.mail_from, self.rcpts = None, []
        if verb == "QUIT":
            self.transport.write(b"221 bye\r\n")
            self.transport.close()
            return b""
        return b"250 ok\r\n"


def _settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"downstream_host": "127.0.0.1", "downstream_port": port,
                              "downstream_starttls": "off", "downstream_timeout": 2.0,
                              "hostname": "mugaika.test", **overrides}
    return Settings(**values)


def _run(script: Downstream, go: Callable[[SMTPForwarder], Awaitable[T]], **settings: Any) -> T:
    """`go` with a forwarder to `script` served on a free port; the forwarder closed after."""
    return _with_server(lambda: asyncio.get_running_loop().create_server(
        script.protocol, "127.0.0.1", 0), go, **settings)


def _with_server(start: Callable[[], Awaitable[asyncio.Server]],
                 go: Callable[[SMTPForwarder], Awaitable[T]], **settings: Any) -> T:
    async def main() -> T:
        server = await start()
        forwarder = SMTPForwarder(_settings(server.sockets[0].getsockname()[1], **settings))
        try:
            return await go(forwarder)
        finally:
            await forwarder.close()
            server.close()

    return asyncio.run(main())


def _deliver(rcpts: list[str], data: bytes = MESSAGE, mail_from: str = "a@example.com",
             times: int = 1) -> Callable[[SMTPForwarder], Awaitable[list[DeliveryResult]]]:
    async def go(forwarder: SMTPForwarder) -> list[DeliveryResult]:
        return [await forwarder.deliver(mail_from, rcpts, data) for _ in range(times)]
    return go


def _refuse(prefix: str, reply: bytes = b"550 5.1.1 no such user\r\n") -> Callable[[str], bytes | None]:
    return lambda rcpt: reply if rcpt.startswith(prefix) else None


# -- transactions ---------------------------------------------------------------------------

def test_pipelined_recipients_each_get_their_own_answer() -> None:
    script = Downstream(refuse_rcpt=_refuse("gone"))
    rcpts = ["x@example.lg.jp", "gone@example.lg.jp", "y@example.lg.jp"]
    [result] = _run(script, _deliver(rcpts))
    assert result.delivered == ("x@example.lg.jp", "y@example.lg.jp")
    assert result.permanent == {"gone@example.lg.jp": "550 5.1.1 no such user"}
    assert not result.temporary and result.remote.startswith("127.0.0.1:")
    envelope = [f"MAIL FROM:<a@example.com> SIZE={len(MESSAGE)}".encode(),
                *(f"RCPT TO:<{r}>".encode() for r in rcpts), b"DATA"]
    assert envelope in script.reads, "MAIL, RCPTs and DATA in one write"
    assert script.delivered == [Delivered("a@example.com", [rcpts[0], rcpts[2]], MESSAGE)]


def test_lock_step_without_pipelining_null_sender_8bit_and_a_multiline_refusal() -> None:
    data = "Subject: 件名\r\n\r\n本文\r\n".encode()
    script = Downstream(ehlo=("8BITMIME",), refuse_rcpt=_refuse(
        "full", b"452-4.2.2 mailbox full\r\n452 4.2.2 try later\r\n"))
    [result] = _run(script, _deliver(["x@example.lg.jp", "full@example.lg.jp"], data, ""))
    assert result.delivered == ("x@example.lg.jp",)
    assert result.temporary == {"full@example.lg.jp": "452 4.2.2 mailbox full\n4.2.2 try later"}
    assert all(len(lines) == 1 for lines in script.reads), script.reads
    assert script.commands[1] == b"MAIL FROM:<> BODY=8BITMIME"
    assert script.delivered == [Delivered("", ["x@example.lg.jp"], data)]


@pytest.mark.parametrize("ehlo", [PIPELINED, ("8BITMIME",)], ids=["pipelined", "lock-step"])
def test_every_rcpt_refused_sends_no_message_then_rset_and_the_connection_serves_on(
        ehlo: tuple[str, ...]) -> None:
    script = Downstream(ehlo=ehlo, refuse_rcpt=_refuse("gone"))
    go = _deliver(["gone1@example.lg.jp", "gone2@example.lg.jp"])

    async def both(forwarder: SMTPForwarder) -> list[DeliveryResult]:
        return [*await go(forwarder), *await _deliver(["x@example.lg.jp"])(forwarder)]

    refused, delivered = _run(script, both)
    assert refused.permanent == {f"gone{n}@example.lg.jp": "550 5.1.1 no such user" for n in (1, 2)}
    assert not refused.delivered and not refused.temporary
    assert delivered.delivered == ("x@example.lg.jp",)
    first = script.commands[:script.commands.index(b"RSET") + 1]
    assert (b"DATA" in first) == (ehlo == PIPELINED), "lock-step does not even send DATA"
    assert len(script.delivered) == 1 and script.connections == 1


def test_data_accepted_despite_every_rcpt_refused_gets_an_empty_message() -> None:
    """RFC 2920 3.1: the client must not assume a pipelined DATA is refused."""
    script = Downstream(refuse_rcpt=_refuse("gone"), replies={"DATA": b"354 go\r\n"})
    [result] = _run(script, _deliver(["gone@example.lg.jp"]))
    assert result.permanent == {"gone@example.lg.jp": "550 5.1.1 no such user"}
    assert [d.content for d in script.delivered] == [b""]


@pytest.mark.parametrize("verb", ["DATA", "END."])
def test_4xx_at_data_or_after_the_message_is_temporary(verb: str) -> None:
    script = Downstream(replies={verb: b"451 4.3.0 busy\r\n"})
    [result] = _run(script, _deliver(["x@example.lg.jp", "y@example.lg.jp"]))
    assert result.temporary == {"x@example.lg.jp": "451 4.3.0 busy", "y@example.lg.jp": "451 4.3.0 busy"}
    assert not result.delivered and not result.permanent


def test_a_refused_mail_answers_for_every_recipient_not_the_rcpts_need_mail() -> None:
    script = Downstream(replies={"MAIL": b"452 4.3.1 insufficient storage\r\n"})
    [result] = _run(script, _deliver(["x@example.lg.jp", "y@example.lg.jp"]))
    assert result.temporary == dict.fromkeys(["x@example.lg.jp", "y@example.lg.jp"],
                                             "452 4.3.1 insufficient storage")
    assert not result.permanent


def test_pooled_connection_is_reused() -> None:
    script = Downstream()
    results = _run(script, _deliver(["x@example.lg.jp"], times=3))
    assert [r.delivered for r in results] == [("x@example.lg.jp",)] * 3
    assert script.connections == 1 and script.commands[-1] == b"QUIT"


@pytest.mark.parametrize(("data", "stored"), [
    (b".", b".\r\n"),
    (b"..x\r\n", b"..x\r\n"),
    (b".\r\n..x\r\nmiddle . dot\r\n.\r\nend", b".\r\n..x\r\nmiddle . dot\r\n.\r\nend\r\n"),
    (b"", b""),
    (b"bare\nline ends\rhere", b"bare\r\nline ends\r\nhere\r\n"),
])
def test_dot_stuffing_round_trip(data: bytes, stored: bytes) -> None:
    script = Downstream()
    [result] = _run(script, _deliver(["x@example.lg.jp"], data))
    assert result.delivered == ("x@example.lg.jp",)
    assert script.delivered[0].content == stored


def test_unsendable_addresses_are_refused_for_good_without_smtputf8() -> None:
    script = Downstream()
    [result] = _run(script, _deliver(["x@example.lg.jp", "職員@example.lg.jp"]))
    assert result.delivered == ("x@example.lg.jp",)
    assert list(result.permanent) == ["職員@example.lg.jp"]
    assert result.permanent["職員@example.lg.jp"].startswith("553 5.6.7 ")
    assert script.delivered[0].rcpts == ["x@example.lg.jp"]
    [result] = _run(script, _deliver(["x@example.lg.jp"], mail_from="送信者@example.com"))
    assert list(result.permanent) == ["x@example.lg.jp"]
    assert script.connections == 1, "a sender it cannot send needs no connection"


# -- connections -----------------------------------------------------------------------------

def _to_sink(state: SinkState, go: Callable[[SMTPForwarder], Awaitable[T]]) -> T:
    """`go` with a forwarder to the project's own sink (`gateway/loadtest/sink.py`)."""
    return _with_server(lambda: start_sink("127.0.0.1", 0, state), go)


def test_message_larger_than_a_write_piece_arrives_whole() -> None:
    """Several pieces, the transport's buffer full in between (flow control waited out)."""
    data = MESSAGE + b".line\r\n" * (5 * 2**20 // 7)
    state = SinkState()
    [result] = _to_sink(state, _deliver(["x@example.lg.jp"], data))
    assert result.delivered == ("x@example.lg.jp",)
    assert [a.size for a in state.arrivals] == [len(data)]


def test_connection_the_server_timed_out_while_idle_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's sink says 421 and hangs up on an idle connection: the next delivery
    must notice before it writes, not fail the message."""
    monkeypatch.setattr(load_sink, "IDLE_TIMEOUT", 0.2)
    state = SinkState()

    async def go(forwarder: SMTPForwarder) -> list[DeliveryResult]:
        first = await forwarder.deliver("a@example.com", ["x@example.lg.jp"], MESSAGE)
        await asyncio.sleep(0.6)
        return [first, await forwarder.deliver("a@example.com", ["x@example.lg.jp"], MESSAGE)]

    results = _to_sink(state, go)
    assert [r.delivered for r in results] == [("x@example.lg.jp",)] * 2
    assert [a.size for a in state.arrivals] == [len(MESSAGE)] * 2


def test_pooled_connection_that_spoke_unasked_is_not_reused() -> None:
    """A 421 while idle, the hang-up not yet seen: that reply must not answer the next MAIL."""
    script = Downstream(unsolicited=b"421 4.4.2 idle too long\r\n")
    results = _run(script, _deliver(["x@example.lg.jp"], times=2))
    assert [r.delivered for r in results] == [("x@example.lg.jp",)] * 2
    assert script.connections == 2


def test_reused_connection_closed_before_any_reply_is_retried_once_on_a_fresh_one() -> None:
    script = Downstream(drop_at_mail=2)
    results = _run(script, _deliver(["x@example.lg.jp"], times=2))
    assert [r.delivered for r in results] == [("x@example.lg.jp",)] * 2
    assert script.connections == 2 and len(script.delivered) == 2


def test_fresh_connection_dropped_is_temporary_and_not_retried() -> None:
    script = Downstream(drop_at_mail=1)
    [result] = _run(script, _deliver(["x@example.lg.jp"]))
    assert result.temporary == {
        "x@example.lg.jp": f"451 4.4.1 connection to {result.remote} failed: ConnectionResetError"}
    assert script.connections == 1


def test_garbled_reply_is_temporary_and_the_connection_dropped() -> None:
    script = Downstream(replies={"RCPT": b"hello there\r\n"})

    async def go(forwarder: SMTPForwarder) -> list[DeliveryResult]:
        garbled = await forwarder.deliver("a@example.com", ["x@example.lg.jp"], MESSAGE)
        del script.replies["RCPT"]
        return [garbled, await forwarder.deliver("a@example.com", ["x@example.lg.jp"], MESSAGE)]

    garbled, delivered = _run(script, go)
    assert garbled.temporary == {
        "x@example.lg.jp": f"451 4.4.1 connection to {garbled.remote} failed: GarbledReply"}
    assert delivered.delivered == ("x@example.lg.jp",) and script.connections == 2


def test_silent_server_times_out_as_temporary() -> None:
    script = Downstream(replies={"END.": None})
    [result] = _run(script, _deliver(["x@example.lg.jp"]), downstream_timeout=0.3)
    assert result.temporary == {
        "x@example.lg.jp": f"451 4.4.1 connection to {result.remote} failed: TimeoutError"}


def test_refused_session_is_temporary_even_with_a_5xx_greeting() -> None:
    script = Downstream(greeting=b"554 5.3.2 not now\r\n")
    [result] = _run(script, _deliver(["x@example.lg.jp"]))
    assert result.temporary == {
        "x@example.lg.jp": f"451 4.4.1 connection to {result.remote} refused: 554 5.3.2 not now"}


# -- STARTTLS ----------------------------------------------------------------------------------

def test_required_starttls_not_offered_is_temporary_and_sends_nothing() -> None:
    script = Downstream()
    [result] = _run(script, _deliver(["x@example.lg.jp"]), downstream_starttls="required")
    assert result.temporary == {"x@example.lg.jp": f"451 4.7.0 {result.remote} does not offer "
                                                   "STARTTLS (downstream_starttls is required)"}
    assert not any(line.startswith(b"MAIL") for line in script.commands)


@pytest.mark.parametrize(("answer", "reply"), [
    (b"454 4.7.0 TLS not available\r\n", "refused: 454 4.7.0 TLS not available"),
    (b"220 go ahead\r\n250 2.1.0 injected in clear\r\n", "failed: GarbledReply"),
])
def test_starttls_refused_or_followed_by_cleartext_is_temporary(answer: bytes, reply: str) -> None:
    script = Downstream(ehlo=(*PIPELINED, "STARTTLS"), replies={"STAR": answer})
    [result] = _run(script, _deliver(["x@example.lg.jp"]), downstream_starttls="opportunistic")
    assert result.temporary == {"x@example.lg.jp": f"451 4.4.1 connection to {result.remote} {reply}"}
    assert not any(line.startswith(b"MAIL") for line in script.commands)


def _deliver_to(sink: Sink, **settings: Any) -> DeliveryResult:
    async def main() -> DeliveryResult:
        forwarder = SMTPForwarder(_settings(sink.port, **settings))
        try:
            return await forwarder.deliver("a@example.com", ["x@example.lg.jp"], MESSAGE)
        finally:
            await forwarder.close()

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ["opportunistic", "required"])
def test_starttls_with_a_self_signed_certificate_unverified(tmp_path: Path, mode: str) -> None:
    sink = Sink(tls_context=self_signed(tmp_path)).start()
    try:
        result = _deliver_to(sink, downstream_starttls=mode, downstream_verify_cert=False)
        assert result.delivered == ("x@example.lg.jp",)
        [got] = sink.received
        assert got.tls and got.data == MESSAGE
    finally:
        sink.stop()


def test_starttls_with_a_certificate_that_fails_verification_is_temporary(tmp_path: Path) -> None:
    sink = Sink(tls_context=self_signed(tmp_path)).start()
    try:
        result = _deliver_to(sink, downstream_starttls="opportunistic", downstream_verify_cert=True)
        assert result.temporary == {"x@example.lg.jp": f"451 4.4.1 connection to {result.remote} "
                                                       "failed: SSLCertVerificationError"}
        assert sink.received == []
    finally:
        sink.stop()

