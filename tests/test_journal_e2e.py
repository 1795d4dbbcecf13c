"""End to end: mail acknowledged with `250` that lives only in the journal (accepted,
sanitized, its delivery under way) survives a `kill -9` of the gateway and arrives once.

A real `mugaika serve` delivers to a downstream that accepts the connection and never
answers, so every accepted message is in flight: in the journal, in no spool file.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.conftest import Gateway, Sink, free_port, journaled_bytes, plain_message, spool_files

COUNT = 5


@contextmanager
def silent_downstream(port: int) -> Iterator[None]:
    """Accepts SMTP connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", port))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        listener.close()
        for conn in held:
            conn.close()
        thread.join(5)


def test_journaled_mail_survives_kill_9_and_arrives_once(
        make_gateway: Callable[..., Gateway]) -> None:
    port = free_port()
    with silent_downstream(port):
        gw = make_gateway(port)
        spool = gw.data_dir / "spool"
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30) as client:
            for n in range(COUNT):
                client.sendmail("alice@example.com", ["staff@example.lg.jp"],
                                plain_message(subject=f"journal {n}", body=f"飛行中の{n}通目"))
        assert journaled_bytes(spool) > 0
        assert spool_files(spool) == [], "in flight: in the journal, in no spool file"
        gw.kill()
    sink = Sink(port).start()
    try:
        make_gateway(port, data_dir=gw.data_dir)
        got = sink.wait(COUNT, timeout=30)
        assert sorted(r.message["Subject"] for r in got) == [f"[無害化] journal {n}" for n in range(COUNT)]
        assert all("通目" in r.message.get_content() for r in got)
        time.sleep(1.5)
        assert len(sink.received) == COUNT, "each message delivered once"
        assert spool_files(spool) == [] and journaled_bytes(spool) == 0
    finally:
        sink.stop()
