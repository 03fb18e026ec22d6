"""Indexes on the states recovery looks up: ``unit_uses.state``, ``migrations.state``.

Recovery asks for the pending retirements and surrenders, and the running migrations,
every few seconds (and the metrics endpoint at each scrape). Without an index each ask
read every use and migration ever recorded, a cost that grew with the gateway's history
rather than with the work left.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_unit_uses_state", "unit_uses", ["state"])
    op.create_index("ix_migrations_state", "migrations", ["state"])


def downgrade() -> None:
    op.drop_index("ix_migrations_state", table_name="migrations")
    op.drop_index("ix_unit_uses_state", table_name="unit_uses")
