"""Projects' listed facts, which the rules read for every transfer of their units.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_listings",
        sa.Column("program", sa.String(16), nullable=False),
        sa.Column("project_id", sa.String(128), nullable=False),
        sa.Column("facts", sa.Text, nullable=False),
        sa.Column("listed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("program", "project_id", name=op.f("pk_project_listings")),
    )


def downgrade() -> None:
    op.drop_table("project_listings")
