"""Nonces of signed instructions (replay protection).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "instruction_nonces",
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("seen_at", _TS, nullable=False),
        sa.Column("forget_after", _TS, nullable=False),
        sa.PrimaryKeyConstraint("key_id", "nonce", name=op.f("pk_instruction_nonces")),
    )
    op.create_index(
        op.f("ix_instruction_nonces_forget_after"), "instruction_nonces", ["forget_after"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_instruction_nonces_forget_after"), table_name="instruction_nonces")
    op.drop_table("instruction_nonces")
