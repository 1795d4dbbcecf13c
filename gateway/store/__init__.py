"""Tables and SQL stores under the custody wing: SQLite or PostgreSQL, Alembic migrations.

`gateway.custody.stores.open_stores` opens them all on one engine.
"""
