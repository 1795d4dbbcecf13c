"""Alembic migrations, run programmatically at start-up by `gateway.store.engine.migrate`."""
