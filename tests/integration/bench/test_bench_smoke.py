"""``carbonlink bench --smoke`` runs every benchmark and writes a well-formed report.

Only the shape is checked: speeds are measured by the benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from bench import runner, stack
from bench.common import CpuMeter, CpuShares, median_shares, process_cpu_seconds
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
    assert ("transport", "floor_3_calls.clients_1") in names
    assert ("transport", "floor_5_calls.clients_1") in names
    transfer = next(r for r in results if r["name"] == "submit_transfer.clients_1")
    assert {"p50_ms", "p99_ms", "ratio_to_echo", "ratio_to_floor"} <= set(transfer["extra"])
    accepted = next(r for r in results if r["name"] == "submit_accepted.clients_1")
    assert {"p50_ms", "p99_ms", "ratio_to_echo"} <= set(accepted["extra"])
    assert accepted["median"] > 0
    batch = next(r for r in results if r["name"].startswith("submit_transfers.batch_"))
    assert "ratio_to_raw" in batch["extra"]
    # Where the CPU went: the gateway's share always, the registries' where they run apart.
    echo = next(r for r in results if r["name"] == "echo.clients_1")
    assert echo["extra"]["gateway_cpu_ms_per_op"] > 0
    assert "registries_cpu_ms_per_op" not in echo["extra"]
    for figure in (transfer, batch):
        assert figure["extra"]["gateway_cpu_ms_per_op"] > 0, figure
        assert figure["extra"]["registries_cpu_ms_per_op"] >= 0, figure
    # A smoke run's sizes reach none of the minimums but the single transfer's,
    # whose verdict is the machine's (speeds are never asserted here).
    minimums = [(m["database"], m["status"]) for m in report["minimums"]]
    assert minimums[1] in (("sqlite", "met"), ("sqlite", "not met"))
    assert minimums[:1] + minimums[2:] == [("sqlite", "not measured")] * 3
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


def _burn_cpu(seconds: float) -> float:
    """Spin this thread for ``seconds`` of its own CPU time; the CPU time it took."""
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass
    return time.thread_time() - began


def test_cpu_meter_counts_the_server_side_and_leaves_out_the_clients() -> None:
    meter = CpuMeter(registries_pid=os.getpid())
    meter.start()
    spent = _burn_cpu(0.1)
    as_server = meter.shares(operations=10, client_seconds=0.0)
    as_client = meter.shares(operations=10, client_seconds=spent)
    # 100 ms over 10 operations: at least 10 ms each when it was the server's work...
    assert as_server.gateway_ms >= 9.5
    # ...and next to nothing when the clients' threads did it.
    assert as_client.gateway_ms < as_server.gateway_ms - 9.0
    # The "registries" here are this very process: /proc saw the same work (counted in
    # clock ticks of 10 ms, hence the margin).
    assert as_server.registries_ms is not None and as_server.registries_ms >= 5.0
    extra = as_server.to_extra()
    assert set(extra) == {
        "gateway_cpu_ms_per_op",
        "registries_cpu_ms_per_op",
        "gateway_cpu_per_registries_cpu",
        "registries_bound_ops_per_s",
    }
    assert extra["gateway_cpu_per_registries_cpu"] == pytest.approx(
        as_server.gateway_ms / as_server.registries_ms
    )
    assert extra["registries_bound_ops_per_s"] == pytest.approx(1e3 / as_server.registries_ms)
    assert CpuShares(1.0, 0.25).to_extra()["registries_bound_ops_per_s"] == 4_000
    # Where the registries used no measurable CPU there is no multiple of it, nor bound.
    unmeasured = CpuShares(1.0, 0.0).to_extra()
    assert "gateway_cpu_per_registries_cpu" not in unmeasured
    assert "registries_bound_ops_per_s" not in unmeasured
    assert process_cpu_seconds(os.getpid()) > 0


def test_postgresql_alone_needs_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "postgres_available", lambda: False)
    assert runner.databases_for("both") == ["sqlite"]
    with pytest.raises(RuntimeError):
        runner.databases_for("postgresql")


def test_median_shares_take_each_extra_over_the_runs_that_have_it() -> None:
    runs = [CpuShares(2.0, 1.0), CpuShares(3.0, 0.0), CpuShares(4.0, 1.0)]
    medians = median_shares(runs)
    assert medians["gateway_cpu_ms_per_op"] == 3.0
    assert medians["registries_cpu_ms_per_op"] == 1.0
    # The multiple is left out of the run whose registries showed no CPU.
    assert medians["gateway_cpu_per_registries_cpu"] == 3.0
