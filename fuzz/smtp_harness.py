"""The SMTP session under test: bytes in, replies out, through the real server code.

One `SMTPSession` (gateway.relay.smtpd) per input, made by the real `server_factory`
over the real `IngressHandler` and a real `Spool` in a directory of the caller's. The
transport is an in-memory stand-in (no socket: an input costs a few hundred
microseconds, and the fuzzer sees every byte boundary the client chose). The spool's
writes run inline instead of in a thread, so that a run is deterministic.

What must hold for every input (`SmtpHarness.run` returns what does not):
- no exception reaches the session's catch-all (`smtp_internal_error` in the log), and
  nothing is logged at error level: with a writable spool, any `451` is a bug;
- every `250` the DATA hook answers names a message that is, at that moment, in
  `incoming/` with its file and directory fsynced (or in the journal, fdatasynced), with
  the bytes received (CRLF-normalised) behind our one Received field; and after the
  session nothing else is in the spool;
- the replies are well-formed SMTP replies (`NNN SP text` / `NNN-text` lines of
  printable ASCII ended by CRLF, one code per multi-line reply), the first one is the
  `220` greeting, and nothing is written after the session closed the connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from structlog.testing import capture_logs

from gateway.pipeline.mimewrite import crlf, is_crlf
from gateway.queue.spool import Spool
from gateway.relay.ingress import IngressHandler, server_factory
from gateway.relay.smtpd import Session, SMTPSession, Transaction
from gateway.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

#: Small limits, so that short inputs reach them (size, line length, recipients,
#: repeated commands) without megabytes of input.
SETTINGS = Settings(
    hostname="gw.fuzz.example", accepted_domains=["example.lg.jp"],
    max_message_bytes=20_000, max_line_bytes=1_000, max_recipients=5,
    max_commands_per_session=40,
)
PEER = ("192.0.2.7", 40000)
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])[ -~]*")
_QUEUED = re.compile(rb"250 2\.0\.0 queued as (\S+)")
_RECEIVED = re.compile(rb"Received: [!-~][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


class SyncLog:
    """Which files and directories were fsynced (or fdatasynced), and in what order.

    Installed over `os.fsync` and `os.fdatasync` while a harness runs: the spool and
    the journal call them through `os`, so every durable write is seen."""

    def __init__(self) -> None:
        self.seq = 0
        self.synced: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def wrap(self, real: Callable[[Any], None]) -> Callable[[Any], None]:
        def synced(fd: Any) -> None:
            real(fd)
            st = os.fstat(fd)
            with self._lock:
                self.seq += 1
                self.synced[(st.st_dev, st.st_ino)] = self.seq
        return synced

    def last(self, path: Path) -> int:
        """When `path` (its inode) was last synced; 0 when never."""
        st = os.stat(path)
        return self.synced.get((st.st_dev, st.st_ino), 0)


@contextmanager
def watching_syncs() -> Iterator[SyncLog]:
    log = SyncLog()
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    # The stand-ins take what the real calls take (an fd): typeshed's wider types differ.
    os.fsync = log.wrap(real_fsync)  # type: ignore[assignment]
    os.fdatasync = log.wrap(real_fdatasync)  # type: ignore[assignment]
    try:
        yield log
    finally:
        os.fsync, os.fdatasync = real_fsync, real_fdatasync


class InlineExecutor(Executor):
    """Runs the spool write at once, on the loop: no thread, so a run is reproducible."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the awaiting hook, as a thread would
            future.set_exception(error)
        return future


class FakeTransport(asyncio.Transport):
    """Collects what the session writes; remembers a close and a paused read side."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.paused = False
        self.writes_after_close = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            self.writes_after_close += 1
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return PEER if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused


@dataclass
class Outcome:
    replies: bytes = b""
    queued: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class CheckedIngress(IngressHandler):
    """The real hooks; each `250` of DATA is checked against the spool as it is given."""

    def __init__(self, spool: Spool, syncs: SyncLog, fresh: Callable[[], bool]) -> None:
        async def room() -> bool:
            return fresh()

        super().__init__(SETTINGS, spool, executor=InlineExecutor(), room_for_fresh=room)
        self.syncs = syncs
        self.outcome = Outcome()

    async def handle_DATA(self, session: Session, txn: Transaction) -> str:
        mark = self.syncs.seq
        reply = await super().handle_DATA(session, txn)
        if reply.startswith("250"):
            queue_id = reply.rsplit(" ", 1)[-1]
            self.outcome.queued.append(queue_id)
            self.outcome.problems += self._durable(queue_id, txn, mark)
        elif not reply.startswith("500 5.5.6"):  # the one refusal the hook itself gives
            self.outcome.problems.append(f"DATA hook answered {reply!r}")
        return reply

    def _durable(self, queue_id: str, txn: Transaction, mark: int) -> list[str]:
        """Why the message `queue_id` is not safely spooled right now ([] when it is)."""
        journal = self.spool.journal
        if journal.holds(queue_id):
            segments = [p for p in journal.directory.iterdir() if p.is_file()]
            if max((self.syncs.last(p) for p in segments), default=0) <= mark:
                return [f"{queue_id}: 250 before its journal batch was synced"]
            stored = journal.read(queue_id)
        else:
            path = self.spool.root / "incoming" / queue_id
            if not path.exists():
                return [f"{queue_id}: 250 but not in incoming/ nor the journal"]
            synced = self.syncs.last(path)
            if synced <= mark or self.syncs.last(path.parent) <= synced:
                return [f"{queue_id}: 250 before its file and directory were fsynced"]
            stored = path.read_bytes()
        return _content_problems(queue_id, stored, txn.content)


def _content_problems(queue_id: str, stored: bytes, received: bytes) -> list[str]:
    """The spool entry must be: envelope line, our Received field, the message (CRLF)."""
    _envelope, _, message = stored.partition(b"\n")
    body = crlf(received)
    if not message.endswith(body):
        return [f"{queue_id}: spooled bytes are not the message received"]
    ours = message[:len(message) - len(body)]
    if not (_RECEIVED.fullmatch(ours) and is_crlf(message)):
        return [f"{queue_id}: spooled header is not one Received field + CRLF message"]
    return []


def reply_problems(out: bytes) -> list[str]:
    """Why `out` is not a sequence of well-formed SMTP replies ([] when it is)."""
    if not out.startswith(b"220 "):
        return [f"first reply is not the greeting: {out[:40]!r}"]
    if not out.endswith(b"\r\n"):
        return [f"replies do not end with CRLF: {out[-40:]!r}"]
    return _line_problems(out[:-2].split(b"\r\n"))


def _line_problems(lines: list[bytes]) -> list[str]:
    """Each line `NNN SP text` or `NNN-text`; a multi-line reply keeps its code."""
    open_code: bytes | None = None
    for line in lines:
        match = _REPLY_LINE.fullmatch(line)
        if match is None:
            return [f"malformed reply line {line[:80]!r}"]
        if open_code is not None and match[1] != open_code:
            return [f"multi-line reply changes its code: {line[:80]!r}"]
        open_code = match[1] if match[2] == b"-" else None
    return [] if open_code is None else ["multi-line reply never ends"]


class SmtpHarness:
    """One spool (in `root`) and event loop, reused by every session run on it."""

    def __init__(self, root: Path, syncs: SyncLog) -> None:
        self.spool = Spool(root / "spool")
        self.fresh = False
        self.hooks = CheckedIngress(self.spool, syncs, lambda: self.fresh)
        self.factory = server_factory(SETTINGS, self.hooks)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.spool.journal.close()
        self.loop.close()

    def run(self, chunks: list[bytes], fresh: bool = False, settle: bool = True) -> Outcome:
        """One session: `chunks` as the client's successive sends; `fresh` hands small
        mail to the journal (a gateway with a worker), else to incoming/; `settle` waits
        for the DATA hook after each send (else sends arrive while it runs)."""
        self.fresh = fresh
        outcome = self.hooks.outcome = Outcome()
        with capture_logs() as logs:
            transport = self.loop.run_until_complete(self._session(chunks, settle))
        outcome.replies = bytes(transport.out)
        outcome.problems += reply_problems(outcome.replies)
        outcome.problems += [f"logged {e.get('event')} {e.get('error', '')}" for e in logs
                             if e.get("log_level") in ("error", "critical", "exception")]
        if transport.writes_after_close:
            outcome.problems.append("wrote after closing the connection")
        if b"\r\n451 " in outcome.replies:
            outcome.problems.append("451 with a writable spool")
        outcome.problems += self._accounted(outcome)
        self._clear(outcome.queued)
        return outcome

    async def _session(self, chunks: list[bytes], settle: bool) -> FakeTransport:
        transport = FakeTransport()
        session = self.factory()
        session.connection_made(transport)
        for chunk in chunks:
            if transport.closed:
                break
            if settle or transport.paused:
                await _settled(session)
            if transport.paused:  # nothing is running that would ever resume it
                raise AssertionError("reading paused for good")
            session.data_received(chunk)
        await _settled(session)
        if not transport.closed:
            session.eof_received()
        session.connection_lost(None)
        return transport

    def _accounted(self, outcome: Outcome) -> list[str]:
        """Nothing is spooled but what a 250 was given for; each 250 in the replies
        is one of those."""
        problems = []
        incoming = {p.name for p in (self.spool.root / "incoming").iterdir()}
        journaled = {q for q in outcome.queued if self.spool.journal.holds(q)}
        if incoming | journaled != set(outcome.queued) or incoming & journaled:
            problems.append(f"spooled {sorted(incoming | journaled)}, "
                            f"queued {outcome.queued}")
        if self.spool.journal.live() != len(journaled):
            problems.append("the journal holds a message no 250 was given for")
        if any((self.spool.root / "tmp").iterdir()):
            problems.append("a file left in spool/tmp")
        answered = [m.decode() for m in _QUEUED.findall(outcome.replies)]
        if not set(answered) <= set(outcome.queued) or len(set(answered)) != len(answered):
            problems.append(f"replies name {answered}, hooks queued {outcome.queued}")
        return problems

    def _clear(self, queued: list[str]) -> None:
        """Empty the spool for the next input."""
        for queue_id in queued:
            self.spool.journal.done(queue_id)
        for path in (self.spool.root / "incoming").iterdir():
            path.unlink()


async def _settled(session: SMTPSession) -> None:
    """Wait until no DATA hook of `session` runs (one may start the next)."""
    while session._hook is not None:
        await asyncio.shield(session._hook)


def split(stream: bytes, size: int) -> list[bytes]:
    """`stream` in sends of `size` bytes (0: one send)."""
    if size <= 0:
        return [stream]
    return [stream[i:i + size] for i in range(0, len(stream), size)] or [b""]


def session_bytes(message: bytes, rcpt: str = "staff@example.lg.jp",
                  sender: str = "alice@example.com") -> bytes:
    """A whole well-behaved session delivering `message` (dot-stuffed), then QUIT."""
    stuffed = crlf(message)
    stuffed = (b"." if stuffed.startswith(b".") else b"") + stuffed.replace(b"\r\n.", b"\r\n..")
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return (b"EHLO client.example\r\nMAIL FROM:<" + sender.encode() + b">\r\n"
            b"RCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n" + stuffed + b".\r\nQUIT\r\n")
