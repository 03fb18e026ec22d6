"""The stored Merkle tree: incremental node cache, roots and proofs at any size, few reads."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import db, merkle
from registry_bridge.schema import LedgerEvent, LogHead

SIZE = 5_000


@pytest.fixture
def stored(database_url: str) -> Iterator[tuple[sa.Engine, list[bytes]]]:
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    payloads = [f'{{"index":{i}}}'.encode() for i in range(SIZE)]
    leaves = [hashlib.sha256(b"\x00" + p).digest() for p in payloads]
    with engine.begin() as connection:
        connection.execute(
            sa.insert(LedgerEvent),
            [
                {
                    "idx": i,
                    "kind": "test",
                    "payload": p,
                    "leaf_hash": h,
                    "transfer_id": "",
                    "created_at": at,
                }
                for i, (p, h) in enumerate(zip(payloads, leaves, strict=True))
            ],
        )
        connection.execute(sa.update(LogHead).values(size=SIZE))
    try:
        yield engine, leaves
    finally:
        engine.dispose()


def _count_statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen


def test_cache_grows_incrementally_and_answers_any_size(
    stored: tuple[sa.Engine, list[bytes]],
) -> None:
    engine, leaves = stored
    with Session(engine) as session, session.begin():
        assert merkle.extend_cache(session, 3_001) == 3_001
    with Session(engine) as session, session.begin():
        assert merkle.cached_size(session) == 3_001
        assert merkle.extend_cache(session, SIZE) == SIZE
    with Session(engine) as session:
        for size in (1, 2, 3, 1_024, 3_001, 4_097, SIZE):
            root = merkle.stored_root(session, size)
            assert root == merkle.root_from_leaves(leaves[:size])
            for index in {0, size // 3, size - 1}:
                proof = merkle.inclusion_proof(session, index, size)
                merkle.verify_inclusion(index, size, leaves[index], proof.hashes, root)
        full = merkle.stored_root(session, SIZE)
        for first in (1, 7, 1_000, 4_096, SIZE):
            proof = merkle.consistency_proof(session, first, SIZE)
            merkle.verify_consistency(
                first, SIZE, proof.hashes, merkle.stored_root(session, first), full
            )


def test_a_proof_reads_a_few_nodes_not_the_log(stored: tuple[sa.Engine, list[bytes]]) -> None:
    engine, _ = stored
    with Session(engine) as session, session.begin():
        merkle.extend_cache(session, SIZE)
    statements = _count_statements(engine)
    with Session(engine) as session:
        merkle.inclusion_proof(session, 2_345, SIZE)
        merkle.consistency_proof(session, 1_234, SIZE)
    # One query per tree level at most (leaves + cached levels), never a scan of the log.
    assert 0 < len(statements) <= 2 * (SIZE.bit_length() + 1)
    assert not any("ledger_events.idx >=" in s for s in statements)
