"""Covered entities (sector, gases, registry accounts) and their national ETS migrations.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Migrations never import the models (they change); timestamps are aware, as in 0002.
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "covered_entities",
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("sector", sa.String(64), nullable=False),
        sa.Column("gases", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("entity_id", name=op.f("pk_covered_entities")),
    )
    op.create_table(
        "covered_entity_accounts",
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("registry", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["entity_id"],
            ["covered_entities.entity_id"],
            name=op.f("fk_covered_entity_accounts_entity_id_covered_entities"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("entity_id", "registry", name=op.f("pk_covered_entity_accounts")),
    )
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("body_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("from_jurisdiction", sa.String(32), nullable=False),
        sa.Column("to_jurisdiction", sa.String(32), nullable=False),
        sa.Column("first_year", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["entity_id"],
            ["covered_entities.entity_id"],
            name=op.f("fk_migrations_entity_id_covered_entities"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migrations")),
        sa.UniqueConstraint("request_id", name=op.f("uq_migrations_request_id")),
        sa.UniqueConstraint("entity_id", "from_jurisdiction", name=op.f("uq_migrations_entity_id")),
    )
    op.create_table(
        "migration_steps",
        sa.Column("migration_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["migration_id"],
            ["migrations.id"],
            name=op.f("fk_migration_steps_migration_id_migrations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("migration_id", "seq", name=op.f("pk_migration_steps")),
    )


def downgrade() -> None:
    op.drop_table("migration_steps")
    op.drop_table("migrations")
    op.drop_table("covered_entity_accounts")
    op.drop_table("covered_entities")
