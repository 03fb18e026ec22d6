"""RFC 9162 Merkle tree over the provenance log: tree hashes, proof plans and verifiers.

Pure and database-free (:func:`verify_inclusion`, :func:`verify_consistency`,
:func:`root_from_leaves`, the proof *plans*): an auditor runs it offline, and its
imports are the auditor's start-up cost, so the gateway's stored node cache lives apart,
in :mod:`registry_bridge.merkle_store`.

Nodes are named ``(level, index)``: the hash of the complete subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``.  Every range the RFC's recursions
(``MTH``, ``PATH``, ``SUBPROOF``) ask for starts at a multiple of a power of two at least
its length, so its hash is the right fold of the complete subtrees of its binary
decomposition (:func:`range_nodes`): at most log2(n) nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from registry_bridge.errors import CarbonlinkError, InvalidRequest

NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string."""

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
