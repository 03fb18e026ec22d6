"""The provenance log as auditors see it: signed checkpoints, proofs and unit traces.

Every ledger change is already an event of the log (``event_log``) with its serial
ranges indexed (``event_blocks``).  This module signs checkpoints over the log's Merkle
tree (``merkle_store``), proves consistency between any two sizes, and traces units: given any
serial range, on the origin side or a mirror's, it finds every event of every unit in
it, each with an inclusion proof against one checkpoint.

A trace is read in pages of bounded size (an issuance sold in thousands of lots has
thousands of events, each a kilobyte of reply with its proof): every page of one trace
is proven against the checkpoint of its first, and signs which events answer the query
among the log indexes it covers, so the pages of a trace, together, say which events
answer it in the whole log.  A page reads the log a chunk at a time: no page holds the
whole history in memory, however long.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import merkle, merkle_store, serial_nodes
from registry_bridge.audit import TraceStatement
from registry_bridge.block_json import block_from_parts, block_id_from_dict
from registry_bridge.db import read_only, unit_of_work
from registry_bridge.errors import InvalidRequest, NotFound
from registry_bridge.model import (
    BlockId,
    Program,
    UnitBlock,
    merge_blocks,
    merge_spans,
    spans_missing,
)
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
class TracePage:
    """One page of the history of a serial range, proven against one checkpoint."""

    query: BlockId
    checkpoint: SignedCheckpoint
    """The same on every page of one trace: the first page's pins it."""
    events: tuple[ProvenEvent, ...]
    trace_note: str
    """The log key's signature that ``events`` are every event of ``query`` at the
    checkpoint among the indexes of ``window`` (an ``audit.TraceStatement``): what lets
    an auditor see one left out, or a page."""
    window: tuple[int, int]
    """The indexes ``[start, end)`` this page answers for; the next starts at ``end``."""
    ranges: tuple[BlockId, ...] = ()
    """The serial ranges whose events answer ``query`` at the checkpoint: ``query`` and
    the origin serials its units stand for.  Fixed by the checkpoint, so the trace's
    later pages take them (``trace_page``'s ``ranges``) rather than read every event of
    the units again to work them out."""

    @property
    def next_start(self) -> int | None:
        """Where the next page starts, or None when this page is the last."""
        end = self.window[1]
        return None if end == self.checkpoint.checkpoint.size else end


DEFAULT_PAGE_BYTES = 1024 * 1024
"""A page's reply budget unless the caller gives one: a quarter of gRPC's default 4 MiB
receive limit."""

_CHUNK = 512
"""Events (or their ranges) read per statement while a page is worked out: bounds what
a page holds in memory, whatever the length of the history."""

_STATEMENT_RANGES = 100
"""Serial ranges ORed in one statement: SQLite's expression depth is 1000, and old builds
bind at most 999 parameters."""

_EVENT_OVERHEAD = 128
"""Bytes of a traced event's reply besides its payload, proof hashes, transfer id and
blocks: field tags and lengths, index, tree size, kind, time (generous; see the tests),
and its index in the page's trace note."""

_NOTE_BYTES = 2048
"""Bytes of a page's checkpoint, and of its trace note but for the list of indexes."""


def _overlaps_any(ranges: Iterable[BlockId]) -> sa.ColumnElement[bool]:
    """Rows of ``event_blocks`` that overlap one of ``ranges``."""
    return sa.or_(
        *(
            sa.and_(
                EventBlock.program == block.program.value,
                EventBlock.serial_series == block.serial_series,
                EventBlock.serial_start <= block.serial_end,
                EventBlock.serial_end >= block.serial_start,
            )
            for block in ranges
        )
    )


_STATEMENT_READS = 100
"""Limited reads side by side (``UNION ALL``, five parameters each and three shared) in
one statement: SQLite's compound selects hold 500 members, and old builds bind at most
999 parameters."""


@dataclass(frozen=True)
class _Read:
    """One limited read of the index: the entries of ``block``'s program and series that
    overlap it, filed under ``node`` (``ix_event_blocks_node``), or under any node, in
    log order (``ix_event_blocks_log_order``) for None."""

    block: BlockId
    node: int | None


def _plan_reads(session: Session, ranges: Sequence[BlockId]) -> list[_Read]:
    """The reads that find the events indexed under a range overlapping one of
    ``ranges``.

    Each range is read under each node of the serials' tree a range overlapping it can
    be filed under (``serial_nodes.nodes_to_seek``): it reads the traced units' entries,
    and only those of other ranges that hold one of the same ancestors.  A range with
    more nodes than ``serial_nodes.INNER_NODES`` inside, or than one statement's reads,
    is read in its program's entries in log order.
    """
    reads: list[_Read] = []
    for block, nodes in zip(ranges, serial_nodes.nodes_to_seek(session, ranges), strict=True):
        if nodes is None or len(nodes) > _STATEMENT_READS:
            reads.append(_Read(block, None))
        else:
            reads.extend(_Read(block, node) for node in nodes)
    return reads


_POSTGRES_NODE_READS = (
    sa.text(
        "SELECT found.event_idx FROM unnest(CAST(:node_programs AS VARCHAR[]), "
        "CAST(:node_series AS VARCHAR[]), CAST(:nodes AS BIGINT[]), "
        "CAST(:node_firsts AS BIGINT[]), CAST(:node_lasts AS BIGINT[])) "
        "AS filed(program, serial_series, node, first, last) "
        "CROSS JOIN LATERAL (SELECT b.event_idx FROM event_blocks AS b "
        "WHERE b.program = filed.program AND b.serial_series = filed.serial_series "
        "AND b.serial_node = filed.node AND b.event_idx >= :start AND b.event_idx < :size "
        "AND b.serial_start <= filed.last AND b.serial_end >= filed.first "
        "GROUP BY b.event_idx ORDER BY b.event_idx LIMIT :count) AS found"
    )
    .columns(event_idx=sa.BigInteger)
    .subquery("node_reads")
)
"""PostgreSQL's reads by node: one limited index read per node, the nodes bound as
arrays.  A ``UNION ALL`` of as many reads costs PostgreSQL more to plan (about 2 ms for
20) than to run; this statement is planned as one nested loop whatever their number."""


@functools.lru_cache(maxsize=256)
def _reads_statement(by_node: tuple[bool, ...], postgres: bool) -> sa.CompoundSelect[Any]:
    """The reads, each by node or in log order as ``by_node`` says, side by side: each
    seeks ``start`` in its index and reads on in log order until ``count`` events, the
    ranges tested inside the index (no table read, no sort).  On ``postgres``, the reads
    by node are one member (:data:`_POSTGRES_NODE_READS`).

    Built once per shape, its values bound (see :func:`_read_parameters`): a page builds
    no statement, so none is left for the cycle collector either.
    """
    members = []
    if postgres and any(by_node):
        members.append(sa.select(_POSTGRES_NODE_READS.c.event_idx))
    for n, node in enumerate(by_node):
        if postgres and node:
            continue
        where = [
            EventBlock.program == sa.bindparam(f"program_{n}"),
            EventBlock.serial_series == sa.bindparam(f"series_{n}"),
            EventBlock.event_idx >= sa.bindparam("start"),
            EventBlock.event_idx < sa.bindparam("size"),
            EventBlock.serial_start <= sa.bindparam(f"last_{n}"),
            EventBlock.serial_end >= sa.bindparam(f"first_{n}"),
        ]
        if node:
            where.append(EventBlock.serial_node == sa.bindparam(f"node_{n}"))
        members.append(
            sa.select(
                sa.select(EventBlock.event_idx)
                .where(*where)
                # An event indexed under two ranges of the program counts once.
                .group_by(EventBlock.event_idx)
                .order_by(EventBlock.event_idx)
                .limit(sa.bindparam("count", type_=sa.Integer))
                .subquery()
                .c.event_idx
            )
        )
    return sa.union_all(*members)


def _read_parameters(
    reads: Sequence[_Read], start: int, size: int, count: int, postgres: bool
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"start": start, "size": size, "count": count}
    by_node: dict[str, list[Any]] = {
        key: [] for key in ("node_programs", "node_series", "nodes", "node_firsts", "node_lasts")
    }
    for n, read in enumerate(reads):
        block = read.block
        if postgres and read.node is not None:
            by_node["node_programs"].append(block.program.value)
            by_node["node_series"].append(block.serial_series)
            by_node["nodes"].append(read.node)
            by_node["node_firsts"].append(block.serial_start)
            by_node["node_lasts"].append(block.serial_end)
            continue
        parameters[f"program_{n}"] = block.program.value
        parameters[f"series_{n}"] = block.serial_series
        parameters[f"first_{n}"] = block.serial_start
        parameters[f"last_{n}"] = block.serial_end
        if read.node is not None:
            parameters[f"node_{n}"] = read.node
    if by_node["nodes"]:
        parameters.update(by_node)
    return parameters


def _run_reads(
    session: Session, reads: Sequence[_Read], start: int, size: int, count: int
) -> list[int]:
    """The indexes ``reads`` find (see :func:`_reads_statement`), in one statement."""
    postgres = session.get_bind().dialect.name == "postgresql"
    return list(
        session.execute(
            _reads_statement(tuple(r.node is not None for r in reads), postgres),
            _read_parameters(reads, start, size, count, postgres),
        ).scalars()
    )


@functools.lru_cache(maxsize=64)
def _events_statement(by_node: tuple[bool, ...], postgres: bool) -> sa.Select[Any]:
    """The first ``chunk`` events (index and payload) the reads of ``by_node`` find."""
    return (
        sa.select(LedgerEvent.idx, LedgerEvent.payload)
        .where(LedgerEvent.idx.in_(_reads_statement(by_node, postgres)))
        .order_by(LedgerEvent.idx)
        .limit(sa.bindparam("chunk", type_=sa.Integer))
    )


def _holds(ranges: Iterable[BlockId], query: BlockId) -> bool:
    """Whether one of ``ranges`` holds every serial of ``query`` (answering ranges are
    merged, so the query's own serials are inside one of them)."""
    return any(
        (r.program, r.serial_series) == (query.program, query.serial_series)
        and r.serial_start <= query.serial_start
        and query.serial_end <= r.serial_end
        for r in ranges
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


def _covered_spans(body: dict[str, Any], query: BlockId) -> list[tuple[int, int]]:
    """The serials of ``query`` an event's row concerns (its own range or, for a row that
    stands for other units, its origin range)."""
    spans: list[tuple[int, int]] = []
    for key in ("block", "origin"):
        if isinstance(body.get(key), dict):
            clipped = _clip(block_id_from_dict(body[key]), query)
            if clipped is not None:
                spans.append(clipped)
    return spans


def _check_covered(query: BlockId, spans: Iterable[tuple[int, int]]) -> None:
    """Every serial of ``query`` is in ``spans``, what the events of its units concern.

    Raises:
        NotFound: Naming the first serials of ``query`` no event concerns.
    """
    gaps = spans_missing(query.serial_start, query.serial_end, merge_spans(spans))
    if gaps:
        at, gap_end = gaps[0]
        gap = BlockId(query.program, query.serial_series, at, gap_end)
        # Rendered "... not found": never issued, or issued where the gateway has not
        # looked yet.
        raise NotFound(
            f"events of units {gap.label} (part of the queried "
            f"{query.serial_start}-{query.serial_end})"
        )


_CLAIMED = ("project_id", "country", "vintage_start", "vintage_end")
"""Attributes a registry's serial states about its units, checked against their issuance."""


def check_serial_claims(issuances: Iterable[bytes], serial: str, claimed: UnitBlock) -> None:
    """The units were issued as ``serial`` says: same project, country and vintage (and,
    for an origin serial, the same issuance), not merely the same serial numbers.

    Args:
        issuances: The leaf data of the issuance events of the serial's units.
        serial: The serial as the caller wrote it.
        claimed: What the serial says of its units.

    Raises:
        InvalidRequest: Naming each attribute the serial states otherwise than the
            issuance of its units.
    """
    own = claimed.id
    problems: list[str] = []
    for leaf_data in issuances:
        body = json.loads(leaf_data)
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


def _event_bytes(event: LedgerEvent, blocks: Sequence[BlockId], proof_hashes: int) -> int:
    """What one traced event adds to a reply, at most."""
    # A BlockId: its two strings, two varint serials of at most 10 bytes, tags, lengths.
    block_bytes = sum(len(b.program.value) + len(b.serial_series.encode()) + 30 for b in blocks)
    return (
        len(event.payload)
        + 34 * proof_hashes
        + len(event.transfer_id.encode())
        + block_bytes
        + _EVENT_OVERHEAD
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
        self.page_token_key = signer.derive_secret("trace page token")
        """Seals trace page tokens: the same at every gateway signing with this key."""

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

    def trace_page(
        self,
        query: BlockId,
        *,
        limit: int,
        pinned_size: int | None = None,
        start: int = 0,
        max_bytes: int = DEFAULT_PAGE_BYTES,
        claim: tuple[str, UnitBlock] | None = None,
        ranges: Sequence[BlockId] | None = None,
    ) -> TracePage:
        """A page of every event of every unit of ``query``, proven against one checkpoint.

        ``query`` may be an origin range or a mirror's local range: the units' origin
        serials are found first, then every event of any row standing for them (origin
        rows, their splits, their mirrors at any registry).  The events are read in index
        order from ``start``, at most ``limit`` of them and no more than fit ``max_bytes``
        of reply (at least one, though), never the whole history at once: a history of
        any length is traced in pages, each page's events proven against the checkpoint
        of ``pinned_size`` (the first page's, given back by the next), however the log
        has grown since.

        Args:
            query: The serial range traced.
            limit: Most events in the page.
            pinned_size: The tree size of the trace's first page; None for the first.
            start: The first index this page answers for (the previous page's end).
            max_bytes: The reply's budget (checkpoint, note and events).
            claim: The serial the caller gave, and what it says of its units: checked
                against their issuance (see :func:`check_serial_claims`).
            ranges: The first page's ``TracePage.ranges``, given back by a later page
                (with ``pinned_size``): the page then reads the log from ``start`` on
                only, where working them out reads every event of the units, and the
                claim, checked by the first page against the same checkpoint, is not
                checked again.  None works them out (and checks the claim).

        Raises:
            NotFound: No event concerns some of these serials: the answer would be the
                history of only part of what was asked, so there is none.
            InvalidRequest: ``pinned_size`` is beyond the log's size, or ``start`` not
                below it, or ``ranges`` do not hold ``query`` (``page_token``, where they
                come from), or the serial's claims are not those of its units' issuance.
        """
        if ranges is not None and (pinned_size is None or not _holds(ranges, query)):
            raise InvalidRequest.field(
                "page_token", "carries serial ranges that are not those of this query"
            )
        with self._covered() as (session, size):
            if pinned_size is not None:
                if pinned_size > size:
                    raise InvalidRequest.field(
                        "page_token",
                        f"is for the log at size {pinned_size}, but the log now has {size} "
                        "events: it lost events it had signed",
                    )
                size = pinned_size
            if pinned_size is not None and not 0 <= start < size:
                raise InvalidRequest.field(
                    "page_token", f"resumes at event {start}, outside the log of size {size}"
                )
            if ranges is None:
                ranges = self._answering_ranges(session, query, size)
                if claim is not None:
                    check_serial_claims(self._issuances(session, ranges, size), *claim)
            indexes = self._next_indexes(session, ranges, start, size, limit + 1)
            budget = max_bytes - _NOTE_BYTES - len(query.serial_series)
            ranges_of = self._ranges_of(session, indexes[:limit])
            taken: list[LedgerEvent] = []
            for event in session.execute(
                sa.select(LedgerEvent)
                .where(LedgerEvent.idx.in_(indexes[:limit]))
                .order_by(LedgerEvent.idx)
            ).scalars():
                cost = _event_bytes(
                    event,
                    ranges_of.get(event.idx, ()),
                    len(merkle.inclusion_plan(event.idx, size)),
                )
                if taken and cost > budget:
                    break
                budget -= cost
                taken.append(event)
            if not taken:
                # Only a log rewritten under a trace (its events gone) gets here: a
                # token is issued only where an event follows.
                raise InvalidRequest.field(
                    "page_token", f"resumes at event {start}, past the last of this trace"
                )
            last_page = len(taken) == len(indexes)
            window = (start, size if last_page else taken[-1].idx + 1)
            proofs = merkle_store.inclusion_proofs(session, [e.idx for e in taken], size)
            root = merkle_store.stored_root(session, size)
            # Built inside the snapshot: the read-only session rolls back on exit, which
            # expires the loaded rows.
            proven = tuple(
                ProvenEvent(
                    index=e.idx,
                    kind=e.kind,
                    at=e.created_at,
                    transfer_id=e.transfer_id,
                    blocks=tuple(ranges_of.get(e.idx, ())),
                    leaf_data=bytes(e.payload),
                    proof=proofs[e.idx].hashes,
                )
                for e in taken
            )
        statement = TraceStatement(
            self._signer.name, size, root, query, tuple(e.index for e in proven), window
        )
        return TracePage(
            query,
            self._sign(size, root),
            proven,
            self._signer.sign_body(statement.body()),
            window,
            tuple(ranges),
        )

    @staticmethod
    def _answering_ranges(session: Session, query: BlockId, size: int) -> list[BlockId]:
        """The serial ranges whose events (below ``size``) answer ``query``: ``query``
        itself and the origin serials its units stand for, per the rows of the events
        that concern it, which are read a chunk at a time.

        Raises:
            NotFound: No event concerns some of these serials.
        """
        spans: list[tuple[int, int]] = []
        origins: list[BlockId] = []
        after, direct = -1, 0
        reads = _plan_reads(session, [query])
        shape = tuple(r.node is not None for r in reads)
        postgres = session.get_bind().dialect.name == "postgresql"
        while reads:
            chunk = session.execute(
                _events_statement(shape, postgres),
                {**_read_parameters(reads, after + 1, size, _CHUNK, postgres), "chunk": _CHUNK},
            ).all()
            for idx, payload in chunk:
                after, direct = int(idx), direct + 1
                try:
                    body = json.loads(bytes(payload))
                except ValueError:
                    continue
                if isinstance(body, dict):
                    spans.extend(_covered_spans(body, query))
                    origins.extend(origin_ranges([body], query))
            # Kept merged as they come: a run of lots leaves one range, not one per lot.
            spans = merge_spans(spans)
            origins = merge_blocks(origins)
            if len(chunk) < _CHUNK:
                break
        if not direct:
            raise NotFound(f"units {query.label}")
        _check_covered(query, spans)
        return merge_blocks([query, *origins])

    @staticmethod
    def _next_indexes(
        session: Session, ranges: Sequence[BlockId], start: int, size: int, count: int
    ) -> list[int]:
        """The first ``count`` indexes from ``start`` (below ``size``) of events that
        concern one of ``ranges``, in rising order.

        Each read (see :func:`_plan_reads`) seeks ``start`` and reads on until ``count``
        of its events are found: a page reads nothing of the log before where the page
        before it ended, however far into the trace it is, nor other programs' events,
        nor (but past ``serial_nodes.INNER_NODES``) the program's other units'.
        """
        found: set[int] = set()
        reads = _plan_reads(session, ranges)
        for at in range(0, len(reads), _STATEMENT_READS):
            found.update(_run_reads(session, reads[at : at + _STATEMENT_READS], start, size, count))
            # Only the first ``count`` overall can be on this page.
            found = set(sorted(found)[:count])
        return sorted(found)

    @staticmethod
    def _ranges_of(session: Session, indexes: Sequence[int]) -> dict[int, list[BlockId]]:
        """The serial ranges each of ``indexes`` is indexed under, in their order."""
        ranges: dict[int, list[BlockId]] = {}
        for row in session.execute(
            sa.select(EventBlock)
            .where(EventBlock.event_idx.in_(indexes))
            .order_by(EventBlock.event_idx, EventBlock.seq)
        ).scalars():
            ranges.setdefault(row.event_idx, []).append(
                BlockId(Program(row.program), row.serial_series, row.serial_start, row.serial_end)
            )
        return ranges

    @staticmethod
    def _issuances(session: Session, ranges: Sequence[BlockId], size: int) -> Iterator[bytes]:
        """The leaf data of the issuance events (below ``size``) of ``ranges``' units."""
        seen: set[int] = set()
        for at in range(0, len(ranges), _STATEMENT_RANGES):
            for idx, payload in session.execute(
                sa.select(LedgerEvent.idx, LedgerEvent.payload).where(
                    LedgerEvent.kind == "issuance",
                    LedgerEvent.idx.in_(
                        sa.select(EventBlock.event_idx).where(
                            _overlaps_any(ranges[at : at + _STATEMENT_RANGES]),
                            EventBlock.event_idx < size,
                        )
                    ),
                )
            ).tuples():
                if idx not in seen:
                    seen.add(idx)
                    yield bytes(payload)
