"""The same Alembic migrations run up and down on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from registry_bridge import db
from registry_bridge.schema import metadata


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        head = db.current_revision(engine)
        assert head is not None
        tables = set(sa.inspect(engine).get_table_names())
        assert set(metadata.tables) <= tables
        db.downgrade(engine, "base")
        assert db.current_revision(engine) is None
        assert not set(metadata.tables) & set(sa.inspect(engine).get_table_names())
        db.upgrade(engine)
        assert db.current_revision(engine) == head
    finally:
        engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    """Autogenerate finds nothing to do: the migrations build exactly the models' schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()
