"""Ledger: unit blocks, transfers and their steps, unit uses, the provenance log.

On PostgreSQL an exclusion constraint makes the database refuse two live rows of one
program and serial series whose ranges overlap; SQLite has no such constraint, and the
ledger checks inside its serialized (BEGIN IMMEDIATE) write transaction instead.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ledger_blocks",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("program", sa.String(16), nullable=False),
        sa.Column("serial_series", sa.String(64), nullable=False),
        sa.Column("serial_start", sa.BigInteger, nullable=False),
        sa.Column("serial_end", sa.BigInteger, nullable=False),
        sa.Column("registry", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("live", sa.Boolean, nullable=False),
        sa.Column("is_mirror", sa.Boolean, nullable=False),
        sa.Column("origin_program", sa.String(16), nullable=False),
        sa.Column("origin_series", sa.String(64), nullable=False),
        sa.Column("origin_start", sa.BigInteger, nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("lock_transfer_id", sa.String(64), nullable=True),
        sa.Column("lock_expires_at", _TS, nullable=True),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "serial_end >= serial_start", name=op.f("ck_ledger_blocks_range_ordered")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_blocks")),
    )
    op.create_index(
        "ix_ledger_blocks_live_range",
        "ledger_blocks",
        ["program", "serial_series", "serial_start", "live"],
    )
    op.create_index(
        "ix_ledger_blocks_origin",
        "ledger_blocks",
        ["origin_program", "origin_series", "origin_start"],
    )
    op.create_index("ix_ledger_blocks_holder", "ledger_blocks", ["registry", "account", "live"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        op.execute(
            "ALTER TABLE ledger_blocks ADD CONSTRAINT ex_ledger_blocks_live_overlap "
            "EXCLUDE USING gist (program WITH =, serial_series WITH =, "
            "int8range(serial_start, serial_end, '[]') WITH &&) WHERE (live)"
        )

    op.create_table(
        "transfers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("body_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_registry", sa.String(32), nullable=False),
        sa.Column("source_account", sa.String(128), nullable=False),
        sa.Column("destination_registry", sa.String(32), nullable=False),
        sa.Column("destination_account", sa.String(128), nullable=False),
        sa.Column("instruction", sa.Text, nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=False),
        sa.Column("lock_expires_at", _TS, nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=False),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.UniqueConstraint("request_id", name=op.f("uq_transfers_request_id")),
    )
    op.create_index("ix_transfers_state", "transfers", ["state"])

    op.create_table(
        "transfer_steps",
        sa.Column("transfer_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["transfers.id"],
            ondelete="RESTRICT",
            name=op.f("fk_transfer_steps_transfer_id_transfers"),
        ),
        sa.PrimaryKeyConstraint("transfer_id", "seq", name=op.f("pk_transfer_steps")),
    )

    op.create_table(
        "unit_uses",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("body_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("registry", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unit_uses")),
        sa.UniqueConstraint("request_id", name=op.f("uq_unit_uses_request_id")),
    )

    log_head = op.create_table(
        "log_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_head")),
    )
    op.bulk_insert(log_head, [{"id": 1, "size": 0}])

    op.create_table(
        "ledger_events",
        sa.Column("idx", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("transfer_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("idx", name=op.f("pk_ledger_events")),
    )
    op.create_index("ix_ledger_events_transfer", "ledger_events", ["transfer_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_events_transfer", table_name="ledger_events")
    op.drop_table("ledger_events")
    op.drop_table("log_head")
    op.drop_table("unit_uses")
    op.drop_table("transfer_steps")
    op.drop_index("ix_transfers_state", table_name="transfers")
    op.drop_table("transfers")
    op.drop_index("ix_ledger_blocks_holder", table_name="ledger_blocks")
    op.drop_index("ix_ledger_blocks_origin", table_name="ledger_blocks")
    op.drop_index("ix_ledger_blocks_live_range", table_name="ledger_blocks")
    op.drop_table("ledger_blocks")
