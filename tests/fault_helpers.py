"""Shared helpers of the fault tests (issue 17): a small filesystem the test mounts and
fills, a downstream SMTP server that misbehaves on cue, and bounded waits.

Everything talks over loopback; every wait has a deadline and says what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import free_port


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `condition` until it is true; fail saying `what` was not reached."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(interval)


# --- a small filesystem --------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `path` for the block; skip the test if this machine
    cannot mount (not root, no mount(8), a container without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                               "tmpfs", str(path)], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        # Lazy: the gateway under test may still hold files open if the test failed.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(directory: Path) -> Path:
    """Write a filler file in `directory` until the filesystem says ENOSPC; return it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = b"\0" * (256 << 10)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 4096:
                    break
                chunk = chunk[:max(4096, len(chunk) // 4)]
    finally:
        os.close(fd)
    return filler


# --- the client side -------------------------------------------------------------
def message(token: str, body: str = "", size: int = 0) -> bytes:
    """A plain message whose Message-ID carries `token` (how the sink's copy is matched),
    padded with Japanese text to about `size` bytes."""
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "staff@example.lg.jp"
    msg["Subject"] = f"障害試験 {token}"
    msg["Message-ID"] = f"<{token}@faults.example.com>"
    text = body or f"本文 {token}\n"
    while len(text.encode()) < size:
        text += "無害化ゲートウェイの障害試験です。" * 4 + "\n"
    msg.set_content(text)
    return msg.as_bytes()


@dataclass
class Submission:
    token: str
    code: int
    reply: str


def submit(port: int, data: bytes, token: str, sender: str = "alice@example.com",
           rcpts: tuple[str, ...] = ("staff@example.lg.jp",)) -> Submission:
    """One SMTP transaction; the final reply of DATA (or of the step that refused)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        code, reply = client.mail(sender)
        if code != 250:
            return Submission(token, code, reply.decode(errors="replace"))
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt)
            if code != 250:
                return Submission(token, code, reply.decode(errors="replace"))
        code, reply = client.data(data)
        return Submission(token, code, reply.decode(errors="replace"))


def message_ids(datas: list[bytes]) -> list[str]:
    """The Message-ID tokens (`<token@faults.example.com>`) found in what a sink got."""
    found = []
    for data in datas:
        match = re.search(rb"^Message-ID:\s*<([^@>]+)@faults\.example\.com>", data, re.I | re.M)
        found.append(match.group(1).decode() if match else "")
    return found


# --- a downstream that misbehaves on cue ---------------------------------------------
#: What the downstream does with one message, decided when its DATA command comes:
#: "accept" (250), "tempfail" (451 after the message), "permfail" (554 after it),
#: "drop_mid_data" (reads part of the message, then closes the connection),
#: "drop_after_dot" (reads the whole message and closes without a reply: it *has* the
#: message, as a real server that crashed before answering might), "hold" (waits for
#: `release()`, then does what `after_hold` says).
Action = str


@dataclass
class Attempt:
    number: int
    action: Action
    mail_from: str
    rcpts: list[str]
    data: bytes


@dataclass
class ScriptedDownstream:
    """An SMTP server on 127.0.0.1 in a thread of its own; `plan(n, rcpts)` decides what
    the n-th DATA (counted from 1) gets. `received` holds what it accepted (and what it
    swallowed with "drop_after_dot"), `attempts` every DATA."""

    plan: Callable[[int, list[str]], Action] = lambda _n, _r: "accept"
    after_hold: Action = "tempfail"
    rcpt_reply: Callable[[str], str | None] = lambda _addr: None
    port: int = field(default_factory=free_port)
    attempts: list[Attempt] = field(default_factory=list)
    received: list[Attempt] = field(default_factory=list)
    holding: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    _gate: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> ScriptedDownstream:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(ready),),
                                        name="scripted-downstream", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the scripted downstream did not start"
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        ready.set()
        await self._stopped.wait()
        server.close()
        sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    def stop(self) -> None:
        self._gate.set()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def release(self) -> None:
        """Let the held messages go on (to `after_hold`)."""
        self._gate.set()

    def count(self, predicate: Callable[[Attempt], bool] = lambda _a: True) -> int:
        with self.cond:
            return sum(1 for a in self.attempts if predicate(a))

    def wait_received(self, count: int, timeout: float) -> list[Attempt]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.received) >= count, timeout)
            assert ok, f"downstream got {len(self.received)} of {count} messages in {timeout}s"
            return list(self.received)

    def wait_attempts(self, count: int, timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.attempts) >= count, timeout)
            assert ok, f"downstream saw {len(self.attempts)} of {count} DATA in {timeout}s"

    def wait_holding(self, count: int, timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.holding >= count, timeout)
            assert ok, f"downstream holds {self.holding} of {count} messages after {timeout}s"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted.example ESMTP\r\n")
        mail_from, rcpts = "", list[str]()
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-scripted.example\r\n250 8BITMIME\r\n" if verb == b"EHLO"
                             else b"250 scripted.example\r\n")
            elif verb == b"MAIL":
                mail_from, rcpts = line[10:].strip().split(b">")[0].lstrip(b"<").decode(), []
                writer.write(b"250 2.1.0 OK\r\n")
            elif verb == b"RCPT":
                rcpt = line[8:].strip().split(b">")[0].lstrip(b"<").decode()
                refusal = self.rcpt_reply(rcpt)
                if refusal:
                    writer.write(refusal.encode() + b"\r\n")
                else:
                    rcpts.append(rcpt)
                    writer.write(b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                if not await self._data(reader, writer, mail_from, rcpts):
                    return
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:  # RSET, NOOP
                writer.write(b"250 2.0.0 OK\r\n")
            await writer.drain()

    async def _data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    mail_from: str, rcpts: list[str]) -> bool:
        """One message; False when the connection was dropped on purpose."""
        with self.cond:
            number = len(self.attempts) + 1
            action = self.plan(number, list(rcpts))
        writer.write(b"354 go ahead\r\n")
        await writer.drain()
        if action == "drop_mid_data":
            part = await reader.read(200)  # a part of the message, never its end
            assert not part.endswith(b"\r\n.\r\n"), "test message too small to cut"
            self._note(Attempt(number, action, mail_from, rcpts, part), kept=False)
            writer.transport.abort()
            return False
        data = await reader.readuntil(b"\r\n.\r\n")
        content = data[:-3].replace(b"\r\n..", b"\r\n.")
        attempt = Attempt(number, action, mail_from, list(rcpts), content)
        if action == "hold":
            with self.cond:
                self.holding += 1
                self.cond.notify_all()
            while not self._gate.is_set():
                await asyncio.sleep(0.02)
            action = attempt.action = self.after_hold
        self._note(attempt, kept=action in ("accept", "drop_after_dot"))
        if action == "drop_after_dot":
            writer.transport.abort()
            return False
        writer.write({"accept": b"250 2.0.0 accepted\r\n", "tempfail": b"451 4.3.0 busy\r\n",
                      "permfail": b"554 5.6.0 content refused\r\n"}[action])
        return True

    def _note(self, attempt: Attempt, kept: bool) -> None:
        with self.cond:
            self.attempts.append(attempt)
            if kept:
                self.received.append(attempt)
            self.cond.notify_all()


# --- the gateway's spool, as an operator sees it ---------------------------------------
def waiting(spool: Path) -> list[str]:
    """Entries the gateway still has to deliver (not failed/)."""
    areas = ["incoming", "deferred", "hold", *(p.name for p in spool.glob("active*"))]
    return sorted(p.name for area in areas for p in (spool / area).iterdir())
