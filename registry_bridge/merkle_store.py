"""The provenance log's Merkle tree as stored: a node cache, and roots and proofs read from it.

A cache of complete-subtree hashes in ``merkle_nodes`` makes a root, an inclusion proof
or a consistency proof at any size cost O(log n) node reads: a complete subtree of an
append-only log never changes, so its hash is computed once (O(n) over the log's life,
in SQL pages) and read forever after.  Level 0 of the tree (:mod:`registry_bridge.merkle`
names the nodes) is the leaf hash stored with each event; levels above are cached.

A proof reads all its nodes in one statement (~24 primary-key probes at 10^6 leaves).
There is deliberately no in-process cache of nodes in front of the database: the
round trip is needed anyway (the leaf-side nodes differ per proof), so it would save
little, and the stored nodes must stay the only truth -- every gateway answers from the
same rows, and a node cache rebuilt in the database (after a restore, or by a forger,
whom the consistency proofs then expose) is what every gateway proves from at once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge.db import driver_cursor, insert_rows, run_plain
from registry_bridge.errors import CarbonlinkError
from registry_bridge.merkle import (
    EMPTY_ROOT,
    Node,
    consistency_plan,
    fold,
    hash_children,
    inclusion_plan,
    range_nodes,
)
from registry_bridge.schema import LedgerEvent, MerkleHead, MerkleNode

_PAGE = 8192
"""Leaves read per SQL page while extending the node cache (bounds memory at any size)."""


@dataclass(frozen=True)
class StoredProof:
    """A proof computed from the log, with the tree size it is for."""

    size: int
    hashes: tuple[bytes, ...]


def _fetch(session: Session, wanted: set[Node]) -> dict[Node, bytes]:
    """Read the hashes of ``wanted`` nodes: leaves from the log, the rest from the cache.

    One statement per proof (per :data:`_STATEMENT_NODES` nodes): a proof at 10^6 leaves
    needs ~24 nodes, and the round trips and SQLAlchemy's per-statement work, not the
    index reads, were its cost (building and compiling a 24-term Core query took ~1.2 ms,
    the same text through the driver ~0.07 ms on SQLite).  So the fixed text goes straight
    to the driver's cursor on the session's own connection: same transaction, same
    snapshot, and none of SQLAlchemy's per-execution work.

    Only flushed or committed rows are read: pending ORM objects of ``session`` are not
    flushed first (:func:`extend_cache` inserts its nodes with plain statements).

    Raises:
        CarbonlinkError: A node is not stored (the cache does not cover it yet).
    """
    leaves = sorted(index for level, index in wanted if level == 0)
    inner = sorted(node for node in wanted if node[0])
    found: dict[Node, bytes] = {}
    if session.connection().dialect.name == "postgresql":
        with driver_cursor(session) as cursor:
            cursor.execute(
                _POSTGRESQL_FETCH,
                {
                    "leaves": _array_literal(leaves),
                    "levels": _array_literal([level for level, _ in inner]),
                    "idxs": _array_literal([idx for _, idx in inner]),
                },
            )
            rows = cursor.fetchall()
        found.update(((int(level), int(idx)), bytes(digest)) for level, idx, digest in rows)
    else:
        # SQLite has no arrays: the keys are bound one by one, in chunks that stay under
        # its host-parameter and expression-depth limits.
        for at in range(0, max(len(leaves), len(inner)), _STATEMENT_NODES):
            some_leaves = leaves[at : at + _STATEMENT_NODES]
            some_inner = inner[at : at + _STATEMENT_NODES]
            params = [*some_leaves, *(key for node in some_inner for key in node)]
            with driver_cursor(session) as cursor:
                cursor.execute(_portable_fetch(len(some_leaves), len(some_inner)), params)
                rows = cursor.fetchall()
            found.update(((int(level), int(idx)), bytes(digest)) for level, idx, digest in rows)
    missing = wanted - set(found)
    if missing:
        raise CarbonlinkError(
            f"the Merkle node cache lacks {len(missing)} nodes (e.g. {min(missing)}): "
            "extend it to the tree size first"
        )
    return found


_LEAVES = LedgerEvent.__tablename__
_NODES = MerkleNode.__tablename__

_POSTGRESQL_FETCH = (
    f"SELECT 0, idx, leaf_hash FROM {_LEAVES} WHERE idx = ANY(CAST(%(leaves)s AS bigint[]))"
    " UNION ALL"
    f" SELECT n.level, n.idx, n.hash FROM {_NODES} AS n"
    " JOIN unnest(CAST(%(levels)s AS integer[]), CAST(%(idxs)s AS bigint[])) AS w(level, idx)"
    " ON n.level = w.level AND n.idx = w.idx"
)
"""Every node of a proof in one statement whose text never changes: psycopg prepares it
once per connection, and each key is a primary-key probe (``(level, idx)`` of
``merkle_nodes``, ``idx`` of ``ledger_events``)."""


def _array_literal(values: Sequence[int]) -> str:
    """``values`` as PostgreSQL's text form of an integer array (``{1,2,3}``).

    The proof's keys are bound as text and cast in the statement: psycopg's adaptation
    of a Python list inspects every element to choose the array's type, and that was
    about half of a proof's CPU on the calling side (with SQLAlchemy's execution
    wrapper, which the driver's own cursor skips).  Integers only, so the text is safe.
    """
    return "{" + ",".join(str(int(value)) for value in values) + "}"


_STATEMENT_NODES = 200
"""Keys of each kind per SQLite statement: ``2 * 200 + 200`` parameters stay below the
999 of old SQLite builds, and 200 ORed terms below its expression depth of 1000."""


@functools.lru_cache(maxsize=256)
def _portable_fetch(leaves: int, inner: int) -> str:
    """The SQLite statement for ``leaves`` leaf keys and ``inner`` node keys.

    ``(level, idx) = (?, ?) OR ...``, not a row-value ``IN (VALUES ...)``: SQLite plans
    the latter as a scan of ``merkle_nodes`` (~100 ms at 10^6 leaves) and the former as
    one primary-key probe per term.
    """
    parts = []
    if leaves:
        marks = ", ".join("?" * leaves)
        parts.append(f"SELECT 0, idx, leaf_hash FROM {_LEAVES} WHERE idx IN ({marks})")
    if inner:
        terms = " OR ".join(["(level = ? AND idx = ?)"] * inner)
        parts.append(f"SELECT level, idx, hash FROM {_NODES} WHERE {terms}")
    return " UNION ALL ".join(parts)  # the caller asks for at least one key


def _range_hashes(session: Session, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    plans = [range_nodes(start, end) for start, end in ranges]
    nodes = _fetch(session, {node for plan in plans for node in plan})
    return [fold([nodes[node] for node in plan]) for plan in plans]


def cached_size(session: Session) -> int:
    """How many leaves the node cache covers (every complete subtree inside them is stored)."""
    size = session.execute(sa.select(MerkleHead.size).where(MerkleHead.id == 1)).scalar()
    return int(size or 0)


_NODE_TABLE = MerkleNode.__table__
_LEAF_PAGE = (
    sa.select(LedgerEvent.idx, LedgerEvent.leaf_hash)
    .where(LedgerEvent.idx >= sa.bindparam("at"), LedgerEvent.idx < sa.bindparam("upto"))
    .order_by(LedgerEvent.idx)
)


def extend_cache(session: Session, size: int) -> int:
    """Store every complete subtree of the first ``size`` leaves not stored yet.

    Runs in the caller's transaction.  The ``merkle_head`` row is taken for update, so two
    gateways never build the same nodes at once; leaves are read in pages, so the work is
    O(new leaves) in time and O(page + log n) in memory.  The pages are read and the nodes
    written as plain statements on the driver (a COPY on PostgreSQL): through the ORM's
    bulk insert, SQLAlchemy's per-row work was four fifths of the build (6.5 s for 10^5
    leaves on SQLite).

    Args:
        session: A session in a write transaction.
        size: The tree size to cover (at most the log's size).

    Returns:
        The number of leaves the cache covers afterwards.
    """
    head = session.execute(
        sa.select(MerkleHead).where(MerkleHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = MerkleHead(id=1, size=0)
        session.add(head)
        session.flush()
    done = int(head.size)
    if done >= size:
        return done
    # The frontier: the complete subtrees of the first `done` leaves, largest first. New
    # leaves merge into it like carries in a binary counter.
    frontier_nodes = range_nodes(0, done)
    known = _fetch(session, set(frontier_nodes))
    stack: list[tuple[int, int, bytes]] = [(lv, ix, known[(lv, ix)]) for lv, ix in frontier_nodes]
    at = done
    while at < size:
        upto = min(size, at + _PAGE)
        rows = run_plain(session, _LEAF_PAGE, {"at": at, "upto": upto})
        new: list[dict[str, object]] = []
        expected = at
        for idx, digest in rows:
            if int(idx) != expected:
                raise CarbonlinkError(f"the log has no event {expected}: indexes must be dense")
            expected += 1
            stack.append((0, int(idx), bytes(digest)))
            while len(stack) >= 2 and stack[-1][0] == stack[-2][0]:
                level, _, right = stack.pop()
                _, left_index, left = stack.pop()
                parent = (level + 1, left_index >> 1, hash_children(left, right))
                new.append({"level": parent[0], "idx": parent[1], "hash": parent[2]})
                stack.append(parent)
        if expected != upto:
            raise CarbonlinkError(f"the log has no event {expected}: indexes must be dense")
        insert_rows(session, _NODE_TABLE, new)
        at = upto
    head.size = size
    session.flush()
    return size


def stored_root(session: Session, size: int) -> bytes:
    """MTH of the first ``size`` leaves, from the cache (which must cover ``size``)."""
    if size == 0:
        return EMPTY_ROOT
    return _range_hashes(session, [(0, size)])[0]


def inclusion_proof(session: Session, index: int, size: int) -> StoredProof:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` (cache must cover it).

    Raises:
        InvalidRequest: ``index`` is not below ``size``.
    """
    return StoredProof(size, tuple(_range_hashes(session, inclusion_plan(index, size))))


def inclusion_proofs(
    session: Session, indexes: Sequence[int], size: int
) -> Mapping[int, StoredProof]:
    """Inclusion proofs of several leaves, reading every needed node in one batch."""
    plans = {i: inclusion_plan(i, size) for i in indexes}
    flat = [r for plan in plans.values() for r in plan]
    hashes = iter(_range_hashes(session, flat))
    return {i: StoredProof(size, tuple(next(hashes) for _ in plan)) for i, plan in plans.items()}


def consistency_proof(session: Session, first: int, second: int) -> StoredProof:
    """The consistency proof from ``first`` to ``second`` leaves (cache must cover second).

    Raises:
        InvalidRequest: Unless ``0 < first <= second``.
    """
    return StoredProof(second, tuple(_range_hashes(session, consistency_plan(first, second))))
