"""A failed migration can be abandoned: ``migrations.abandonment`` records who gave it up,
when and why, and the one-migration-per-entity-and-pilot uniqueness leaves abandoned ones
out (a partial unique index in place of the unique constraint), so a new migration of the
entity may follow one given up.

Rows recorded before have no abandonment (the empty string).  Downgrading refuses a
database holding an abandoned migration: the schema before cannot hold it and the one that
followed it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_NOT_ABANDONED = sa.text("state <> 'abandoned'")


def upgrade() -> None:
    # Added with a default so the existing rows get one, then (in the batch that follows)
    # without: every writer names it, as 0009 does for ``caller``.
    op.add_column(
        "migrations", sa.Column("abandonment", sa.Text, nullable=False, server_default="")
    )
    with op.batch_alter_table("migrations") as batch:
        batch.alter_column("abandonment", server_default=None)
        batch.drop_constraint("uq_migrations_entity_id", type_="unique")
    op.create_index(
        "uq_migrations_live_entity",
        "migrations",
        ["entity_id", "from_jurisdiction"],
        unique=True,
        sqlite_where=_NOT_ABANDONED,
        postgresql_where=_NOT_ABANDONED,
    )


def downgrade() -> None:
    abandoned = (
        op.get_bind()
        .execute(sa.text("SELECT id FROM migrations WHERE state = 'abandoned'"))
        .first()
    )
    if abandoned is not None:
        raise RuntimeError(
            f"cannot downgrade below 0018: migrations/{abandoned[0]} is abandoned, which the "
            "schema before (one migration per entity and pilot, whatever its state) cannot hold"
        )
    op.drop_index("uq_migrations_live_entity", table_name="migrations")
    with op.batch_alter_table("migrations") as batch:
        batch.create_unique_constraint(
            "uq_migrations_entity_id", ["entity_id", "from_jurisdiction"]
        )
        batch.drop_column("abandonment")
