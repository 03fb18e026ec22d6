"""Indexes of each side of a transfer in page order:
``transfers (source_registry, source_account, created_at, id)`` and
``transfers (destination_registry, destination_account, created_at, id)``.

ListTransfers for some accounts (a caller scoped to its own, or an auditor naming one)
keeps the transfers whose source or destination is one of them. No index served that
filter: a page walked ``(created_at, id)`` from its position and tested every transfer
of every account on the way, so one quiet account's page read the whole history after
it. With one index per side, a page seeks each account on each side at its position and
reads at most a page from each; ``Bridge.list_transfers`` merges those in page order.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_transfers_source_created",
        "transfers",
        ["source_registry", "source_account", "created_at", "id"],
    )
    op.create_index(
        "ix_transfers_destination_created",
        "transfers",
        ["destination_registry", "destination_account", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_transfers_destination_created", table_name="transfers")
    op.drop_index("ix_transfers_source_created", table_name="transfers")
