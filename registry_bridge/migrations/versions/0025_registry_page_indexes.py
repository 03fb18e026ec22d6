"""Indexes of a registry's transfers on each side and of its uses, in page order:
``transfers (source_registry, created_at, id)``,
``transfers (destination_registry, created_at, id)`` and
``unit_uses (registry, created_at, id)``.

ListTransfers for a registry alone keeps the transfers whose source or destination is at
the registry; ListUses for a holder registry with no account keeps the uses of every
account of the registry. The per-account indexes (0015, 0016) put the account before the
time, so they are not in page order for a registry alone: a transfers page walked
``(created_at, id)`` from its position testing the registry, and a uses page read every
use of the registry and sorted them (or every use after the position), so a page for a
registry used rarely read the whole history after it. With these, a page seeks the
registry at its position (on each side, for transfers, merged as for accounts) and reads
at most a page from each.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_transfers_source_registry_created",
        "transfers",
        ["source_registry", "created_at", "id"],
    )
    op.create_index(
        "ix_transfers_destination_registry_created",
        "transfers",
        ["destination_registry", "created_at", "id"],
    )
    op.create_index("ix_unit_uses_registry_created", "unit_uses", ["registry", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_unit_uses_registry_created", table_name="unit_uses")
    op.drop_index("ix_transfers_destination_registry_created", table_name="transfers")
    op.drop_index("ix_transfers_source_registry_created", table_name="transfers")
