"""The ``entity_year_withdrawals`` table: each compliance year withdrawn from a covered
entity's record (UpsertCoveredEntityRequest.withdraw_years), with the figures it had, who
withdrew it and when.

Before, a year once recorded could not be removed: one the national registry recorded
while a migration stood, or one recorded in error, blocked for good any later migration
plan that would put it in the pilot (CL-MIGRATION-0007).  A withdrawal deletes the year's
``entity_years`` row, and this table keeps it from vanishing without trace.

Downgrading drops the table and so the record of every withdrawal: the schema before has
nowhere to keep it.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entity_year_withdrawals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("jurisdiction", sa.String(32), nullable=False),
        sa.Column("compliance_year", sa.Integer(), nullable=False),
        sa.Column("verified_emissions", sa.BigInteger(), nullable=False),
        sa.Column("allowances_due", sa.BigInteger(), nullable=False),
        sa.Column("covered_by_national_ets", sa.Boolean(), nullable=False),
        sa.Column("withdrawn_by", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["entity_id"],
            ["covered_entities.entity_id"],
            name=op.f("fk_entity_year_withdrawals_entity_id_covered_entities"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entity_year_withdrawals")),
    )
    op.create_index(
        "ix_entity_year_withdrawals_entity_at",
        "entity_year_withdrawals",
        ["entity_id", "withdrawn_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_entity_year_withdrawals_entity_at", table_name="entity_year_withdrawals")
    op.drop_table("entity_year_withdrawals")
