"""Engine creation and programmatic Alembic migration at start-up.

SQLite gets WAL and a busy timeout so that `mugaika token create` or `mugaika quarantine
purge` can write while a server runs on the same data dir. On PostgreSQL several nodes may
start at once: the migration runs under an advisory lock so only one of them upgrades.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Arbitrary constant shared by every node: "mugaika" in ASCII, as a bigint.
_MIGRATION_LOCK_KEY = 0x6D756761696B61
_SQLITE_BUSY_MS = 10_000


def make_engine(url: str) -> Engine:
    """An engine for `url`; the SQLite file's directory is created when missing."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A database behind a dead network path must not hang a connecting thread for the
    # kernel's TCP timeout (minutes): ten seconds, then the caller's retry logic decides.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Durable writes switch to FULL per transaction: see gateway.store.common.write.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision (idempotent)."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
