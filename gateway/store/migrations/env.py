"""Alembic environment: always given an open connection by `gateway.store.engine.migrate`.

There is no alembic.ini and no URL here: the gateway's settings are the one source, so the
CLI, the server and the tests migrate the same database the same way.
"""

from __future__ import annotations

from alembic import context

from gateway.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
