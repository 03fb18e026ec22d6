"""An index of each trigger's reconciliations in id order: ``reconciliations (trigger,
id)``.

ListReconciliations of one trigger pages newest first by id.  The trigger's only index
(``ix_reconciliations_trigger_started_at``) is in start order, so each page read every
run of the trigger ever recorded, with its report, and sorted them by id: a scheduled
run is recorded every interval for as long as the gateways run.  With this one a page
seeks its position and reads its runs.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_reconciliations_trigger_id", "reconciliations", ["trigger", "id"])


def downgrade() -> None:
    op.drop_index("ix_reconciliations_trigger_id", table_name="reconciliations")
