"""A transfer's row as a plain object through a step's transaction (see ``plain_rows``).

Every step of a transfer reads its row locked, changes a few columns and writes it back;
a batch's step does so for a thousand rows.  Held as :class:`TransferRow` objects, new
rows are inserted and changed ones updated with the transaction's deferred rows, before
its steps, which refer to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import plain_rows
from registry_bridge.plain_rows import PlainRow
from registry_bridge.schema import TransferRecord


def _transfers_table() -> sa.Table:
    table = TransferRecord.__table__
    if not isinstance(table, sa.Table):
        raise TypeError(f"TransferRecord maps {table!r}, not a table")
    return table


_TABLE = _transfers_table()
_NAMES: tuple[str, ...] = tuple(c.key for c in _TABLE.columns)


class TransferRow(PlainRow):
    """One row of ``transfers`` as plain attributes (the names of ``TransferRecord``'s)."""

    __slots__ = _NAMES

    TABLE = _TABLE
    COLUMNS: ClassVar[Mapping[str, str]] = {c: c for c in _NAMES}
    # What a step may change; the rest is fixed when the transfer is proposed.
    CHANGEABLE: ClassVar[tuple[str, ...]] = (
        "state",
        "kind",
        "plan",
        "decision",
        "failure_reason",
        "lock_expires_at",
        "lease_owner",
        "lease_expires_at",
        "updated_at",
    )

    id: str
    request_id: str
    caller: str
    body_sha256: bytes
    state: str
    kind: str
    source_registry: str
    source_account: str
    destination_registry: str
    destination_account: str
    instruction: str
    plan: str
    decision: str
    failure_reason: str
    lock_expires_at: datetime | None
    lease_owner: str
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


def add(session: Session, row: TransferRow) -> None:
    """Insert a new transfer's row with the transaction's deferred rows (in its state then)."""
    plain_rows.add(session, row)


_SELECT = TransferRow.SELECT.where(_TABLE.c.id.in_(sa.bindparam("keys", expanding=True)))
_SELECT_ONE = TransferRow.SELECT.where(_TABLE.c.id == sa.bindparam("key"))
# Locked in id order, so two gateways locking overlapping groups wait for each other
# instead of deadlocking.  One row (as a single transfer's every step reads it) is read
# as plain text (see plain_rows.fetch).
_LOCK = _SELECT.order_by(_TABLE.c.id).with_for_update()
_LOCK_ONE = _SELECT_ONE.with_for_update()


def lock(session: Session, transfer_ids: Iterable[str]) -> dict[str, TransferRow]:
    """The rows of ``transfer_ids`` (those that exist), locked and held by the transaction.

    A row the transaction already holds is taken as it holds it.
    """
    return plain_rows.read(session, TransferRow, sorted(set(transfer_ids)), _LOCK_ONE, _LOCK)


def read(session: Session, transfer_ids: Sequence[str]) -> list[TransferRow]:
    """The rows of ``transfer_ids`` as they are now, unlocked and not held: snapshots."""
    keys = list(dict.fromkeys(transfer_ids))
    return [TransferRow(**m) for m in plain_rows.fetch(session, _SELECT_ONE, _SELECT, keys)]
