"""Shared fixtures: a real SMTP sink on 127.0.0.1 and a real `mugaika serve` process.

Everything here talks over loopback only, with bounded waits.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SinkHandler:
    """Stores what it receives; `reply` can make it refuse (e.g. "451 4.3.0 busy")."""

    received: list[Received] = field(default_factory=list)
    reply: str | None = None
    rcpt_reply: Callable[[str], str | None] = lambda _addr: None
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        refusal = self.rcpt_reply(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply:
            return self.reply
        with self.cond:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content, session.ssl is not None))
            self.cond.notify_all()
        return "250 2.0.0 accepted by sink"

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.received) >= count, timeout)
        assert ok, f"sink got {len(self.received)} of {count} messages within {timeout}s"
        return list(self.received)


class Sink:
    """An aiosmtpd server on 127.0.0.1 standing in for the LGWAN-side mail server."""

    def __init__(self, port: int | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.controller: Controller | None = None
        self.tls_context = tls_context

    def start(self) -> Sink:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     data_size_limit=None, tls_context=self.tls_context)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        return self.handler.wait(count, timeout)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    yield s
    s.stop()


class Gateway:
    """A real `python -m gateway serve` child process with its own data dir and ports."""

    def __init__(self, data_dir: Path, downstream_port: int | None, **env: str) -> None:
        self.data_dir = data_dir
        self.smtp_port = free_port()
        self.api_port = free_port()
        while self.api_port == self.smtp_port:  # the kernel may hand out a port twice
            self.api_port = free_port()
        self.env = {
            **os.environ,
            "MUGAIKA_SMTP_PORT": str(self.smtp_port),
            "MUGAIKA_API_PORT": str(self.api_port),
            "MUGAIKA_DATA_DIR": str(data_dir),
            "MUGAIKA_ACCEPTED_DOMAINS": "example.lg.jp",
            "MUGAIKA_RETRY_FIRST_SECONDS": "1",
            "MUGAIKA_RETRY_MAX_SECONDS": "2",
            "MUGAIKA_WORKERS": "2",
            **env,
        }
        if downstream_port is not None:
            self.env["MUGAIKA_DOWNSTREAM_HOST"] = "127.0.0.1"
            self.env["MUGAIKA_DOWNSTREAM_PORT"] = str(downstream_port)
            self.env.setdefault("MUGAIKA_DOWNSTREAM_STARTTLS", "off")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "gateway.log"

    def start(self) -> Gateway:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logfile:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT,
                                         env=self.env, stdout=logfile, stderr=subprocess.STDOUT)
        wait_for_port(self.smtp_port, proc=self.proc)
        if self.env.get("MUGAIKA_API_ENABLED", "true").lower() != "false":
            # In a group, member 0 serves the API and may come up after another member.
            wait_for_port(self.api_port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a power cut of the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def spool_has(self, area: str) -> bool:
        """True when the spool area (incoming, deferred, failed, …) holds an entry."""
        return any((self.data_dir / "spool" / area).iterdir())

    def wait_for_spool(self, area: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.spool_has(area):
            assert time.monotonic() < deadline, f"nothing reached spool/{area} in {timeout}s"
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(downstream_port: int | None = None, data_dir: Path | None = None,
             **env: str) -> Gateway:
        gw = Gateway(data_dir or tmp_path / f"gw{len(started)}", downstream_port, **env)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], sink: Sink) -> Gateway:
    """A gateway delivering to `sink`."""
    return make_gateway(sink.port)


def journaled_bytes(spool: Path) -> int:
    """How much the gateway processes' journals hold (`gateway.queue.journal`)."""
    return sum(p.stat().st_size for p in spool.glob("journal*/*.log"))


def spool_files(spool: Path) -> list[Path]:
    """Messages still waiting in the spool, whichever area they wait in."""
    areas = ["incoming", "deferred", "hold", *(p.name for p in spool.glob("active*"))]
    return [p for area in areas for p in (spool / area).iterdir()]


def plain_message(subject: str = "test", body: str = "hello", to: str = "staff@example.lg.jp",
                  sender: str = "alice@example.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)
