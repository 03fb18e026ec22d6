"""The provenance log as auditors see it: signed checkpoints, proofs and unit traces.

Every ledger change is already an event of the log (``event_log``) with its serial
ranges indexed (``event_blocks``).  This module signs checkpoints over the log's Merkle
tree (``merkle_store``), proves consistency between any two sizes, and traces units: given any
serial range, on the origin side or a mirror's, it finds every event of every unit in
it, each with an inclusion proof against one checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import merkle_store
from registry_bridge.audit import TraceStatement
from registry_bridge.block_json import block_from_parts, block_id_from_dict
from registry_bridge.db import read_only, unit_of_work
from registry_bridge.errors import InvalidRequest, NotFound
from registry_bridge.model import BlockId, Program, UnitBlock, merge_spans, spans_missing
from registry_bridge.schema import EventBlock, LedgerEvent, LogHead, MerkleHead
from registry_bridge.signed_note import Checkpoint, NoteSigner


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint, its signed note and the key that verifies it."""

    checkpoint: Checkpoint
    note: str
    verifier_key: str
    """The signer's verifier key, ``name+hexid+base64key`` (publish it out of band too)."""


@dataclass(frozen=True)
class ProvenEvent:
    """One event of a trace with its inclusion proof."""

    index: int
    kind: str
    at: datetime
    transfer_id: str
    blocks: tuple[BlockId, ...]
    """The serial ranges the event concerns (the row's own and its origin)."""
    leaf_data: bytes
    """The exact bytes hashed into the log."""
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Trace:
    """The history of a serial range, proven against one checkpoint."""

    query: BlockId
    checkpoint: SignedCheckpoint
    events: tuple[ProvenEvent, ...]
    trace_note: str
    """The log key's signature that ``events`` are every event of ``query`` at the
    checkpoint (an ``audit.TraceStatement``): what lets an auditor see one left out."""


def _overlap(session: Session, block: BlockId, size: int) -> set[int]:
    """Indexes (below ``size``) of events whose indexed ranges overlap ``block``."""
    return set(
        session.execute(
            sa.select(EventBlock.event_idx).where(
                EventBlock.program == block.program.value,
                EventBlock.serial_series == block.serial_series,
                EventBlock.serial_start <= block.serial_end,
                EventBlock.serial_end >= block.serial_start,
                EventBlock.event_idx < size,
            )
        ).scalars()
    )


def _clip(block: BlockId, query: BlockId) -> tuple[int, int] | None:
    if not block.overlaps(query):
        return None
    return max(block.serial_start, query.serial_start), min(block.serial_end, query.serial_end)


def origin_ranges(bodies: Iterable[dict[str, Any]], query: BlockId) -> list[BlockId]:
    """The origin serials that the units of ``query`` stand for, per the events' rows.

    A mirror row maps its serials 1:1 onto its origin range; an origin row is its own.
    """
    found: set[BlockId] = set()
    for body in bodies:
        if not isinstance(body.get("block"), dict) or not isinstance(body.get("origin"), dict):
            continue
        block = block_id_from_dict(body["block"])
        origin = block_id_from_dict(body["origin"])
        own = _clip(block, query)
        if own is not None:
            offset = origin.serial_start - block.serial_start
            found.add(
                BlockId(origin.program, origin.serial_series, own[0] + offset, own[1] + offset)
            )
        direct = _clip(origin, query)
        if direct is not None:
            found.add(BlockId(origin.program, origin.serial_series, *direct))
    return sorted(found)


def _merged(ranges: Iterable[BlockId]) -> list[BlockId]:
    """``ranges`` with adjacent and overlapping ones joined: the same serials, looked up
    once per run rather than once per range (units sold in lots leave one range each)."""
    spans: dict[tuple[Program, str], list[tuple[int, int]]] = {}
    for block in ranges:
        spans.setdefault((block.program, block.serial_series), []).append(
            (block.serial_start, block.serial_end)
        )
    return [
        BlockId(program, series, start, end)
        for (program, series), runs in spans.items()
        for start, end in merge_spans(runs)
    ]


def _check_covered(query: BlockId, bodies: Iterable[dict[str, Any]]) -> None:
    """Every serial of ``query`` is a row of some event (its own range or, for a row that
    stands for other units, its origin range).

    Raises:
        NotFound: Naming the first serials of ``query`` no event concerns.
    """
    spans: list[tuple[int, int]] = []
    for body in bodies:
        for key in ("block", "origin"):
            if isinstance(body.get(key), dict):
                clipped = _clip(block_id_from_dict(body[key]), query)
                if clipped is not None:
                    spans.append(clipped)
    gaps = spans_missing(query.serial_start, query.serial_end, merge_spans(spans))
    if gaps:
        at, gap_end = gaps[0]
        series = f"/{query.serial_series}" if query.serial_series else ""
        # Rendered "... not found": never issued, or issued where the gateway has not
        # looked yet.
        raise NotFound(
            f"events of units {query.program.value}{series} {at}-{gap_end} (part of the "
            f"queried {query.serial_start}-{query.serial_end})"
        )


_CLAIMED = ("project_id", "country", "vintage_start", "vintage_end")
"""Attributes a registry's serial states about its units, checked against their issuance."""


def check_serial_claims(trace: Trace, serial: str, claimed: UnitBlock) -> None:
    """The units were issued as ``serial`` says: same project, country and vintage (and,
    for an origin serial, the same issuance), not merely the same serial numbers.

    Raises:
        InvalidRequest: Naming each attribute the serial states otherwise than the
            issuance of its units.
    """
    own = claimed.id
    problems: list[str] = []
    for event in trace.events:
        if event.kind != "issuance":
            continue
        body = json.loads(event.leaf_data)
        if not body.get("attributes"):
            continue
        issued = block_from_parts(block_id_from_dict(body["block"]), body["attributes"])
        names: tuple[str, ...] = _CLAIMED
        if (issued.id.program, issued.id.serial_series) == (own.program, own.serial_series):
            names = (*_CLAIMED, "issuance_id")
        for name in names:
            said, was = getattr(claimed, name), getattr(issued, name)
            if said and was and said != was:
                problems.append(f"{name} {said} (issued as {was})")
    if problems:
        raise InvalidRequest.field(
            "serial",
            f"{serial!r} does not describe the units it numbers: " + ", ".join(problems),
        )


_SIZES = sa.select(
    sa.select(LogHead.size).where(LogHead.id == 1).scalar_subquery(),
    sa.select(MerkleHead.size).where(MerkleHead.id == 1).scalar_subquery(),
)
"""The log's size and how much of it the node cache covers, in one round trip (every
request starts with both, and on PostgreSQL each round trip is a sizeable part of it)."""


class ProvenanceLog:
    """Checkpoints, proofs and traces over the ledger's provenance log."""

    def __init__(self, sessions: sessionmaker[Session], signer: NoteSigner) -> None:
        """Serve the log in ``sessions``'s database, signing with ``signer``.

        The signer's name is the log's origin line.
        """
        self._sessions = sessions
        self._signer = signer

    @property
    def verifier_key(self) -> str:
        """The key that verifies this log's checkpoints."""
        return self._signer.verifier.encode()

    @contextmanager
    def _covered(self) -> Iterator[tuple[Session, int]]:
        """A read-only snapshot of the log, and its size, with the node cache covering it.

        Reads take no write lock (on SQLite a plain ``BEGIN`` under WAL, not ``BEGIN
        IMMEDIATE``), so proofs never queue behind the bridge's write transactions.  Only
        when events were appended since the cache was last extended does a short write
        transaction extend it first (``extend_cache`` re-checks under its own row lock).
        """
        with read_only(self._sessions) as session:
            size, cached = session.connection().execute(_SIZES).one()
            size = int(size)
            if int(cached or 0) >= size:
                yield session, size
                return
        with unit_of_work(self._sessions) as session:
            merkle_store.extend_cache(session, size)
        # A new snapshot: the one above predates the extension. The log may have grown
        # since, but the cache now covers at least ``size``, which is all this answer uses.
        with read_only(self._sessions) as session:
            yield session, size

    def _sign(self, size: int, root: bytes) -> SignedCheckpoint:
        checkpoint = Checkpoint(self._signer.name, size, root)
        return SignedCheckpoint(checkpoint, self._signer.sign(checkpoint), self.verifier_key)

    def checkpoint(self) -> SignedCheckpoint:
        """A signed checkpoint of the log as it is now."""
        with self._covered() as (session, size):
            root = merkle_store.stored_root(session, size)
        return self._sign(size, root)

    def consistency(self, first: int, second: int) -> merkle_store.StoredProof:
        """The proof that the log at ``second`` extends the log at ``first``.

        Raises:
            InvalidRequest: Unless ``0 < first <= second <= size of the log``.
        """
        with self._covered() as (session, size):
            if second > size:
                raise InvalidRequest.field(
                    "second_size", f"{second} is beyond the log's size {size}"
                )
            return merkle_store.consistency_proof(session, first, second)

    def trace(self, query: BlockId) -> Trace:
        """Every event of every unit of ``query``, proven against one fresh checkpoint.

        ``query`` may be an origin range or a mirror's local range: the units' origin
        serials are found first, then every event of any row standing for them (origin
        rows, their splits, their mirrors at any registry).

        Raises:
            NotFound: No event concerns some of these serials: the answer would be the
                history of only part of what was asked, so there is none.
        """
        with self._covered() as (session, size):
            first = _overlap(session, query, size)
            if not first:
                raise NotFound(
                    f"units {query.program.value}/{query.serial_series or '-'} "
                    f"{query.serial_start}-{query.serial_end}"
                )
            direct = self._bodies(session, first)
            _check_covered(query, direct.values())
            found = set(first)
            for origin in _merged(origin_ranges(direct.values(), query)):
                found |= _overlap(session, origin, size)
            events = list(
                session.execute(
                    sa.select(LedgerEvent)
                    .where(LedgerEvent.idx.in_(sorted(found)))
                    .order_by(LedgerEvent.idx)
                ).scalars()
            )
            ranges: dict[int, list[BlockId]] = {}
            for row in session.execute(
                sa.select(EventBlock)
                .where(EventBlock.event_idx.in_(sorted(found)))
                .order_by(EventBlock.event_idx, EventBlock.seq)
            ).scalars():
                ranges.setdefault(row.event_idx, []).append(
                    BlockId(
                        Program(row.program), row.serial_series, row.serial_start, row.serial_end
                    )
                )
            proofs = merkle_store.inclusion_proofs(session, [e.idx for e in events], size)
            root = merkle_store.stored_root(session, size)
            # Built inside the snapshot: the read-only session rolls back on exit, which
            # expires the loaded rows.
            proven = tuple(
                ProvenEvent(
                    index=e.idx,
                    kind=e.kind,
                    at=e.created_at,
                    transfer_id=e.transfer_id,
                    blocks=tuple(ranges.get(e.idx, ())),
                    leaf_data=bytes(e.payload),
                    proof=proofs[e.idx].hashes,
                )
                for e in events
            )
        statement = TraceStatement(
            self._signer.name, size, root, query, tuple(e.index for e in proven)
        )
        return Trace(
            query, self._sign(size, root), proven, self._signer.sign_body(statement.body())
        )

    @staticmethod
    def _bodies(session: Session, indexes: Iterable[int]) -> dict[int, dict[str, Any]]:
        bodies: dict[int, dict[str, Any]] = {}
        for idx, payload in session.execute(
            sa.select(LedgerEvent.idx, LedgerEvent.payload).where(
                LedgerEvent.idx.in_(sorted(indexes))
            )
        ).tuples():
            try:
                body = json.loads(bytes(payload))
            except ValueError:
                continue
            if isinstance(body, dict):
                bodies[int(idx)] = body
        return bodies
