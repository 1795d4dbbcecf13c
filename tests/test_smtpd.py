"""The inbound SMTP session (`gateway.relay.smtpd`) over a real socket on 127.0.0.1.

The hooks here are small stand-ins that record what they were given: the relay policy and
the spool behind the real hooks are tested through the whole gateway (test_relay_smtp.py,
test_ingress_data.py). What is tested here is the protocol: replies in order when
commands are pipelined, the limits, DATA's end, and a session that goes on after errors.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.relay.smtpd import ADMISSION_GRACE, ServerLimits, Session, SMTPSession, Transaction

LIMITS = ServerLimits(hostname="gw.test", max_message_bytes=10_000, max_line_bytes=2_000,
                      timeout=30.0, max_commands=20)


class Hooks:
    """Accepts recipients in example.lg.jp; DATA waits `delay` (the spool's fsync)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, list[str], bytes]] = []
        self.delay = 0.0
        self.fail = False

    def handle_RCPT(self, session: Session, txn: Transaction, address: str) -> str:
        if not address.endswith("@example.lg.jp"):
            return "550 5.7.1 Relaying denied"
        txn.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, session: Session, txn: Transaction) -> str:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("spool unwritable")
        self.messages.append((txn.mail_from, list(txn.rcpt_tos), txn.content))
        return f"250 2.0.0 queued as q{len(self.messages)}"


class Admission:
    def __init__(self, room: int = 100) -> None:
        self.room = room
        self.open = 0

    def acquire(self, addr: str) -> bool:
        if self.open >= self.room:
            return False
        self.open += 1
        return True

    def release(self, addr: str) -> None:
        self.open -= 1


class Server:
    """An event loop in a thread serving SMTPSessions; `connect()` gives a raw client."""

    def __init__(self, limits: ServerLimits, admission: Admission) -> None:
        self.hooks = Hooks()
        self.admission = admission
        self.sessions: list[SMTPSession] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        def session() -> SMTPSession:
            self.sessions.append(SMTPSession(self.hooks, limits, admission))
            return self.sessions[-1]

        self.server = asyncio.run_coroutine_threadsafe(self.loop.create_server(
            session, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def connect(self) -> Client:
        return Client(self.port)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> bytes:
        """One whole reply (a multi-line one joined with newlines)."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def codes(self, count: int) -> list[int]:
        return [int(self.reply()[:3]) for _ in range(count)]

    def closed(self) -> bool:
        self.sock.settimeout(5)
        try:
            return self.sock.recv(100) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(LIMITS, Admission())
    yield srv
    srv.close()


def _greeted(server: Server) -> Client:
    client = server.connect()
    assert client.reply() == b"220 gw.test mugaika ESMTP"
    client.send(b"EHLO client.example\r\n")
    assert client.reply().split(b"\n") == [
        b"250-gw.test", b"250-SIZE 10000", b"250-8BITMIME", b"250-PIPELINING",
        b"250-ENHANCEDSTATUSCODES", b"250 HELP"]
    return client


TXN = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<staff@example.lg.jp>\r\nDATA\r\n"


def test_a_pipelined_session_is_answered_in_order(server: Server) -> None:
    client = _greeted(server)
    server.hooks.delay = 0.05  # the next transaction arrives while the first is spooled
    client.send(TXN + b"Subject: one\r\n\r\n..dot\r\n.\r\n"
                + TXN + b"Subject: two\r\n\r\nx\r\n.\r\nQUIT\r\n")
    replies = [client.reply() for _ in range(9)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250", b"250", b"250",
                                        b"354", b"250", b"221"]
    assert replies[3].endswith(b"q1") and replies[7].endswith(b"q2")
    assert server.hooks.messages == [
        ("a@example.com", ["staff@example.lg.jp"], b"Subject: one\r\n\r\n.dot\r\n"),
        ("a@example.com", ["staff@example.lg.jp"], b"Subject: two\r\n\r\nx\r\n")]
    assert client.closed()


def test_data_end_cut_anywhere_and_bare_line_ends_stay_inside(server: Server) -> None:
    client = _greeted(server)
    client.send(TXN)
    assert client.codes(3) == [250, 250, 354]
    for piece in (b"Subject: s\r\n\r\nbody\n.\nfake\r.\r", b"end\r", b"\n", b".\r", b"\n"):
        client.send(piece)
        time.sleep(0.02)
    assert client.reply().startswith(b"250 2.0.0")
    assert server.hooks.messages[0][2] == b"Subject: s\r\n\r\nbody\n.\nfake\r.\rend\r\n"


def test_empty_and_oversized_messages(server: Server) -> None:
    client = _greeted(server)
    client.send(TXN + b".\r\n")
    assert client.codes(4) == [250, 250, 354, 250]
    assert server.hooks.messages[0][2] == b""
    client.send(TXN + (b"z" * 98 + b"\r\n") * 200 + b".\r\n")  # 20 KB over a 10 KB limit
    assert client.codes(3) == [250, 250, 354]
    assert client.reply() == b"552 5.3.4 Message size exceeds fixed maximum message size"
    client.send(TXN + b"small\r\n.\r\n")  # the session goes on, and the next one is whole
    assert client.codes(4) == [250, 250, 354, 250]
    assert server.hooks.messages[1][2] == b"small\r\n"


@pytest.mark.parametrize(("commands", "expected"), [
    (b"MAIL FROM:<a@example.com>\r\n", [503]),  # before EHLO
    (b"EHLO c\r\nRCPT TO:<staff@example.lg.jp>\r\n", [250, 503]),
    (b"EHLO c\r\nDATA\r\n", [250, 503]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nMAIL FROM:<b@example.com>\r\n", [250, 250, 503]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com> SIZE=20000\r\n", [250, 552]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com> BODY=BINARYMIME\r\n", [250, 501]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\n", [250, 555]),
    (b"EHLO c\r\nMAIL FROM:<x@[>\r\n", [250, 553]),
    (b"EHLO c\r\nMAIL FROM:a@example.com\r\n", [250, 250]),
    (b"EHLO c\r\nMAIL TO:<a@example.com>\r\n", [250, 501]),
    (b"HELO c\r\nMAIL FROM:<a@example.com> SIZE=10\r\n", [250, 501]),
    (b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@elsewhere.example>\r\n", [250, 250, 550]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<s@example.lg.jp> NOTIFY=NEVER\r\n",
     [250, 250, 555]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRSET\r\nRCPT TO:<s@example.lg.jp>\r\n",
     [250, 250, 250, 503]),
    (b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<s@example.lg.jp>\r\nDATA x\r\n",
     [250, 250, 250, 501]),
    (b"NOOP\r\nVRFY <a@b>\r\nHELP\r\nEXPN staff\r\n\r\nHELO\r\n", [250, 252, 214, 500, 500, 501]),
    (b"M\xc3\xa4IL FROM:<a@example.com>\r\n", [500]),
    (b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n", [500, 250]),
    (b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n", [500, 250]),  # past max_line_bytes
])
def test_command_replies(server: Server, commands: bytes, expected: list[int]) -> None:
    client = server.connect()
    client.reply()
    client.send(commands)
    assert client.codes(len(expected)) == expected


@pytest.mark.parametrize(("flood", "expected"), [
    (b"FOO\r\n" * 5, [500, 500, 500, 500, 502]),  # unknown commands
    (b"\r\n" * 10_000, [500, 500, 500, 500, 502]),  # junk lines are cut short too
    (b"NOOP\r\n" * 21, [250] * 20 + [421]),  # the per-command limit
])
def test_floods_close_the_session(server: Server, flood: bytes, expected: list[int]) -> None:
    client = server.connect()
    client.reply()
    client.send(flood)
    assert client.codes(len(expected)) == expected
    assert client.closed()


def test_replies_nobody_reads_do_not_pile_up() -> None:
    """A client pipelines a million NOOPs and reads nothing: the session stops answering
    once its replies fill the socket, instead of answering everything into memory."""
    srv = Server(ServerLimits("gw.test", 10_000, 2_000, timeout=30.0, max_commands=10**6),
                 Admission())
    try:
        client = srv.connect()
        client.reply()
        client.sock.setblocking(False)
        flood = memoryview(b"NOOP\r\n" * 1_000_000)  # 14 MB of replies
        deadline = time.monotonic() + 3
        while flood and time.monotonic() < deadline:
            try:
                flood = flood[client.sock.send(flood):]
            except BlockingIOError:
                time.sleep(0.05)
        time.sleep(0.5)
        answered, pending = asyncio.run_coroutine_threadsafe(
            _backlog(srv.sessions[0]), srv.loop).result(5)
        assert answered < 1_000_000, "every command answered although nobody read"
        assert pending < 1_000_000, f"{pending} bytes of replies held in memory"
    finally:
        srv.close()


async def _backlog(session: SMTPSession) -> tuple[int, int]:
    """Commands answered so far (the session's own count) and reply bytes it holds."""
    assert session.transport is not None
    return session._counts["NOOP"], session.transport.get_write_buffer_size()


def test_hook_failure_answers_451_and_the_session_goes_on(server: Server) -> None:
    client = _greeted(server)
    server.hooks.fail = True
    client.send(TXN + b"x\r\n.\r\n")
    assert client.codes(3) == [250, 250, 354]
    assert client.reply() == b"451 4.3.0 Temporary local problem, try again later"
    server.hooks.fail = False
    client.send(TXN + b"x\r\n.\r\n")
    assert client.codes(4) == [250, 250, 354, 250]


def test_idle_session_times_out() -> None:
    srv = Server(ServerLimits("gw.test", 10_000, 2_000, timeout=0.3, max_commands=20),
                 Admission())
    try:
        client = srv.connect()
        client.reply()
        client.send(b"NOOP\r\n")
        assert client.codes(1) == [250]
        started = time.monotonic()
        assert client.reply().startswith(b"421 4.4.2")
        assert 0.2 < time.monotonic() - started < 3
        assert client.closed()
    finally:
        srv.close()


def _trickle(client: Client, data: bytes, interval: float, until: float) -> bytes:
    """Send `data` a byte at a time until the server answers (or `until` seconds)."""
    client.sock.settimeout(interval)
    deadline = time.monotonic() + until
    for byte in data:
        assert time.monotonic() < deadline, "the trickle kept the session alive"
        try:
            client.sock.sendall(bytes([byte]))
            return client.sock.recv(200)
        except TimeoutError:
            continue
    raise AssertionError("the trickle ran out before the server answered")


@pytest.mark.parametrize("during", ["command", "data"])
def test_bytes_that_complete_nothing_do_not_keep_a_session(during: str) -> None:
    """Slowloris: a byte every 0.1 s, with a 0.5 s timeout. A command line that never
    ends, or a message that grows by less than DATA_PROGRESS_BYTES, is not activity."""
    limits = ServerLimits("gw.test", 10**6, 2_000, timeout=0.5, max_commands=20)
    srv = Server(limits, Admission())
    try:
        client = srv.connect()
        client.reply()
        if during == "data":
            client.send(b"EHLO c\r\n" + TXN)
            assert client.codes(4) == [250, 250, 250, 354]
        started = time.monotonic()
        answer = _trickle(client, b"x" * 200, interval=0.1, until=10)
        assert answer.startswith(b"421 4.4.2"), answer
        assert 0.4 < time.monotonic() - started < 5
    finally:
        srv.close()


def test_a_slow_message_that_keeps_coming_is_not_cut_off() -> None:
    """64 KiB every 0.2 s with a 0.5 s timeout: each block is progress."""
    limits = ServerLimits("gw.test", 10**6, 2_000, timeout=0.5, max_commands=20)
    srv = Server(limits, Admission())
    try:
        client = srv.connect()
        client.reply()
        client.send(b"EHLO c\r\n" + TXN)
        assert client.codes(4) == [250, 250, 250, 354]
        block = (b"y" * 1022 + b"\r\n") * 64
        for _ in range(8):  # 1.6 s in all, three times the timeout
            client.send(block)
            time.sleep(0.2)
        client.send(b".\r\n")
        assert client.codes(1) == [250]
    finally:
        srv.close()


def test_admission_refused_and_freed_when_the_client_leaves() -> None:
    admission = Admission(room=1)
    srv = Server(LIMITS, admission)
    try:
        first = srv.connect()
        assert first.reply().startswith(b"220")
        second = srv.connect()
        assert second.reply() == b"421 4.7.0 Too many connections from your address"
        assert second.closed()
        first.sock.shutdown(socket.SHUT_WR)  # a half-close frees the slot too
        assert first.closed()
        deadline = time.monotonic() + 5
        while admission.open and time.monotonic() < deadline:
            time.sleep(0.02)
        third = srv.connect()
        assert third.reply().startswith(b"220")
    finally:
        srv.close()


def test_a_client_over_the_cap_waits_briefly_for_a_slot_and_is_greeted_first() -> None:
    """The slot frees within ADMISSION_GRACE (a front MTA's earlier session ending): the
    waiting client is greeted, not refused, and what it sent before the greeting is only
    answered after it."""
    admission = Admission(room=1)
    srv = Server(LIMITS, admission)
    try:
        first = srv.connect()
        assert first.reply().startswith(b"220")
        second = srv.connect()
        second.send(b"EHLO early.example\r\n")  # talks before it is greeted
        time.sleep(ADMISSION_GRACE / 3)
        first.send(b"QUIT\r\n")
        assert first.reply().startswith(b"221")
        assert second.reply() == b"220 gw.test mugaika ESMTP"
        assert second.reply().startswith(b"250-gw.test")
    finally:
        srv.close()
