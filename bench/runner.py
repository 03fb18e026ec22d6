"""Runs every benchmark, prints one table and writes the JSON report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from bench import batch, machine, minimums, overlap, provenance, recovery, rules, stack, transport
from bench.common import BENCHES, Result, Sizes
from gateway.logging_setup import configure_logging

__all__ = ["BENCHES", "databases_for", "main", "run", "table"]


def run(
    sizes: Sizes,
    databases: Sequence[str],
    only: Sequence[str] = BENCHES,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the benchmarks named in ``only`` on each database; the report as plain data.

    Raises:
        RuntimeError: A benchmark's own sanity check failed (a transfer did not complete).
    """
    began = time.perf_counter()
    results: list[Result] = []
    # Seconds per stage: where a run's time goes, to keep each mode within its budget.
    stages: dict[str, float] = {}

    def stage(name: str, action: Callable[[], list[Result]]) -> list[Result]:
        progress(name)
        stage_began = time.perf_counter()
        found = action()
        stages[name] = time.perf_counter() - stage_began
        results.extend(found)
        return found

    if "transport" in only:
        echo = stage("transport (echo)", partial(transport.echo, sizes))
        floor = stage("transport (floor)", partial(transport.transport_floor, sizes, echo))
        for database in databases:
            stage(
                f"transport ({database})",
                partial(transport.submit_transfer, sizes, database, echo, floor),
            )
    if "rules" in only:
        stage("rules", lambda: rules.run(sizes))
    for database in databases:
        if "batch" in only:
            stage(f"batch ({database})", partial(batch.run, sizes, database))
        if "overlap" in only:
            stage(f"overlap ({database})", partial(overlap.run, sizes, database))
        if "provenance" in only:
            stage(
                f"provenance ({database})",
                partial(provenance.run, sizes, database),
            )
        if "recovery" in only:
            stage(f"recovery ({database})", partial(recovery.run, sizes, database))
    if "provenance" in only:
        stage("provenance (pymerkle)", lambda: provenance.pymerkle_run(sizes))
    figures = [r.to_json() for r in results]
    return {
        "mode": sizes.mode,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - began,
        "stage_seconds": stages,
        "databases": list(databases),
        "machine": machine.describe(),
        "results": figures,
        "minimums": [v.to_json() for v in minimums.judge(figures, databases)],
    }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


# Extras shown in the table's notes, under these labels (the JSON keeps every extra).
_NOTES = {
    "p50_ms": "p50_ms",
    "p99_ms": "p99_ms",
    "ratio_to_echo": "ratio_to_echo",
    "ratio_to_floor": "ratio_to_floor",
    "ratio_to_raw": "ratio_to_raw",
    "p99_us": "p99_us",
    "growth_vs_smallest": "growth_vs_smallest",
    "gateway_cpu_ms_per_op": "cpu_ms",
    "registries_cpu_ms_per_op": "registries_cpu_ms",
    "gateway_cpu_per_registries_cpu": "cpu_vs_registries",
    "registries_bound_ops_per_s": "registries_bound",
}


def table(report: dict[str, Any]) -> str:
    """The report's results as a fixed-width text table."""
    rows = [("bench", "figure", "db", "median", "unit", "low..high", "notes")]
    for r in report["results"]:
        notes = ", ".join(
            f"{label}={_number(float(r['extra'][key]))}"
            for key, label in _NOTES.items()
            if key in r["extra"]
        )
        rows.append(
            (
                r["bench"],
                r["name"],
                r["database"],
                _number(r["median"]),
                r["unit"],
                f"{_number(r['low'])}..{_number(r['high'])}",
                notes,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    machine_line = ", ".join(f"{k}={v}" for k, v in report["machine"].items())
    stage_line = ", ".join(f"{k} {v:.0f}s" for k, v in report.get("stage_seconds", {}).items())
    return "\n".join(
        [
            *lines,
            "",
            f"mode={report['mode']} in {report['seconds']:.0f}s; {machine_line}",
            f"stages: {stage_line}",
            *minimums.lines(report.get("minimums", [])),
        ]
    )


def databases_for(choice: str) -> list[str]:
    """The databases ``--database`` names (``both``: SQLite, and PostgreSQL when it answers).

    Raises:
        RuntimeError: PostgreSQL alone was asked for and does not answer.
    """
    if choice == "sqlite":
        return ["sqlite"]
    if not stack.postgres_available():
        if choice == "postgresql":
            raise RuntimeError(f"PostgreSQL at {stack.POSTGRES_ADMIN_URL} does not answer")
        return ["sqlite"]
    return ["sqlite", "postgresql"] if choice == "both" else ["postgresql"]


def main(
    sizes: Sizes,
    database: str,
    json_path: Path | None,
    only: Sequence[str] = BENCHES,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run, print the table (and progress) to ``out``, write JSON; the report."""
    # The gateways log every step; a benchmark's output is its table, so only errors are
    # logged (to stderr, which stays open: the process, or a test run, goes on logging).
    configure_logging("error", "console")
    databases = databases_for(database)

    def progress(stage: str) -> None:
        if out is not None:
            print(f"... {stage}", file=out, flush=True)

    report = run(sizes, databases, only, progress)
    if out is not None:
        print(table(report), file=out)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
