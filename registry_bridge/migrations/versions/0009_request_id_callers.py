"""Request ids are scoped per caller: a ``caller`` column beside every stored request id.

Transfers, unit uses, migrations and idempotency records were unique by request id alone,
one space shared by every party.  Each now belongs to its caller (the token subject of a
secure gateway), and the uniqueness is per request id and caller.

Rows recorded before carry the local caller (the empty string, as an insecure gateway's
calls do): a gateway that ran insecure keeps answering its old request ids as before,
and on a secure gateway no authenticated caller (whose subject is never empty) reaches
them, so nobody's id is blocked or answered by another's from then on.

Downgrading refuses a database where two callers use one request id: the single space
cannot hold both.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_LOCAL_CALLER = ""
"""``registry_bridge.idempotency.LOCAL_CALLER`` when this was written (migrations never
import the code, which changes)."""

_SCOPED = ("transfers", "unit_uses", "migrations")
"""Tables with a unique request id of their own (idempotency records key by it instead)."""


def _add_caller(table: str) -> None:
    # Added with a default so the existing rows get one, then (in the batch that follows)
    # without: every writer names its caller, and a forgotten one must fail, not default.
    op.add_column(
        table,
        sa.Column("caller", sa.String(128), nullable=False, server_default=_LOCAL_CALLER),
    )


def upgrade() -> None:
    for table in _SCOPED:
        _add_caller(table)
        with op.batch_alter_table(table) as batch:
            batch.alter_column("caller", server_default=None)
            batch.drop_constraint(f"uq_{table}_request_id", type_="unique")
            batch.create_unique_constraint(
                f"uq_{table}_request_id_caller", ["request_id", "caller"]
            )
    _add_caller("idempotency_records")
    with op.batch_alter_table("idempotency_records") as batch:
        batch.alter_column("caller", server_default=None)
        batch.drop_constraint("pk_idempotency_records", type_="primary")
        batch.create_primary_key("pk_idempotency_records", ["caller", "method", "request_id"])


def _refuse_shared_ids(table: str, key: tuple[str, ...]) -> None:
    columns = ", ".join(key)
    shared = (
        op.get_bind()
        .execute(sa.text(f"SELECT {columns} FROM {table} GROUP BY {columns} HAVING COUNT(*) > 1"))
        .first()
    )
    if shared is not None:
        raise RuntimeError(
            f"cannot downgrade below 0009: in {table}, request id {shared[-1]!r} is used by "
            "more than one caller, which one space for every caller cannot hold"
        )


def downgrade() -> None:
    _refuse_shared_ids("idempotency_records", ("method", "request_id"))
    with op.batch_alter_table("idempotency_records") as batch:
        batch.drop_constraint("pk_idempotency_records", type_="primary")
        batch.create_primary_key("pk_idempotency_records", ["method", "request_id"])
        batch.drop_column("caller")
    for table in reversed(_SCOPED):
        _refuse_shared_ids(table, ("request_id",))
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_request_id_caller", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_request_id", ["request_id"])
            batch.drop_column("caller")
