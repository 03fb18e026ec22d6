"""An index of live mirrors by origin range, for the mirror lookup behind every transfer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Partial: the origin index also holds every origin row and every ended row, which a
    # search for the last live mirror before a serial would otherwise have to step over.
    op.create_index(
        "ix_ledger_blocks_live_mirrors",
        "ledger_blocks",
        ["origin_program", "origin_series", "origin_start"],
        sqlite_where=sa.text("is_mirror = 1 AND live = 1"),
        postgresql_where=sa.text("is_mirror AND live"),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_blocks_live_mirrors", table_name="ledger_blocks")
