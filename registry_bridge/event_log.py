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
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge.db import defer_insert
from registry_bridge.model import BlockId
from registry_bridge.schema import EventBlock, LedgerEvent, LogHead

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


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """The one byte encoding of an event: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash(payload: bytes) -> bytes:
    """RFC 9162 leaf hash of an entry."""
    return hashlib.sha256(LEAF_PREFIX + payload).digest()


def _locked_head(session: Session) -> LogHead:
    """The log head row, locked once per transaction and reused by every later append.

    Appends of one transaction are serialized by that one lock; re-reading the row for
    every event only cost a round trip each.  The cache is tied to the root transaction,
    so a session that commits and goes on locks the head afresh.
    """
    transaction = session.get_transaction()
    cached = session.info.get(_HEAD_KEY)
    if cached is not None and transaction is not None and cached[0] is transaction:
        head: LogHead = cached[1]
        return head  # attributes a rolled-back savepoint expired reload on access
    # No autoflush: the head row depends on nothing pending, and a flush here would split
    # the changes a step makes to one row into several UPDATEs.
    with session.no_autoflush:
        head = session.execute(
            sa.select(LogHead).where(LogHead.id == 1).with_for_update()
        ).scalar_one()
    session.info[_HEAD_KEY] = (transaction, head)
    return head


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
            },
        )
    return index


def log_size(session: Session) -> int:
    """Number of events in the log."""
    return int(session.execute(sa.select(LogHead.size).where(LogHead.id == 1)).scalar_one())
