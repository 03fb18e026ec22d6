"""RFC 9162 Merkle proofs: the transparency-dev conformance vectors, and our own proofs."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from registry_bridge import merkle
from registry_bridge.errors import InvalidRequest

VECTORS = Path(__file__).resolve().parents[2] / "assets" / "conformance" / "rfc9162-merkle"


def _cases(folder: str) -> list[Any]:
    files = sorted((VECTORS / folder).rglob("*.json"))
    assert files, f"no conformance vectors under {VECTORS / folder}"
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS))) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


@pytest.mark.parametrize("case", _cases("inclusion"))
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    def verify() -> None:
        merkle.verify_inclusion(
            case["leafIdx"],
            case["treeSize"],
            _b64(case["leafHash"]),
            [_b64(p) for p in case["proof"] or []],
            _b64(case["root"]),
        )

    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            verify()
    else:
        verify()


@pytest.mark.parametrize("case", _cases("consistency"))
def test_consistency_vectors(case: dict[str, Any]) -> None:
    def verify() -> None:
        merkle.verify_consistency(
            case["size1"],
            case["size2"],
            [_b64(p) for p in case["proof"] or []],
            _b64(case["root1"]),
            _b64(case["root2"]),
        )

    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            verify()
    else:
        verify()


def test_the_vectors_include_both_verdicts() -> None:
    verdicts = {json.loads(f.read_text())["wantErr"] for f in VECTORS.rglob("*.json")}
    assert verdicts == {True, False}


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + str(i).encode()).digest() for i in range(n)]


class _Memory:
    """Proof plans resolved straight from a list of leaves (no cache)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves

    def mth(self, start: int, end: int) -> bytes:
        return merkle.root_from_leaves(self.leaves[start:end])

    def nodes(self, start: int, end: int) -> bytes:
        return merkle.fold(
            [
                merkle.root_from_leaves(self.leaves[ix << lv : (ix + 1) << lv])
                for lv, ix in merkle.range_nodes(start, end)
            ]
        )


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 16, 17, 31])
def test_generated_proofs_verify_and_folds_match_the_definition(size: int) -> None:
    tree = _Memory(_leaves(size))
    root = merkle.root_from_leaves(tree.leaves)
    assert tree.nodes(0, size) == root
    for index in range(size):
        proof = [tree.nodes(a, b) for a, b in merkle.inclusion_plan(index, size)]
        assert [tree.mth(a, b) for a, b in merkle.inclusion_plan(index, size)] == proof
        merkle.verify_inclusion(index, size, tree.leaves[index], proof, root)
        forged = hashlib.sha256(b"\x00forged").digest()
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(index, size, forged, proof, root)
    for first in range(1, size + 1):
        first_root = merkle.root_from_leaves(tree.leaves[:first])
        proof = [tree.nodes(a, b) for a, b in merkle.consistency_plan(first, size)]
        merkle.verify_consistency(first, size, proof, first_root, root)
        if first < size:
            with pytest.raises(merkle.ProofError):
                merkle.verify_consistency(first, size, proof, b"\x07" * 32, root)


def test_bad_sizes_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest):
        merkle.consistency_plan(0, 3)
    with pytest.raises(InvalidRequest):
        merkle.consistency_plan(4, 3)
    with pytest.raises(InvalidRequest):
        merkle.inclusion_plan(3, 3)
