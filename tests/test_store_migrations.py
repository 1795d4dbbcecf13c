"""The Alembic migrations build exactly the schema the code queries."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.custody.stores import open_stores
from gateway.custody.tokens import Role
from gateway.settings import Settings
from gateway.store.schema import metadata

pytest_plugins = ("tests.store_helpers",)


def test_migrated_schema_matches_models(settings: Settings) -> None:
    """No drift between gateway/store/schema.py and gateway/store/migrations/."""
    stores = open_stores(settings)
    try:
        with stores.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        stores.close()
    assert diff == []


def test_opening_twice_is_harmless(settings: Settings) -> None:
    """A restart (or a CLI call next to a running server) re-runs the upgrade as a no-op."""
    first = open_stores(settings)
    first.tokens.create(Role.ADMIN, "root")
    second = open_stores(settings)
    try:
        assert [t.name for t in second.tokens.list()] == ["root"]
    finally:
        first.close()
        second.close()
