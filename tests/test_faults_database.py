"""PostgreSQL goes away under load: nothing lost, every log, quarantine and audit row written.

Issue 17: during a PostgreSQL outage the write-behind message log dropped 24 `received`
rows as "poison", and a quarantine hold that failed three times sent held mail to
failed/. Here a real gateway talks to the real PostgreSQL through a proxy the test cuts
(existing connections closed, new ones refused, as when PostgreSQL restarts or the
network to it fails): three short outages and one of a minute while mail flows.
"""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, Gateway, Sink, free_port
from tests.store_helpers import PG_ENV, _fresh_pg_database, mail_with_attachment

pytestmark = pytest.mark.skipif(not os.environ.get(PG_ENV),
                                reason="needs MUGAIKA_TEST_DATABASE_URL (make test sets it)")

SHORT_OUTAGES = 3
SHORT_SECONDS = 3.0
LONG_SECONDS = 60.0
#: Every QUARANTINE_EVERY-th message carries an .exe: held, the recipient gets a notice.
QUARANTINE_EVERY = 5


class CuttableProxy:
    """A TCP forwarder to PostgreSQL on 127.0.0.1 that the test can cut and restore."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            doomed, self._open = self._open, set()
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class Sender:
    """Sends numbered mail at a steady pace; a 4xx is retried later, as an MTA would."""

    port: int
    accepted: list[int] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        number = 0
        backlog: list[int] = []
        while not self.stop.is_set() or backlog:
            todo = backlog.pop(0) if backlog else number
            if todo == number:
                number += 1
            if not self._send(todo):
                backlog.append(todo)
                time.sleep(0.5)
            time.sleep(0.08)

    def _send(self, i: int) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                smtp.sendmail("tanaka@example.com", ["clerk@example.lg.jp"], _mail(i))
        except smtplib.SMTPResponseException as exc:
            self.replies.append(exc.smtp_code)
            return False
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            self.replies.append(_code(exc))
            return False
        self.replies.append(250)
        self.accepted.append(i)
        return True


def _code(exc: Exception) -> int:
    recipients = getattr(exc, "recipients", None)
    if recipients:
        return int(next(iter(recipients.values()))[0])
    return int(getattr(exc, "smtp_code", 0))


def _mail(i: int) -> bytes:
    if i % QUARANTINE_EVERY == 0:
        return mail_with_attachment(subject=f"dbfault-{i}")
    return (f"From: tanaka@example.com\r\nTo: clerk@example.lg.jp\r\nSubject: dbfault-{i}\r\n"
            f"Message-ID: <dbfault-{i}@example.com>\r\n\r\n本文 {i}\r\n").encode()


@pytest.fixture
def database() -> Iterator[str]:
    yield from _fresh_pg_database(os.environ[PG_ENV])


def _token(gw: Gateway, role: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "create", "--role", role, "--name", "kansa"],
        cwd=ROOT, env=gw.env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.5)


def test_postgresql_outages_under_load_lose_nothing(
        make_gateway: Callable[..., Gateway], sink: Sink, database: str) -> None:
    url = database
    direct = make_url(url)
    proxy = CuttableProxy(direct.port or 5432)
    proxy.restore()
    through_proxy = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    gw = make_gateway(sink.port, MUGAIKA_DATABASE_URL=through_proxy,
                      MUGAIKA_RELEASE_REQUIRES_APPROVAL="false")
    api = httpx.Client(base_url=f"http://127.0.0.1:{gw.api_port}", timeout=30,
                       headers={"Authorization": f"Bearer {_token(gw, 'operator')}"})
    sender = Sender(gw.smtp_port)
    sending = threading.Thread(target=sender.run, daemon=True)
    sending.start()
    _wait(lambda: api.get("/api/quarantine").json()["total"] >= 2, 60, "two held entries")
    held_before = api.get("/api/quarantine").json()["items"][0]["id"]

    for _ in range(SHORT_OUTAGES):
        proxy.cut()
        time.sleep(SHORT_SECONDS)
        proxy.restore()
        time.sleep(2.0)
    proxy.cut()
    time.sleep(LONG_SECONDS / 2)
    refused = api.post(f"/api/quarantine/{held_before}/release")
    time.sleep(LONG_SECONDS / 2)
    proxy.restore()
    time.sleep(3.0)
    sender.stop.set()
    sending.join(120)

    # The API said "try again" and changed nothing; once the database is back it works.
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "database_unavailable"
    answers: list[httpx.Response] = []
    _wait(lambda: answers.append(api.post(f"/api/quarantine/{held_before}/release"))
          or answers[-1].status_code == 200, 30, f"the release after the outage: {answers[-1:]}")

    accepted = sorted(sender.accepted)
    assert accepted == sorted(set(accepted)) and len(accepted) > 200
    assert set(sender.replies) <= {250, 421, 451, 452}, "a 5xx during a database outage"
    subjects = {f"dbfault-{i}" for i in accepted}
    held = {s for s in subjects if int(s.rsplit("-", 1)[1]) % QUARANTINE_EVERY == 0}
    _wait(lambda: len(sink.received) >= len(accepted) + 1, 120, "every delivery")
    releases = [r for r in sink.received if r.message["X-Mugaika-Released-By"]]
    delivered = [str(r.message["Subject"]).removeprefix("[無害化] ")
                 for r in sink.received if r not in releases]
    assert sorted(delivered) == sorted(subjects)  # each accepted message once, none else
    assert [str(r.message["Subject"]) for r in releases] == [_subject_of(held_before, url)]

    engine = create_engine(url)
    try:
        _wait(lambda: _count(engine, "SELECT count(*) FROM messages WHERE kind = 'inbound' "
                                     "AND status = 'delivered' AND verdict IS NOT NULL")
              == len(accepted), 60, "every message-log row")
        held_rows = _strings(engine, "SELECT subject FROM quarantine_entries")
        assert held_rows == held
        actions = _strings(engine, f"SELECT action FROM audit_log WHERE target = '{held_before}'")
        assert {"quarantine.release_request", "quarantine.release"} <= actions
    finally:
        engine.dispose()
    log = gw.log_text()
    assert "message_log_row_dropped" not in log
    assert "message_log_write_failed" in log and "store_unavailable" in log
    assert "message_failed" not in log
    print(f"database outages: {SHORT_OUTAGES}x{SHORT_SECONDS:.0f}s + {LONG_SECONDS:.0f}s; "
          f"sent {len(accepted)} accepted, {len(held)} held, "
          f"{sum(1 for r in sender.replies if r != 250)} 4xx answers")


def _subject_of(entry_id: str, url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT subject FROM quarantine_entries WHERE id = :i"),
                                    {"i": entry_id}).scalar_one())
    finally:
        engine.dispose()


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _strings(engine: Engine, sql: str) -> set[str]:
    with engine.connect() as conn:
        return {str(v) for v in conn.execute(text(sql)).scalars()}
