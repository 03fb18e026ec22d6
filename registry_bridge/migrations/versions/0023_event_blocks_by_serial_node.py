"""Each traced range's index entries filed under a node of the serials' tree:
``event_blocks.serial_node`` and ``event_blocks (program, serial_series, serial_node,
event_idx, serial_start, serial_end)``.

A TraceUnits page sought its position in the program's entries in log order (0017) and
read on, testing each entry's range inside the index: every entry of the traced program
inside its window, the program's other units' as much as the traced ones', and on a
trace's last page every entry of the program up to the log's end.  Filed under the node
of a binary tree over the serials that holds the range (``registry_bridge.serial_tree``),
a narrow range's entries are sought node by node from the page's position, and the other
units' are not read.  The entries logged before this revision get their node here.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_PAGE = 2000


def _node(start: int, end: int) -> int:
    # As registry_bridge.serial_tree.serial_node, frozen here: this revision files the
    # entries as the code of its day reads them.
    if start == 0:
        return 0
    level = ((start - 1) ^ end).bit_length() - 1
    return (end >> level) << level


def upgrade() -> None:
    with op.batch_alter_table("event_blocks") as table:
        table.add_column(sa.Column("serial_node", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    blocks = sa.table(
        "event_blocks",
        sa.column("event_idx", sa.BigInteger),
        sa.column("seq", sa.Integer),
        sa.column("serial_start", sa.BigInteger),
        sa.column("serial_end", sa.BigInteger),
        sa.column("serial_node", sa.BigInteger),
    )
    filed = (
        sa.update(blocks)
        .where(
            blocks.c.event_idx == sa.bindparam("at_idx"),
            blocks.c.seq == sa.bindparam("at_seq"),
        )
        .values(serial_node=sa.bindparam("node"))
    )
    after = (-1, -1)
    while True:
        page = bind.execute(
            sa.select(blocks.c.event_idx, blocks.c.seq, blocks.c.serial_start, blocks.c.serial_end)
            .where(
                sa.or_(
                    blocks.c.event_idx > after[0],
                    sa.and_(blocks.c.event_idx == after[0], blocks.c.seq > after[1]),
                )
            )
            .order_by(blocks.c.event_idx, blocks.c.seq)
            .limit(_PAGE)
        ).all()
        if not page:
            break
        bind.execute(
            filed,
            [
                {"at_idx": idx, "at_seq": seq, "node": _node(int(start), int(end))}
                for idx, seq, start, end in page
            ],
        )
        after = (int(page[-1][0]), int(page[-1][1]))
    with op.batch_alter_table("event_blocks") as table:
        table.alter_column("serial_node", existing_type=sa.BigInteger(), nullable=False)
    op.create_index(
        "ix_event_blocks_node",
        "event_blocks",
        ["program", "serial_series", "serial_node", "event_idx", "serial_start", "serial_end"],
    )


def downgrade() -> None:
    op.drop_index("ix_event_blocks_node", table_name="event_blocks")
    with op.batch_alter_table("event_blocks") as table:
        table.drop_column("serial_node")
