"""The ``listing_decisions`` table: every answer to ListProject, for GetListing.

ListProject answered with a ``listings/{id}`` name but kept nothing under it: a listing's
outcome could not be read back, and a refused one left no trace but its idempotent
answer. Each answer is now recorded with the facts it was decided on, who asked, and when.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "listing_decisions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("program", sa.String(16), nullable=False),
        sa.Column("project_id", sa.String(128), nullable=False),
        sa.Column("jurisdiction", sa.String(32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_listing_decisions")),
    )
    op.create_index("ix_listing_decisions_project", "listing_decisions", ["program", "project_id"])


def downgrade() -> None:
    op.drop_index("ix_listing_decisions_project", table_name="listing_decisions")
    op.drop_table("listing_decisions")
