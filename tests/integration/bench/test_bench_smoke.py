"""``carbonlink bench --smoke`` runs every benchmark and writes a well-formed report.

Only the shape is checked: speeds are measured by the benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import runner, stack
from gateway.cli import main

_UNITS = {"ops/s", "us", "ms", "s"}


def test_smoke_run_writes_a_well_formed_report(tmp_path: Path) -> None:
    report_file = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--database", "sqlite", "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["mode"] == "smoke"
    assert report["databases"] == ["sqlite"]
    assert {"nproc", "cpu", "memory_gib", "python", "sqlite", "postgresql"} <= set(
        report["machine"]
    )
    results = report["results"]
    assert {r["bench"] for r in results} == set(runner.BENCHES)
    for r in results:
        assert r["unit"] in _UNITS, r
        assert r["runs"], r
        assert all(math.isfinite(v) and v >= 0 for v in r["runs"]), r
        assert r["low"] <= r["median"] <= r["high"], r
    names = {(r["bench"], r["name"]) for r in results}
    assert ("transport", "echo.clients_1") in names
    assert ("transport", "submit_transfer.clients_1") in names
    transfer = next(r for r in results if r["name"] == "submit_transfer.clients_1")
    assert {"p50_ms", "p99_ms", "ratio_to_echo"} <= set(transfer["extra"])
    batch = next(r for r in results if r["name"].startswith("submit_transfers.batch_"))
    assert "ratio_to_raw" in batch["extra"]
    pymerkle_append = next(r for r in results if r["name"] == "pymerkle.append")
    # Both trees are RFC 9162: the comparison is of the same work.
    assert pymerkle_append["extra"]["same_root_as_carbonlink"] is True


def test_table_lists_every_figure() -> None:
    report = {
        "mode": "smoke",
        "seconds": 1.0,
        "machine": {"nproc": 2},
        "results": [
            {
                "bench": "rules",
                "name": "check_transfer",
                "database": "-",
                "unit": "us",
                "median": 12.5,
                "low": 10.0,
                "high": 15.0,
                "runs": [10.0, 12.5, 15.0],
                "extra": {"p99_us": 15.0},
            }
        ],
    }
    text = runner.table(report)
    assert "check_transfer" in text
    assert "p99_us=15.00" in text


def test_postgresql_alone_needs_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "postgres_available", lambda: False)
    assert runner.databases_for("both") == ["sqlite"]
    with pytest.raises(RuntimeError):
        runner.databases_for("postgresql")
