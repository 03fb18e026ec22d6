"""Indexes in ListTransfers' page order: ``transfers (created_at, id)`` and
``transfers (state, created_at, id)`` (in place of ``(state)``).

A page is the transfers after the previous page's last one in (created_at, id) order.
Without an index in that order every page read each matching transfer ever recorded and
sorted them all to return fifty, a cost that grew with the gateway's history. With them
a page seeks its position and reads on until it is full. The state filter (a listing of
the transfers still in flight) needs the state first; the old ``(state)`` index is a
prefix of the new one, which serves every lookup by state it did.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_transfers_created", "transfers", ["created_at", "id"])
    op.create_index("ix_transfers_state_created", "transfers", ["state", "created_at", "id"])
    op.drop_index("ix_transfers_state", table_name="transfers")


def downgrade() -> None:
    op.create_index("ix_transfers_state", "transfers", ["state"])
    op.drop_index("ix_transfers_state_created", table_name="transfers")
    op.drop_index("ix_transfers_created", table_name="transfers")
