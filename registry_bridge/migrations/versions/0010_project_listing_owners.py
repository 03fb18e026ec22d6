"""A listed project's facts belong to the caller who listed it: a ``listed_by`` column.

Any issuer could re-list any project and so replace the facts that decide every later
transfer of its units.  A listing now records its caller (the token subject of a secure
gateway); only that caller, or a regulator, may replace it.

Listings recorded before carry the local caller (the empty string, as an insecure
gateway's calls do, and as request ids recorded before 0009 do): an insecure gateway
replaces them as before, and on a secure gateway only a regulator may.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_LOCAL_CALLER = ""
"""``registry_bridge.idempotency.LOCAL_CALLER`` when this was written (migrations never
import the code, which changes)."""


def upgrade() -> None:
    # Added with a default so the existing rows get one, then without: every writer names
    # its caller, and a forgotten one must fail, not default.
    op.add_column(
        "project_listings",
        sa.Column("listed_by", sa.String(128), nullable=False, server_default=_LOCAL_CALLER),
    )
    with op.batch_alter_table("project_listings") as batch:
        batch.alter_column("listed_by", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("project_listings") as batch:
        batch.drop_column("listed_by")
