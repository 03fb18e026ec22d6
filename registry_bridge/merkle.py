"""RFC 9162 Merkle tree over the provenance log: tree hashes, proofs and their verifiers.

The pure half (:func:`verify_inclusion`, :func:`verify_consistency`,
:func:`root_from_leaves` and the proof *plans*) needs no database: an auditor runs it
offline.  The stored half keeps a cache of complete-subtree hashes in ``merkle_nodes``
so that a root, an inclusion proof or a consistency proof at any size costs O(log n)
node reads: a complete subtree of an append-only log never changes, so its hash is
computed once (O(n) over the log's life, in SQL pages) and read forever after.

Nodes are named ``(level, index)``: the hash of the complete subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``.  Level 0 is the leaf hash stored with
each event; levels above are cached.  Every range the RFC's recursions (``MTH``,
``PATH``, ``SUBPROOF``) ask for starts at a multiple of a power of two at least its
length, so its hash is the right fold of the complete subtrees of its binary
decomposition: at most log2(n) nodes.

A proof reads all its nodes in one statement (~24 primary-key probes at 10^6 leaves).
There is deliberately no in-process cache of nodes in front of the database: the
round trip is needed anyway (the leaf-side nodes differ per proof), so it would save
little, and the stored nodes must stay the only truth -- every gateway answers from the
same rows, and a node cache rebuilt in the database (after a restore, or by a forger,
whom the consistency proofs then expose) is what every gateway proves from at once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge.db import driver_cursor, insert_rows, run_plain
from registry_bridge.errors import CarbonlinkError, InvalidRequest
from registry_bridge.schema import LedgerEvent, MerkleHead, MerkleNode

NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string."""

_PAGE = 8192
"""Leaves read per SQL page while extending the node cache (bounds memory at any size)."""

Node = tuple[int, int]
"""(level, index) of a complete subtree."""


class ProofError(CarbonlinkError):
    """A Merkle proof does not verify; the message says which check failed."""


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_below(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------- pure tree


def root_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, straight from the RFC's definition (for tests and audits).

    Args:
        leaves: Leaf hashes, in log order.

    Returns:
        The root hash (:data:`EMPTY_ROOT` for no leaves).
    """
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _largest_power_below(len(leaves))
    return hash_children(root_from_leaves(leaves[:k]), root_from_leaves(leaves[k:]))


def range_nodes(start: int, end: int) -> list[Node]:
    """The complete subtrees whose right fold is MTH(D[start:end]), largest first.

    ``start`` must be a multiple of the smallest power of two >= ``end - start`` (true of
    every range the RFC's recursions visit, and of ``[0, n)``).
    """
    nodes: list[Node] = []
    at = start
    remaining = end - start
    while remaining:
        level = remaining.bit_length() - 1
        nodes.append((level, at >> level))
        at += 1 << level
        remaining -= 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold of complete-subtree hashes into the hash of their union."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = hash_children(left, acc)
    return acc


def inclusion_plan(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose MTH form PATH(index, D[0:size]), leaf side first (RFC 9162 2.1.3.1).

    Raises:
        InvalidRequest: ``index`` is not below ``size``.
    """
    if not 0 <= index < size:
        raise InvalidRequest.field("leaf_index", f"{index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_below(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_plan(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose MTH form PROOF(first, D[0:second]) (RFC 9162 2.1.4.1).

    Raises:
        InvalidRequest: Unless ``0 < first <= second``.
    """
    if first <= 0:
        raise InvalidRequest.field("first_size", f"must be at least 1, got {first}")
    if second < first:
        raise InvalidRequest.field(
            "second_size", f"{second} is below first_size {first}: a log never shrinks"
        )
    ranges: list[tuple[int, int]] = []
    start, end, m, complete = 0, second, first, True
    while True:
        if m == end - start:
            if not complete:
                ranges.append((start, end))
            break
        k = _largest_power_below(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            complete = False
    ranges.reverse()
    return ranges


# --------------------------------------------------------------------------- verifiers


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != 32:
        raise ProofError(f"{name} is {len(value)} bytes, not a SHA-256 hash")


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2).

    Raises:
        ProofError: The index or proof length does not fit the tree size.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash("leaf hash", leaf_hash)
    fn, sn = index, size - 1
    acc = leaf_hash
    for step, node in enumerate(proof):
        _check_hash(f"proof hash {step}", node)
        if sn == 0:
            raise ProofError(f"the proof has {len(proof)} hashes, more than size {size} needs")
        if fn & 1 or fn == sn:
            acc = hash_children(node, acc)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            acc = hash_children(acc, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the proof has {len(proof)} hashes, fewer than size {size} needs")
    return acc


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Args:
        index: The leaf's position, from 0.
        size: The tree size the root is for.
        leaf_hash: SHA-256(0x00 || entry).
        proof: The audit path, leaf side first.
        root: The tree's root hash (e.g. from a signed checkpoint).

    Raises:
        ProofError: The proof does not lead from the leaf to the root.
    """
    _check_hash("root", root)
    if root_from_inclusion_proof(index, size, leaf_hash, proof) != root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root of {size}")


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> None:
    """Check that the tree of ``second`` leaves extends the tree of ``first`` leaves.

    A proof from the empty tree is refused: it would prove nothing.

    Args:
        first: The earlier tree size (at least 1).
        second: The later tree size.
        proof: The consistency proof (RFC 9162 2.1.4).
        first_root: The earlier root hash.
        second_root: The later root hash.

    Raises:
        ProofError: The sizes are impossible or the proof does not verify.
    """
    if first <= 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if second < first:
        raise ProofError(f"size {second} is below {first}: a log never shrinks")
    if first == second:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if first_root != second_root:
            raise ProofError(f"two different roots for the same size {first}")
        return
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    if not proof:
        raise ProofError("an empty proof cannot extend a tree")
    for step, node in enumerate(proof):
        _check_hash(f"proof hash {step}", node)
    hashes = list(proof)
    # RFC 9162 2.1.4.2: if first is a power of two, the first root itself starts the walk.
    if first & (first - 1) == 0:
        hashes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]
    for node in hashes[1:]:
        if sn == 0:
            raise ProofError(f"the proof has {len(proof)} hashes, more than needed")
        if fn & 1 or fn == sn:
            fr = hash_children(node, fr)
            sr = hash_children(node, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the proof has {len(proof)} hashes, fewer than needed")
    if fr != first_root:
        raise ProofError(f"the proof does not lead to the root of size {first}")
    if sr != second_root:
        raise ProofError(f"the proof does not lead to the root of size {second}")


# --------------------------------------------------------------------------- stored tree


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
