"""Double-counting lookups: one overlap check against 10^5 .. 10^7 live ledger blocks.

The ledger is bulk-loaded straight into ``ledger_blocks`` (server-side INSERT ... SELECT
over a generated series: the check reads rows, it does not care how they came), grown
from one size to the next, and analysed.  Blocks are 10 serials long with 10-serial gaps,
all of one program, so the check runs where the index is densest.  Each probe asks
``ledger``'s own overlap query about one serial, half of them inside a block (an overlap
found) and half in a gap (none), at random positions; one more probe sits at the very
end of the serial space, the worst place for a scan that walks the index from the start.

On PostgreSQL the GiST exclusion constraint is dropped before loading (the overlap query
does not use it, and maintaining it row by row would dominate the set-up time).
"""

from __future__ import annotations

import random
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapters.serials import parse_serial
from bench import stack
from bench.common import Result, Sizes, percentile, result
from registry_bridge import db, ledger
from registry_bridge.block_json import attributes_to_json
from registry_bridge.model import BlockId, Program

BASE = 10_000_000_000
STRIDE = 20
LENGTH = 10


def _load(engine: sa.Engine, have: int, want: int) -> None:
    """Add blocks ``have`` .. ``want - 1``."""
    attributes = attributes_to_json(parse_serial("verra", stack.VERRA_SERIAL))
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            series = (
                "WITH RECURSIVE s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi)"
                " INSERT INTO ledger_blocks (program, serial_series, serial_start, serial_end,"
                " registry, account, status, live, is_mirror, origin_program, origin_series,"
                " origin_start, attributes)"
                " SELECT 'VCS', '', :base + i * :stride, :base + i * :stride + :len - 1,"
                " 'hkmo', 'bench', 'active', 1, 0, 'VCS', '', :base + i * :stride, :attrs FROM s"
            )
        else:
            series = (
                "INSERT INTO ledger_blocks (program, serial_series, serial_start, serial_end,"
                " registry, account, status, live, is_mirror, origin_program, origin_series,"
                " origin_start, attributes)"
                " SELECT 'VCS', '', :base + i * :stride, :base + i * :stride + :len - 1,"
                " 'hkmo', 'bench', 'active', true, false, 'VCS', '', :base + i * :stride, :attrs"
                " FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i"
            )
        connection.execute(
            sa.text(series),
            {
                "lo": have,
                "hi": want - 1,
                "base": BASE,
                "stride": STRIDE,
                "len": LENGTH,
                "attrs": attributes,
            },
        )
        connection.execute(sa.text("ANALYZE"))


def _probe(session: Session, serial: int) -> float:
    began = time.perf_counter()
    ledger.overlapping(session, BlockId(Program.VCS, "", serial, serial))
    return time.perf_counter() - began


def run(sizes: Sizes, database: str) -> list[Result]:
    """Probe timings at each size, with the growth from the smallest to the largest."""
    out: list[Result] = []
    rng = random.Random(9)
    with stack.scratch_database(database) as url:
        engine = db.create_engine(url)
        db.upgrade(engine)
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                connection.execute(
                    sa.text(
                        "ALTER TABLE ledger_blocks DROP CONSTRAINT ex_ledger_blocks_live_overlap"
                    )
                )
        have = 0
        sessions = db.session_factory(engine)
        for size in sizes.overlap_sizes:
            began = time.perf_counter()
            _load(engine, have, size)
            load_s = time.perf_counter() - began
            have = size
            samples: list[float] = []
            with sessions() as session:
                for _ in range(3):  # warm-up: caches and statement compilation
                    _probe(session, BASE)
                deadline = time.perf_counter() + sizes.overlap_budget_s
                while len(samples) < sizes.overlap_probes and time.perf_counter() < deadline:
                    block = rng.randrange(size)
                    offset = rng.randrange(LENGTH) + (LENGTH if len(samples) % 2 else 0)
                    samples.append(_probe(session, BASE + block * STRIDE + offset))
                tail = _probe(session, BASE + (size - 1) * STRIDE + 1)
                session.rollback()
            micro = [s * 1e6 for s in samples]
            out.append(
                result(
                    "overlap",
                    f"check.blocks_{size}",
                    database,
                    "us",
                    micro,
                    blocks=size,
                    probes=len(micro),
                    p99_us=percentile(micro, 0.99),
                    tail_probe_us=tail * 1e6,
                    load_s=load_s,
                )
            )
        engine.dispose()
    smallest = out[0].median
    for figure in out:
        figure.extra["growth_vs_smallest"] = figure.median / smallest
    return out
