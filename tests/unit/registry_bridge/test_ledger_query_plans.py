"""The ledger's per-transfer lookups search an index instead of scanning earlier rows.

Both run for every transfer (the overlap check before every insert, the mirror lookup
when a transfer is checked), so a scan would make each transfer slower than the last.
Timing would flake; SQLite's query plan says it exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from registry_bridge import db, ledger


def _plan(engine: sa.Engine, query: sa.Select[tuple[int]]) -> list[str]:
    compiled = query.compile(dialect=engine.dialect)
    params = compiled.construct_params({"program": "VCS", "series": "", "start": 1001, "end": 1100})
    args = tuple(params[name] for name in compiled.positiontup or ())
    with engine.connect() as connection:
        return [
            str(row[3])
            for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)
        ]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (ledger._OVERLAP, "ix_ledger_blocks_live_range"),
        (ledger._MIRRORS, "ix_ledger_blocks_live_mirrors"),
    ],
    ids=["overlap", "mirrors"],
)
def test_lookup_is_a_bounded_index_search(
    tmp_path: Path, query: sa.Select[tuple[int]], index: str
) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path}/ledger.db")
    try:
        db.upgrade(engine)
        plan = _plan(engine, query)
    finally:
        engine.dispose()
    searches = [step for step in plan if step.startswith("SEARCH")]
    assert searches and all(index in step for step in searches), plan
    # The outer search is bounded on both sides of the serial range, not "< end" only.
    assert any(">?" in step and "<?" in step for step in searches), plan
    assert not any(step.startswith("SCAN") for step in plan), plan
