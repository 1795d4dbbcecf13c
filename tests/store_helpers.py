"""Fixtures shared by the store, quarantine and API tests.

`db_url` is parametrised: SQLite always, PostgreSQL when MUGAIKA_TEST_DATABASE_URL is set.
Each PostgreSQL test gets a fresh database, dropped afterwards; when the variable is set
and the server does not answer, the tests fail (the connection error propagates).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gateway.custody.stores import SqlStores, open_stores
from gateway.pipeline.message import Sanitized
from gateway.pipeline.sanitize import sanitize
from gateway.queue.envelope import Envelope
from gateway.settings import Settings

PG_ENV = "MUGAIKA_TEST_DATABASE_URL"
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get(PG_ENV) else [])

#: A few bytes that libmagic and any scanner take for a Windows executable.
EXE_BYTES = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48 + b"PE\x00\x00"
)


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 4, 1, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mugaika.db'}"
        return
    yield from _fresh_pg_database(os.environ[PG_ENV])


def _fresh_pg_database(admin_url: str) -> Iterator[str]:
    name = f"mugaika_t_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=db_url)


@pytest.fixture
def stores(settings: Settings, clock: FakeClock) -> Iterator[SqlStores]:
    opened = open_stores(settings, clock)
    try:
        yield opened
    finally:
        opened.close()


def mail_with_attachment(
    subject: str = "請求書の送付", filename: str = "invoice.exe", data: bytes = EXE_BYTES,
    sender: str = "tanaka@example.com", to: str = "clerk@example.lg.jp",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@example.com>"
    msg.set_content("ご確認ください。\n")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes()


def envelope_for(
    sender: str = "tanaka@example.com", rcpts: tuple[str, ...] = ("clerk@example.lg.jp",)
) -> Envelope:
    return Envelope(mail_from=sender, rcpt_tos=rcpts, client_addr="192.0.2.7",
                    helo="mx.example.com", received_at=datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
                    .timestamp())


def run_pipeline(raw: bytes, queue_id: str, settings: Settings) -> Sanitized:
    """The real sanitizer: what the worker hands to the stores."""
    return sanitize(raw, queue_id, settings)


def hold_message(
    stores: SqlStores, settings: Settings, queue_id: str, raw: bytes | None = None,
    envelope: Envelope | None = None,
) -> Sanitized:
    """Log and quarantine one message the way the worker does."""
    raw = raw if raw is not None else mail_with_attachment()
    envelope = envelope or envelope_for()
    result = run_pipeline(raw, queue_id, settings)
    stores.messages.record_received(queue_id, envelope, len(raw))
    stores.messages.record_processed(queue_id, "請求書の送付", result.report)
    stores.quarantine.hold(queue_id, envelope, raw, result.report, result.held)
    return result
