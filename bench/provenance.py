"""Provenance: appends per second, and proofs at 10^6 leaves, against pymerkle.

carbonlink's log keeps its leaves in ``ledger_events`` and caches every complete subtree
in ``merkle_nodes``; a proof reads O(log n) stored nodes.  The set-up writes the leaves
straight into ``ledger_events`` (``executemany`` on SQLite, ``COPY`` on PostgreSQL), then
``merkle_store.extend_cache`` builds the node cache, as the gateway does.  pymerkle's in-memory
tree does the same work on the same machine: append the same entries, prove and verify
the same leaves and sizes.
"""

from __future__ import annotations

import random
import sqlite3
import time
from datetime import UTC, datetime

import psycopg
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import stack
from bench.common import Result, Sizes, per_second, percentile, result
from registry_bridge import db, merkle, merkle_store
from registry_bridge.db import unit_of_work
from registry_bridge.event_log import append_event, canonical_json, leaf_hash
from registry_bridge.model import BlockId, Program
from registry_bridge.provenance import ProvenanceLog
from registry_bridge.schema import LedgerEvent
from registry_bridge.signed_note import NoteSigner

_CHUNK = 50_000


def _entry(index: int) -> bytes:
    return canonical_json(
        {
            "index": index,
            "kind": "lock",
            "at": "2026-01-01T00:00:00+00:00",
            "block": {"program": "VCS", "serial_series": "", "start": index, "end": index},
            "registry": "hkmo",
            "account": "hk-seller",
            "status": "locked",
        }
    )


def _appends(
    sizes: Sizes, sessions: sa.orm.sessionmaker[sa.orm.Session]
) -> list[tuple[str, list[float]]]:
    """Events appended per second: many per transaction, and one per transaction."""
    block = BlockId(Program.VCS, "", 1, 1)
    payload = {"block": {"program": "VCS", "start": 1, "end": 1}, "registry": "hkmo"}
    now = datetime.now(UTC)

    def batched() -> float:
        began = time.perf_counter()
        with unit_of_work(sessions) as session:
            for _ in range(sizes.appends):
                append_event(session, "bench", payload, now, blocks=(block,))
        return per_second(sizes.appends, time.perf_counter() - began)

    def single() -> float:
        count = max(1, sizes.appends // 10)
        began = time.perf_counter()
        for _ in range(count):
            with unit_of_work(sessions) as session:
                append_event(session, "bench", payload, now, blocks=(block,))
        return per_second(count, time.perf_counter() - began)

    batched()
    single()
    return [
        ("append.batched", [batched() for _ in range(sizes.runs)]),
        ("append.one_per_transaction", [single() for _ in range(sizes.runs)]),
    ]


def _bulk_leaves(url: str, first: int, count: int) -> None:
    """Write events ``first .. first + count - 1`` straight into ``ledger_events``."""
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    if db.is_sqlite(url):
        connection = sqlite3.connect(sa.make_url(url).database or "", isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("BEGIN IMMEDIATE")
        for start in range(first, first + count, _CHUNK):
            rows = []
            for i in range(start, min(first + count, start + _CHUNK)):
                entry = _entry(i)
                rows.append((i, "lock", entry, leaf_hash(entry), "", stamp.isoformat(" ")))
            connection.executemany(
                "INSERT INTO ledger_events (idx, kind, payload, leaf_hash, transfer_id,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        connection.execute("UPDATE log_head SET size = ? WHERE id = 1", (first + count,))
        connection.execute("COMMIT")
        connection.close()
        return
    parsed = sa.make_url(url)
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
    ) as pg:
        with (
            pg.cursor() as cursor,
            cursor.copy(
                "COPY ledger_events (idx, kind, payload, leaf_hash, transfer_id, created_at)"
                " FROM STDIN"
            ) as copy,
        ):
            for i in range(first, first + count):
                entry = _entry(i)
                copy.write_row((i, "lock", entry, leaf_hash(entry), "", stamp))
        pg.execute("UPDATE log_head SET size = %s WHERE id = 1", (first + count,))
        pg.execute("ANALYZE ledger_events")


def run(sizes: Sizes, database: str) -> list[Result]:
    """Appends, node-cache build, proofs and verification; then pymerkle on the same work."""
    out: list[Result] = []
    n = sizes.proof_leaves
    rng = random.Random(5)
    leaves = [rng.randrange(n) for _ in range(sizes.proof_samples)]
    firsts = [rng.randrange(1, n) for _ in range(sizes.proof_samples)]
    with stack.scratch_database(database) as url:
        engine = db.create_engine(url)
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        for name, rates in _appends(sizes, sessions):
            out.append(result("provenance", name, database, "ops/s", rates))
        with unit_of_work(sessions) as session:
            have = int(session.execute(sa.text("SELECT size FROM log_head")).scalar_one())
        began = time.perf_counter()
        _bulk_leaves(url, have, n - have)
        load_s = time.perf_counter() - began
        began = time.perf_counter()
        with unit_of_work(sessions) as session:
            merkle_store.extend_cache(session, n)
        cache_s = time.perf_counter() - began
        out.append(
            result(
                "provenance",
                f"node_cache_build.leaves_{n}",
                database,
                "s",
                [cache_s],
                leaves=n,
                leaf_load_s=load_s,
            )
        )
        # Read-only, as the gateway's provenance reads are (no write lock on SQLite).
        with db.read_only(sessions) as session:
            root = merkle_store.stored_root(session, n)
            hashes = {
                int(idx): bytes(digest)
                for idx, digest in session.execute(
                    sa.select(LedgerEvent.idx, LedgerEvent.leaf_hash).where(
                        LedgerEvent.idx.in_(leaves)
                    )
                ).tuples()
            }
            first_roots = {f: merkle_store.stored_root(session, f) for f in firsts}
            ours = _our_proofs(session, n, leaves, firsts, root, hashes, first_roots)
        ours["consistency_prove.via_log"] = _via_log(sessions, n, firsts)
        engine.dispose()
    for name, samples in ours.items():
        out.append(
            result(
                "provenance",
                f"{name}.leaves_{n}",
                database,
                "us",
                samples,
                p99_us=percentile(samples, 0.99),
            )
        )
    return out


def _our_proofs(
    session: sa.orm.Session,
    n: int,
    leaves: list[int],
    firsts: list[int],
    root: bytes,
    hashes: dict[int, bytes],
    first_roots: dict[int, bytes],
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {
        "inclusion_prove": [],
        "inclusion_verify": [],
        "consistency_prove": [],
        "consistency_verify": [],
    }
    merkle_store.inclusion_proof(session, leaves[0], n)  # warm-up
    for index in leaves:
        began = time.perf_counter()
        proof = merkle_store.inclusion_proof(session, index, n)
        mid = time.perf_counter()
        merkle.verify_inclusion(index, n, bytes(hashes[index]), proof.hashes, root)
        end = time.perf_counter()
        timings["inclusion_prove"].append((mid - began) * 1e6)
        timings["inclusion_verify"].append((end - mid) * 1e6)
    for first in firsts:
        began = time.perf_counter()
        proof = merkle_store.consistency_proof(session, first, n)
        mid = time.perf_counter()
        merkle.verify_consistency(first, n, proof.hashes, first_roots[first], root)
        end = time.perf_counter()
        timings["consistency_prove"].append((mid - began) * 1e6)
        timings["consistency_verify"].append((end - mid) * 1e6)
    return timings


def _via_log(
    sessions: sa.orm.sessionmaker[sa.orm.Session], n: int, firsts: list[int]
) -> list[float]:
    """Consistency proofs as GetConsistencyProof asks for them (without gRPC).

    Each call opens its own snapshot, checks that the node cache covers the log, and
    proves: the database work of one request, where the figures above reuse one session.
    """
    log = ProvenanceLog(
        sessions, NoteSigner("bench.local/provenance", Ed25519PrivateKey.generate())
    )
    log.consistency(firsts[0], n)  # warm-up
    timings = []
    for first in firsts:
        began = time.perf_counter()
        log.consistency(first, n)
        timings.append((time.perf_counter() - began) * 1e6)
    return timings


def pymerkle_run(sizes: Sizes) -> list[Result]:
    """pymerkle's in-memory tree on the same entries, leaves and sizes."""
    import pymerkle  # a development dependency: only this comparison needs it

    n = sizes.proof_leaves
    rng = random.Random(5)
    leaves = [rng.randrange(n) for _ in range(sizes.proof_samples)]
    firsts = [rng.randrange(1, n) for _ in range(sizes.proof_samples)]
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    began = time.perf_counter()
    for i in range(n):
        tree.append_entry(_entry(i))
    append_rate = per_second(n, time.perf_counter() - began)
    root = tree.get_root(n)
    timings: dict[str, list[float]] = {
        "inclusion_prove": [],
        "inclusion_verify": [],
        "consistency_prove": [],
        "consistency_verify": [],
    }
    for index in leaves:
        began = time.perf_counter()
        proof = tree.prove_inclusion(index + 1, n)
        mid = time.perf_counter()
        pymerkle.verify_inclusion(tree.get_leaf(index + 1), root, proof)
        end = time.perf_counter()
        timings["inclusion_prove"].append((mid - began) * 1e6)
        timings["inclusion_verify"].append((end - mid) * 1e6)
    for first in firsts:
        state = tree.get_root(first)
        began = time.perf_counter()
        proof = tree.prove_consistency(first, n)
        mid = time.perf_counter()
        pymerkle.verify_consistency(state, root, proof)
        end = time.perf_counter()
        timings["consistency_prove"].append((mid - began) * 1e6)
        timings["consistency_verify"].append((end - mid) * 1e6)
    out = [
        result(
            "provenance",
            "pymerkle.append",
            "-",
            "ops/s",
            [append_rate],
            leaves=n,
            same_root_as_carbonlink=same_root_as_pymerkle(min(n, 1000)),
        ),
    ]
    for name, samples in timings.items():
        out.append(
            result(
                "provenance",
                f"pymerkle.{name}.leaves_{n}",
                "-",
                "us",
                samples,
                p99_us=percentile(samples, 0.99),
            )
        )
    return out


def same_root_as_pymerkle(count: int) -> bool:
    """Whether pymerkle's root over ``count`` entries equals carbonlink's (RFC 9162 both)."""
    import pymerkle

    tree = pymerkle.InmemoryTree(algorithm="sha256")
    for i in range(count):
        tree.append_entry(_entry(i))
    ours = merkle.root_from_leaves([leaf_hash(_entry(i)) for i in range(count)])
    return bool(tree.get_root(count) == ours)
