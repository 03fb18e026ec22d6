"""Listing decisions say whether they bind: ``listing_decisions.binding``.

A ListProject decision asked for another day than the gateway's today (``as_of``) used to
become the project's standing like any other: a refusal under a past day's rules refused
the project's units today, and a listing under a past day's rules lifted today's refusal.
Now only a decision taken for the gateway's today binds; the others are recorded as they
were answered. Decisions recorded before this revision were all taken as binding, and
stay so.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("listing_decisions") as table:
        table.add_column(
            sa.Column("binding", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("listing_decisions") as table:
        table.drop_column("binding")
