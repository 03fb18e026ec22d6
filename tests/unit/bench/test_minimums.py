"""A run judges the benchmark issue's minimums from its own figures."""

from __future__ import annotations

from typing import Any

from bench.minimums import Status, judge, lines


def _figure(bench: str, name: str, database: str, median: float, **extra: Any) -> dict[str, Any]:
    return {
        "bench": bench,
        "name": name,
        "database": database,
        "unit": "-",
        "median": median,
        "low": median,
        "high": median,
        "runs": [median],
        "extra": extra,
    }


def _full_run(
    batch_rate: float = 543.0,
    settled: tuple[float, float] = (0.034, 0.106),
    accepted: tuple[float, float] = (0.069, 0.152),
    overlap: tuple[float, float] = (45.5, 52.8),
    proofs: tuple[float, float] = (115.0, 119.0),
) -> list[dict[str, Any]]:
    return [
        _figure("batch", "submit_transfers.batch_100", "sqlite", 516.0),
        _figure(
            "batch",
            "submit_transfers.batch_1000",
            "sqlite",
            batch_rate,
            registries_bound_ops_per_s=1449.0,
        ),
        _figure("transport", "echo.clients_1", "-", 1603.0),
        _figure("transport", "submit_transfer.clients_1", "sqlite", 1, ratio_to_echo=settled[0]),
        _figure("transport", "submit_transfer.clients_8", "sqlite", 1, ratio_to_echo=settled[1]),
        _figure("transport", "submit_accepted.clients_1", "sqlite", 1, ratio_to_echo=accepted[0]),
        _figure("transport", "submit_accepted.clients_8", "sqlite", 1, ratio_to_echo=accepted[1]),
        _figure("overlap", "check.blocks_100000", "sqlite", overlap[0]),
        _figure("overlap", "check.blocks_1000000", "sqlite", 51.1),
        _figure("overlap", "check.blocks_10000000", "sqlite", overlap[1]),
        _figure("provenance", "inclusion_prove.leaves_1000000", "sqlite", proofs[0]),
        _figure("provenance", "consistency_prove.leaves_1000000", "sqlite", proofs[1]),
    ]


def _statuses(results: list[dict[str, Any]], databases: list[str]) -> dict[tuple[str, str], Status]:
    return {(v.minimum.split()[0], v.database): v.status for v in judge(results, databases)}


def test_session_18s_figures_meet_overlap_and_proofs_and_not_the_throughputs() -> None:
    verdicts = judge(_full_run(), ["sqlite"])
    by_minimum = {v.minimum: v for v in verdicts}
    assert [v.status for v in verdicts] == [
        Status.NOT_MET,
        Status.NOT_MET,
        Status.MET,
        Status.MET,
    ]
    batch = by_minimum["SubmitTransfers >= 5,000 transfers/s, batches of 1,000"]
    assert batch.measured == "543/s; the registries' own CPU allows at most 1,449/s"
    single = by_minimum["single SubmitTransfer >= 25% of bare echo"]
    assert "answered at acceptance 6.9% (1 client), 15.2% (8 clients)" in single.measured


def test_each_minimum_is_met_at_its_threshold_and_not_below_it() -> None:
    met = _statuses(
        _full_run(
            batch_rate=5000.0,
            settled=(0.25, 0.25),
            overlap=(50.0, 100.0),
            proofs=(999.0, 999.0),
        ),
        ["sqlite"],
    )
    assert set(met.values()) == {Status.MET}
    below = _statuses(
        _full_run(
            batch_rate=4999.0,
            settled=(0.25, 0.249),
            accepted=(0.249, 0.3),
            overlap=(50.0, 100.1),
            proofs=(999.0, 1000.0),
        ),
        ["sqlite"],
    )
    assert set(below.values()) == {Status.NOT_MET}


def test_a_mode_meets_the_single_minimum_only_with_one_client_and_with_many() -> None:
    one_client_only = [
        f
        for f in _full_run(accepted=(0.3, 0.3))
        if f["name"] not in ("submit_accepted.clients_8", "submit_transfer.clients_1")
    ]
    assert _statuses(one_client_only, ["sqlite"])[("single", "sqlite")] == Status.NOT_MET


def test_figures_a_run_did_not_take_are_not_measured_never_met() -> None:
    quick = [
        _figure("batch", "submit_transfers.batch_100", "sqlite", 9000.0),
        _figure("overlap", "check.blocks_10000", "sqlite", 40.0),
        _figure("overlap", "check.blocks_100000", "sqlite", 41.0),
        _figure("provenance", "inclusion_prove.leaves_100000", "sqlite", 80.0),
        _figure("provenance", "consistency_prove.leaves_100000", "sqlite", 80.0),
    ]
    verdicts = judge(quick, ["sqlite", "postgresql"])
    assert [(v.database, v.status) for v in verdicts] == [
        ("sqlite", Status.NOT_MEASURED),
        ("sqlite", Status.NOT_MEASURED),
        ("sqlite", Status.NOT_MEASURED),
        ("sqlite", Status.NOT_MEASURED),
        ("postgresql", Status.NOT_MEASURED),
        ("postgresql", Status.NOT_MEASURED),
    ]
    assert "a full run takes one" in verdicts[0].measured


def test_the_table_lines_name_each_minimum_its_database_and_status() -> None:
    text = "\n".join(lines([v.to_json() for v in judge(_full_run(), ["sqlite"])]))
    assert "the benchmark issue's minimums on this machine:" in text
    assert "proofs at 10^6 leaves under 1 ms" in text
    assert "sqlite  met" in text
    assert lines([]) == []
