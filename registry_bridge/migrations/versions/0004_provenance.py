"""Provenance: the event -> serial range index, and the Merkle node cache.

``event_blocks`` is backfilled from the events already logged (their ``block`` and
``origin`` ranges), so a database migrated mid-life traces its old units too.  The node
cache starts empty: the first checkpoint fills it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PAGE = 5000


def _ranges(payload: bytes) -> list[tuple[str, str, int, int]]:
    try:
        body = json.loads(payload)
    except ValueError:
        return []
    found: list[tuple[str, str, int, int]] = []
    for key in ("block", "origin"):
        value: Any = body.get(key) if isinstance(body, dict) else None
        if not isinstance(value, dict):
            continue
        try:
            entry = (
                str(value["program"]),
                str(value.get("serial_series", "")),
                int(value["serial_start"]),
                int(value["serial_end"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if entry not in found:
            found.append(entry)
    return found


def upgrade() -> None:
    event_blocks = op.create_table(
        "event_blocks",
        sa.Column("event_idx", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("program", sa.String(16), nullable=False),
        sa.Column("serial_series", sa.String(64), nullable=False),
        sa.Column("serial_start", sa.BigInteger, nullable=False),
        sa.Column("serial_end", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("event_idx", "seq", name=op.f("pk_event_blocks")),
    )
    op.create_index(
        "ix_event_blocks_range", "event_blocks", ["program", "serial_series", "serial_start"]
    )
    merkle_head = op.create_table(
        "merkle_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merkle_head")),
    )
    op.bulk_insert(merkle_head, [{"id": 1, "size": 0}])
    op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("idx", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name=op.f("pk_merkle_nodes")),
    )

    bind = op.get_bind()
    events = sa.table(
        "ledger_events", sa.column("idx", sa.BigInteger), sa.column("payload", sa.LargeBinary)
    )
    last = -1
    while True:
        page = bind.execute(
            sa.select(events.c.idx, events.c.payload)
            .where(events.c.idx > last)
            .order_by(events.c.idx)
            .limit(_PAGE)
        ).all()
        if not page:
            break
        rows = [
            {
                "event_idx": int(idx),
                "seq": seq,
                "program": program,
                "serial_series": series,
                "serial_start": start,
                "serial_end": end,
            }
            for idx, payload in page
            for seq, (program, series, start, end) in enumerate(_ranges(bytes(payload)))
        ]
        if rows:
            op.bulk_insert(event_blocks, rows)
        last = int(page[-1][0])


def downgrade() -> None:
    op.drop_table("merkle_nodes")
    op.drop_table("merkle_head")
    op.drop_index("ix_event_blocks_range", table_name="event_blocks")
    op.drop_table("event_blocks")
