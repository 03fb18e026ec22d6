"""An index of every migration of an entity in the order recorded:
``migrations (entity_id, created_at, id)``.

An abandoned migration's split of the entity's years stands until a newer migration of
the entity is recorded, so the rules gate reads an entity's abandoned migrations too on
every surrender. The only index on ``entity_id`` (``uq_migrations_live_entity``) is partial
and leaves abandoned ones out: without this one, finding them would scan the table.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_migrations_entity_created", "migrations", ["entity_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_migrations_entity_created", table_name="migrations")
