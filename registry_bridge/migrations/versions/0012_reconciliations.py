"""The ``reconciliations`` table: every reconciliation run, and one at a time.

Before, a reconciliation left no record but its answer and log lines, and each gateway
process kept to one at a time on its own: several gateways sharing a database could
reconcile side by side, each scheduling its own runs. The table records who ran each one,
when, and what it found, and its unique index on running rows lets one run at a time
over all the gateways sharing the database.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("runner", sa.String(128), nullable=False),
        sa.Column("registries", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reconciliations"),
    )
    op.create_index(
        "uq_reconciliations_running",
        "reconciliations",
        ["state"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_index(
        "ix_reconciliations_trigger_started_at", "reconciliations", ["trigger", "started_at"]
    )
    op.create_index("ix_reconciliations_state_id", "reconciliations", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_reconciliations_state_id", table_name="reconciliations")
    op.drop_index("ix_reconciliations_trigger_started_at", table_name="reconciliations")
    op.drop_index("uq_reconciliations_running", table_name="reconciliations")
    op.drop_table("reconciliations")
