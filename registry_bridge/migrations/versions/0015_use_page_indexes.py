"""Indexes in ListUses' page order: ``unit_uses (created_at, id)``,
``unit_uses (registry, account, created_at, id)`` and ``unit_uses (state, created_at, id)``
(in place of ``(state)``).

A page of ListUses is the uses after the previous page's last one in (created_at, id)
order, as a page of ListTransfers is (see 0014): without an index in that order every
page would read and sort every retirement ever made. The holder filter (one account's
uses, or one registry's) and the state filter (the uses still pending, or refused) each
need their column first; the old ``(state)`` index, which recovery's look for pending
uses reads, is a prefix of the new one and serves it as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_unit_uses_created", "unit_uses", ["created_at", "id"])
    op.create_index(
        "ix_unit_uses_holder_created", "unit_uses", ["registry", "account", "created_at", "id"]
    )
    op.create_index("ix_unit_uses_state_created", "unit_uses", ["state", "created_at", "id"])
    op.drop_index("ix_unit_uses_state", table_name="unit_uses")


def downgrade() -> None:
    op.create_index("ix_unit_uses_state", "unit_uses", ["state"])
    op.drop_index("ix_unit_uses_state_created", table_name="unit_uses")
    op.drop_index("ix_unit_uses_holder_created", table_name="unit_uses")
    op.drop_index("ix_unit_uses_created", table_name="unit_uses")
