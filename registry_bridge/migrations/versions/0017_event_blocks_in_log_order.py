"""The traced serial ranges' index entries in log order:
``event_blocks (program, serial_series, event_idx, serial_start, serial_end)``, in place
of ``event_blocks (program, serial_series, serial_start)``.

A TraceUnits page answers for the log indexes from where the page before it ended, but
no index served that position: SQLite read every entry of the traced program whose range
starts below the traced serials', from the log's first event, and sorted them, on every
page; PostgreSQL walked the primary key from the position through every event of every
program until the page was full.  Ordered by index within a program and series, a page
seeks its position and reads on, the ranges tested inside the index, until the page is
full: nothing before the position, nor of another program.  The same order serves the
other readers of the old index (a trace's first page, which reads the traced units'
events a chunk at a time from the last it read, and a reconciliation's newest events of
a block, read backwards), so it replaces it: an event still writes one index entry per
range.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_event_blocks_log_order",
        "event_blocks",
        ["program", "serial_series", "event_idx", "serial_start", "serial_end"],
    )
    op.drop_index("ix_event_blocks_range", table_name="event_blocks")


def downgrade() -> None:
    op.create_index(
        "ix_event_blocks_range", "event_blocks", ["program", "serial_series", "serial_start"]
    )
    op.drop_index("ix_event_blocks_log_order", table_name="event_blocks")
