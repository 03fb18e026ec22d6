"""Covered entities' compliance years, the facts offset limits are computed from.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entity_years",
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("jurisdiction", sa.String(32), nullable=False),
        sa.Column("compliance_year", sa.Integer, nullable=False),
        sa.Column("verified_emissions", sa.BigInteger, nullable=False),
        sa.Column("allowances_due", sa.BigInteger, nullable=False),
        sa.Column("covered_by_national_ets", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint(
            "entity_id", "jurisdiction", "compliance_year", name=op.f("pk_entity_years")
        ),
    )


def downgrade() -> None:
    op.drop_table("entity_years")
