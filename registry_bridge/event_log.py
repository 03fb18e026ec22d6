"""The append-only provenance log: one event per ledger state change.

Events are appended in the same database transaction as the change they record, so a
change without its event (or an event without its change) cannot be committed.  Indexes
are dense: every append takes the single ``log_head`` row for update, which serializes
appenders on PostgreSQL as SQLite's BEGIN IMMEDIATE already does.  Leaves are hashed as
RFC 9162 prescribes (SHA-256 of 0x00 followed by the entry) so the Merkle tree of the
provenance issue can be built over them unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from registry_bridge.db import defer_insert, on_write_deferred, run_plain
from registry_bridge.model import BlockId
from registry_bridge.schema import EventBlock, LedgerEvent, LogHead
from registry_bridge.serial_tree import serial_node

LEAF_PREFIX = b"\x00"
_HEAD_KEY = "carbonlink.log_head"
_EVENTS = LedgerEvent.__table__
_EVENT_BLOCKS = EventBlock.__table__

# The signed instruction being carried out by this thread, if any: every event its change
# appends records who signed it (the gateway verifies the signature before the change).
_signed_by: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "signed_by", default=None
)


@contextlib.contextmanager
def signed_instruction(signed_by: Mapping[str, str]) -> Iterator[None]:
    """Record ``signed_by`` (key id, signature...) in every event appended inside the block."""
    token = _signed_by.set(dict(signed_by))
    try:
        yield
    finally:
        _signed_by.reset(token)


def current_signature() -> Mapping[str, str] | None:
    """The signature of the instruction being carried out by this thread (key id,
    signature, nonce, timestamp, SHA-256 of the signed bytes), or None for an unsigned one:
    for a record that keeps who signed a decision the log holds no event of."""
    signed_by = _signed_by.get()
    return None if signed_by is None else dict(signed_by)


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """The one byte encoding of an event: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash(payload: bytes) -> bytes:
    """RFC 9162 leaf hash of an entry."""
    return hashlib.sha256(LEAF_PREFIX + payload).digest()


@dataclass
class _Head:
    """The log head as one transaction holds it: locked, its new size written back later."""

    transaction: SessionTransaction
    """The root transaction that locked it."""
    size: int
    """The index the next event takes."""
    written: int
    """The size as the database holds it within the transaction."""


_READ_HEAD = sa.select(LogHead.size).where(LogHead.id == 1).with_for_update()
_WRITE_HEAD = sa.update(LogHead).where(LogHead.id == 1).values(size=sa.bindparam("size"))


def _locked_head(session: Session) -> _Head:
    """The log head, locked once per transaction and reused by every later append.

    Appends of one transaction are serialized by that one lock; re-reading the row for
    every event only cost a round trip each.  The size is kept in memory and written with
    the deferred rows (see ``_write_head``): as an ORM object, its read and its update
    cost more than the rest of a small step's transaction.
    """
    transaction = session.get_transaction()
    cached: _Head | None = session.info.get(_HEAD_KEY)
    if cached is not None and cached.transaction is transaction:
        return cached
    if transaction is None:
        raise RuntimeError("the provenance log is appended to only inside a transaction")
    size = int(run_plain(session, _READ_HEAD, {})[0][0])
    head = _Head(transaction, size, size)
    session.info[_HEAD_KEY] = head
    return head


def hold_head(session: Session) -> None:
    """Lock the log head now, if the caller's transaction does not hold it yet.

    Every transaction that changes the ledger appends to the log and so holds the head
    until it commits.  Taken before any ledger row, it makes every writer lock in one
    order, the head and then rows: two writers can never each hold what the other waits
    for.  (A writer that locked a row first and then waited for the head, while the
    head's holder waited for that row, stalled both until PostgreSQL aborted one.)
    """
    _locked_head(session)


@on_write_deferred
def _write_head(session: Session) -> None:
    head: _Head | None = session.info.get(_HEAD_KEY)
    if head is not None and head.size != head.written:
        run_plain(session, _WRITE_HEAD, {"size": head.size})
        head.written = head.size


@event.listens_for(Session, "after_soft_rollback")
def _forget_head(session: Session, _previous: Any) -> None:
    # What a rolled-back savepoint appended is dropped with its deferred rows; the size
    # is read again, as the database holds it from before the savepoint (which wrote
    # the head, see db.savepoint).
    session.info.pop(_HEAD_KEY, None)


def append_event(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    at: datetime,
    transfer_id: str = "",
    blocks: Iterable[BlockId] = (),
) -> int:
    """Append one event in the caller's transaction; returns its index.

    Args:
        session: The caller's session (its transaction commits the event with the change).
        kind: The event kind (issuance, split, lock, ...).
        payload: What changed; serialized as canonical JSON with the index, kind and time.
        at: When the change happened.
        transfer_id: The transfer or use the change belongs to, if any.
        blocks: The serial ranges the event concerns (a row's own range and, for a
            mirror, its origin range), indexed in ``event_blocks`` for TraceUnits.
    """
    head = _locked_head(session)
    index = head.size
    head.size = index + 1
    signed_by = _signed_by.get()
    extra = {"signed_by": dict(signed_by)} if signed_by is not None else {}
    body = canonical_json({"index": index, "kind": kind, "at": at.isoformat(), **payload, **extra})
    defer_insert(
        session,
        _EVENTS,
        {
            "idx": index,
            "kind": kind,
            "payload": body,
            "leaf_hash": leaf_hash(body),
            "transfer_id": transfer_id,
            "created_at": at,
        },
    )
    for seq, block in enumerate(dict.fromkeys(blocks)):
        defer_insert(
            session,
            _EVENT_BLOCKS,
            {
                "event_idx": index,
                "seq": seq,
                "program": block.program.value,
                "serial_series": block.serial_series,
                "serial_start": block.serial_start,
                "serial_end": block.serial_end,
                "serial_node": serial_node(block.serial_start, block.serial_end),
            },
        )
    return index


def log_size(session: Session) -> int:
    """Number of events in the log."""
    return int(session.execute(sa.select(LogHead.size).where(LogHead.id == 1)).scalar_one())
