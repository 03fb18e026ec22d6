"""Transfer rows as plain objects through a step's transaction, written with its deferred rows.

Every step of a transfer reads its row locked, changes a few columns and writes it back;
a batch's step does so for a thousand rows.  As ORM objects, their loading, attribute
instrumentation and unit-of-work flush cost more than the rest of the step.  Here a row
is read with its lock as plain columns into a :class:`TransferRow`, which notes its own
changes, and the transaction's new and changed rows are written where its deferred rows
are (before queries, savepoints and the commit; see ``db.write_deferred``): new rows as
one INSERT, changed ones as one UPDATE, both before the deferred inserts, which may refer
to them (a step to its transfer).

A savepoint that rolls back puts the rows it changed back as the database has them again,
and drops the rows it created.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from registry_bridge.db import before_deferred_inserts, read_plain, run_plain_many
from registry_bridge.schema import TransferRecord


def _transfers_table() -> sa.Table:
    table = TransferRecord.__table__
    if not isinstance(table, sa.Table):
        raise TypeError(f"TransferRecord maps {table!r}, not a table")
    return table


_TABLE = _transfers_table()
COLUMNS: tuple[str, ...] = tuple(c.key for c in _TABLE.columns)
# What a step may change; the rest is fixed when the transfer is proposed.
_CHANGEABLE = (
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
# session.info key: the transaction's _Book.
_BOOK = "carbonlink.transfer_rows"


class TransferRow:
    """One row of ``transfers`` as plain attributes (the names of ``TransferRecord``'s)."""

    __slots__ = (*COLUMNS, "_book")

    id: str
    request_id: str
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
    _book: _Book | None

    def __init__(self, **values: Any) -> None:
        missing = [c for c in COLUMNS if c not in values]
        unknown = [k for k in values if k not in COLUMNS]
        if missing or unknown:
            raise TypeError(f"TransferRow: missing {missing}, unknown {unknown}")
        object.__setattr__(self, "_book", None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _CHANGEABLE:
            raise AttributeError(f"transfers.{name} is fixed once the transfer is proposed")
        object.__setattr__(self, name, value)
        if self._book is not None:
            self._book.changed[self.id] = self

    def __repr__(self) -> str:
        return f"TransferRow(id={self.id!r}, state={self.state!r})"

    def changeable(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in _CHANGEABLE)

    def restore(self, values: tuple[Any, ...]) -> None:
        for name, value in zip(_CHANGEABLE, values, strict=True):
            object.__setattr__(self, name, value)


class _Book:
    """A transaction's transfer rows: every row it holds, and what it has not written."""

    def __init__(self) -> None:
        self.rows: dict[str, TransferRow] = {}
        self.new: dict[str, TransferRow] = {}
        self.changed: dict[str, TransferRow] = {}
        self.written: dict[str, tuple[Any, ...]] = {}
        """Each held row's changeable values as the database has them."""
        self.savepoints: list[dict[str, tuple[Any, ...] | None]] = []
        """Per open savepoint, innermost last: the rows written in it, each with its
        values as written before it (None: inserted in it)."""

    def wrote(self, row: TransferRow) -> None:
        values = row.changeable()
        if self.savepoints:
            self.savepoints[-1].setdefault(row.id, self.written.get(row.id))
        self.written[row.id] = values

    def hold(self, row: TransferRow, *, new: bool) -> None:
        self.rows[row.id] = row
        object.__setattr__(row, "_book", self)
        if new:
            self.new[row.id] = row
        else:
            self.written[row.id] = row.changeable()

    def let_go(self) -> None:
        for row in self.rows.values():
            object.__setattr__(row, "_book", None)


def _book(session: Session) -> _Book:
    book: _Book | None = session.info.get(_BOOK)
    if book is None:
        book = session.info[_BOOK] = _Book()
    return book


def add(session: Session, row: TransferRow) -> None:
    """Insert a new transfer's row with the transaction's deferred rows (in its state then)."""
    _book(session).hold(row, new=True)


_SELECT = sa.select(*_TABLE.columns).where(_TABLE.c.id.in_(sa.bindparam("ids", expanding=True)))
_LOCK = _SELECT.order_by(_TABLE.c.id).with_for_update()


def _rows(session: Session, statement: sa.Select[Any], ids: Sequence[str]) -> list[TransferRow]:
    found: list[TransferRow] = []
    for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
        found.extend(
            TransferRow(**row._mapping) for row in session.execute(statement, {"ids": chunk})
        )
    return found


# One row, as a single transfer's every step reads it: run as plain text (db.read_plain).
_LOCK_ONE = sa.select(*_TABLE.columns).where(_TABLE.c.id == sa.bindparam("id")).with_for_update()


def lock(session: Session, transfer_ids: Iterable[str]) -> dict[str, TransferRow]:
    """The rows of ``transfer_ids`` (those that exist), locked and held by the transaction.

    A row the transaction already holds is taken as it holds it; the others are read with
    one statement per 500, in id order, so two gateways locking overlapping groups wait
    for each other instead of deadlocking.
    """
    book = _book(session)
    wanted = sorted(set(transfer_ids))
    unread = [t for t in wanted if t not in book.rows]
    if len(unread) == 1:
        found = [TransferRow(**r) for r in read_plain(session, _LOCK_ONE, {"id": unread[0]})]
    else:
        found = _rows(session, _LOCK, unread)
    for row in found:
        book.hold(row, new=False)
    return {t: book.rows[t] for t in wanted if t in book.rows}


def read(session: Session, transfer_ids: Sequence[str]) -> list[TransferRow]:
    """The rows of ``transfer_ids`` as they are now, unlocked and not held: snapshots."""
    return _rows(session, _SELECT, list(dict.fromkeys(transfer_ids)))


_INSERT = _TABLE.insert().values({c: sa.bindparam(c, type_=_TABLE.c[c].type) for c in COLUMNS})
_UPDATE = (
    _TABLE.update()
    .where(_TABLE.c.id == sa.bindparam("row_id", type_=_TABLE.c.id.type))
    .values({c: sa.bindparam(c, type_=_TABLE.c[c].type) for c in _CHANGEABLE})
)


@before_deferred_inserts
def _write(session: Session) -> None:
    book: _Book | None = session.info.get(_BOOK)
    if book is None or not (book.new or book.changed):
        return
    new = list(book.new.values())
    changed = [r for t, r in book.changed.items() if t not in book.new]
    run_plain_many(session, _INSERT, [{c: getattr(r, c) for c in COLUMNS} for r in new])
    updates = []
    for row in changed:
        values = row.changeable()
        if values != book.written[row.id]:
            updates.append({"row_id": row.id, **dict(zip(_CHANGEABLE, values, strict=True))})
    run_plain_many(session, _UPDATE, updates)
    for row in (*new, *changed):
        book.wrote(row)
    book.new.clear()
    book.changed.clear()


@event.listens_for(Session, "after_transaction_create")
def _savepoint_begins(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        _book(session).savepoints.append({})


@event.listens_for(Session, "after_commit")
def _savepoint_released(session: Session) -> None:
    # Fired for a savepoint's release as well as for the commit; at a release the session
    # is still in the savepoint.  Its writes now belong to the enclosing savepoint, if any.
    book: _Book | None = session.info.get(_BOOK)
    if book is None or not session.in_nested_transaction() or not book.savepoints:
        return
    released = book.savepoints.pop()
    if book.savepoints:
        for transfer_id, before in released.items():
            book.savepoints[-1].setdefault(transfer_id, before)


@event.listens_for(Session, "after_soft_rollback")
def _savepoint_rolled_back(session: Session, previous: SessionTransaction) -> None:
    book: _Book | None = session.info.get(_BOOK)
    if book is None or not previous.nested or not book.savepoints:
        return  # the end of the whole transaction lets go of the book (_done)
    # Rows the savepoint inserted are gone, and those it wrote are as they were before it;
    # its unwritten changes and new rows were never in the database.
    for transfer_id, before in book.savepoints.pop().items():
        if before is None:
            del book.written[transfer_id]
            book.changed.pop(transfer_id, None)
            object.__setattr__(book.rows.pop(transfer_id), "_book", None)
        else:
            book.written[transfer_id] = before
            book.rows[transfer_id].restore(before)
    for transfer_id in list(book.new):
        object.__setattr__(book.rows.pop(transfer_id), "_book", None)
    book.new.clear()
    for transfer_id in book.changed:
        book.rows[transfer_id].restore(book.written[transfer_id])
    book.changed.clear()


@event.listens_for(Session, "after_transaction_end")
def _done(session: Session, transaction: SessionTransaction) -> None:
    # Committed or rolled back, the rows outlive the transaction only as snapshots:
    # changes to them no longer count.  (A savepoint's end is not the transaction's.)
    if transaction.parent is None:
        book: _Book | None = session.info.pop(_BOOK, None)
        if book is not None:
            book.let_go()
