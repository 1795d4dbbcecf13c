"""All stores of what is kept, opened together on one database.

`open_stores(settings)` is the one entry point: it opens SQLite under `data_dir` (or
PostgreSQL from `database_url`), upgrades the schema with Alembic and returns `SqlStores`,
which satisfies `gateway.queue.outlets.Stores` for the worker and offers the audit log,
the API tokens and the console's accounts to the API, the console and the command line.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from gateway.custody.audit import AuditLog
from gateway.custody.tokens import TokenStore
from gateway.custody.users import UserStore
from gateway.settings import Settings
from gateway.store.common import Clock, utcnow
from gateway.store.engine import make_engine, migrate
from gateway.store.messages import SqlMessageLog
from gateway.store.quarantine import SqlQuarantine


class SqlStores:
    """All stores on one engine. Thread-safe: each call takes its own connection."""

    def __init__(self, engine: Engine, settings: Settings, clock: Clock = utcnow,
                 write_behind: bool = False) -> None:
        self.engine = engine
        self.messages = SqlMessageLog(engine, clock, write_behind)
        self.quarantine = SqlQuarantine(engine, settings.quarantine_retention_days, clock)
        self.audit = AuditLog(engine, clock)
        self.tokens = TokenStore(engine, clock)
        self.users = UserStore(engine, settings, clock)

    def ping(self) -> bool:
        """True when the database answers (readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not ready", never a crash
            return False
        return True

    def close(self) -> None:
        self.messages.close()
        self.engine.dispose()


def open_stores(settings: Settings, clock: Clock = utcnow, write_behind: bool = False) -> SqlStores:
    """Open (and migrate) the database the settings name.

    `write_behind`: the message log is written by a thread of its own, in batches
    (`gateway.store.behind`); for the gateway's long-running process."""
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    return SqlStores(engine, settings, clock, write_behind)

