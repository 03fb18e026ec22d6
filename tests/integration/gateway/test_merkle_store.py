"""The stored Merkle tree: incremental node cache, roots and proofs at any size, few reads."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import db, merkle, merkle_store
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


@contextmanager
def _driver_statements(session: Session) -> Iterator[list[str]]:
    """Every statement the session's driver connection sends while the block runs.

    At the driver, not SQLAlchemy's ``before_cursor_execute``: proofs run their fixed
    text on the driver's own cursor, which SQLAlchemy's events never see.
    """
    seen: list[str] = []
    driver = session.connection().connection.driver_connection
    if isinstance(driver, sqlite3.Connection):
        driver.set_trace_callback(seen.append)  # the text with its values bound
        try:
            yield seen
        finally:
            driver.set_trace_callback(None)
        return
    original = psycopg.Cursor.execute

    def record(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if cursor.connection is driver:
            seen.append(str(query))
        return original(cursor, query, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", record)
        yield seen


def test_cache_grows_incrementally_and_answers_any_size(
    stored: tuple[sa.Engine, list[bytes]],
) -> None:
    engine, leaves = stored
    with Session(engine) as session, session.begin():
        assert merkle_store.extend_cache(session, 3_001) == 3_001
    with Session(engine) as session, session.begin():
        assert merkle_store.cached_size(session) == 3_001
        assert merkle_store.extend_cache(session, SIZE) == SIZE
    with Session(engine) as session:
        for size in (1, 2, 3, 1_024, 3_001, 4_097, SIZE):
            root = merkle_store.stored_root(session, size)
            assert root == merkle.root_from_leaves(leaves[:size])
            for index in {0, size // 3, size - 1}:
                proof = merkle_store.inclusion_proof(session, index, size)
                merkle.verify_inclusion(index, size, leaves[index], proof.hashes, root)
        full = merkle_store.stored_root(session, SIZE)
        for first in (1, 7, 1_000, 4_096, SIZE):
            proof = merkle_store.consistency_proof(session, first, SIZE)
            merkle.verify_consistency(
                first, SIZE, proof.hashes, merkle_store.stored_root(session, first), full
            )


def test_a_proof_is_one_statement_that_never_reads_the_log(
    stored: tuple[sa.Engine, list[bytes]],
) -> None:
    engine, _ = stored
    with Session(engine) as session, session.begin():
        merkle_store.extend_cache(session, SIZE)
    with Session(engine) as session:
        session.connection()  # the transaction's BEGIN is not the proofs' business
        with _driver_statements(session) as statements:
            merkle_store.inclusion_proof(session, 2_345, SIZE)
            merkle_store.consistency_proof(session, 1_234, SIZE)
    # Every node of a proof (leaf siblings and cached subtrees) in one round trip.
    assert len(statements) == 2
    assert not any("ledger_events.idx >=" in s for s in statements)


def test_sqlite_probes_the_primary_keys_instead_of_scanning(
    stored: tuple[sa.Engine, list[bytes]],
) -> None:
    engine, _ = stored
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner only: it scanned merkle_nodes for a row-value IN")
    with Session(engine) as session, session.begin():
        merkle_store.extend_cache(session, SIZE)
    with Session(engine) as session:
        session.connection()
        with _driver_statements(session) as executed:
            merkle_store.inclusion_proof(session, 2_345, SIZE)
        [statement] = executed
        plan = session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + statement).all()
    details = [str(row[-1]) for row in plan]
    assert not any(d.startswith("SCAN") for d in details), details
    assert any("merkle_nodes USING" in d for d in details), details


def test_many_proofs_at_once_span_several_statements(
    stored: tuple[sa.Engine, list[bytes]],
) -> None:
    engine, leaves = stored
    with Session(engine) as session, session.begin():
        merkle_store.extend_cache(session, SIZE)
    indexes = list(range(0, SIZE, 7))  # ~700 leaves, more nodes than one SQLite statement
    with Session(engine) as session:
        root = merkle_store.stored_root(session, SIZE)
        proofs = merkle_store.inclusion_proofs(session, indexes, SIZE)
    assert sorted(proofs) == indexes
    for index, proof in proofs.items():
        merkle.verify_inclusion(index, SIZE, leaves[index], proof.hashes, root)
