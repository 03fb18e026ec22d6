"""Shared pieces: sizes per mode, repeated timing, and the result record."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does in one mode."""

    mode: str
    runs: int
    """Measured runs after one warm-up run."""
    echo_calls: int
    """Echo calls per run (per client group)."""
    transfer_calls: int
    """Single SubmitTransfer calls per run."""
    clients: int
    """Concurrent clients of the N-client runs."""
    batch_sizes: tuple[int, ...]
    rules_decisions: int
    overlap_sizes: tuple[int, ...]
    overlap_probes: int
    overlap_budget_s: float
    """Time allowed for the probes at one size (an O(n) check at 10^7 blocks is slow)."""
    appends: int
    proof_leaves: int
    proof_samples: int
    recovery_transfers: int


SMOKE = Sizes(
    mode="smoke",
    runs=1,
    echo_calls=50,
    transfer_calls=3,
    clients=2,
    batch_sizes=(10,),
    rules_decisions=20,
    overlap_sizes=(1_000,),
    overlap_probes=10,
    overlap_budget_s=2.0,
    appends=50,
    proof_leaves=1_000,
    proof_samples=10,
    recovery_transfers=10,
)
# Quick mode must finish in under a minute with both databases on a shared 2-core
# machine (it took 55-63 s): single transfers (~7/s on PostgreSQL) and the in-flight
# transfers of the recovery figure were most of its time, so they are the ones cut.
QUICK = Sizes(
    mode="quick",
    runs=2,
    echo_calls=500,
    transfer_calls=10,
    clients=4,
    batch_sizes=(100,),
    rules_decisions=300,
    overlap_sizes=(10_000, 100_000),
    overlap_probes=50,
    overlap_budget_s=3.0,
    appends=500,
    proof_leaves=100_000,
    proof_samples=100,
    recovery_transfers=100,
)
# Full mode's transport runs last seconds each: runs of 60 transfers (under a second,
# 7 calls per client with 8 clients) were mostly the shared rounds filling up and
# moved with the machine from one run to the next. 400 since the accepted figures doubled
# the transfers run: 600 took the full run to 15 min 14 s on session 16's slow machine.
FULL = Sizes(
    mode="full",
    runs=3,
    echo_calls=5_000,
    transfer_calls=400,
    clients=8,
    batch_sizes=(100, 1_000),
    rules_decisions=2_000,
    overlap_sizes=(100_000, 1_000_000, 10_000_000),
    overlap_probes=200,
    overlap_budget_s=10.0,
    appends=2_000,
    proof_leaves=1_000_000,
    proof_samples=500,
    recovery_transfers=1_000,
)
MODES = {s.mode: s for s in (SMOKE, QUICK, FULL)}
BENCHES = ("transport", "batch", "rules", "overlap", "provenance", "recovery")


@dataclass
class Result:
    """One figure: the median of its runs, their spread, and what it is compared with."""

    bench: str
    """The benchmark (transport, batch, rules, overlap, provenance, recovery)."""
    name: str
    """What was measured, e.g. ``submit_transfer.clients_1``."""
    database: str
    """``sqlite``, ``postgresql`` or ``-`` (no database involved)."""
    unit: str
    """``ops/s``, ``us``, ``ms`` or ``s``."""
    median: float
    low: float
    """Smallest run value."""
    high: float
    """Largest run value."""
    runs: list[float]
    extra: dict[str, Any] = field(default_factory=dict)
    """Percentiles, ratios and sizes that go with the figure."""

    def to_json(self) -> dict[str, Any]:
        """The result as plain data."""
        return {
            "bench": self.bench,
            "name": self.name,
            "database": self.database,
            "unit": self.unit,
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "runs": self.runs,
            "extra": self.extra,
        }


def result(
    bench: str, name: str, database: str, unit: str, runs: Sequence[float], **extra: Any
) -> Result:
    """A :class:`Result` from the values of its measured runs.

    Raises:
        ValueError: No runs.
    """
    if not runs:
        raise ValueError(f"{bench}.{name}: no runs")
    return Result(
        bench,
        name,
        database,
        unit,
        statistics.median(runs),
        min(runs),
        max(runs),
        [float(r) for r in runs],
        dict(extra),
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in [0, 1]) of ``values``.

    Raises:
        ValueError: No values.
    """
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def repeat(runs: int, once: Callable[[], float]) -> list[float]:
    """One warm-up call of ``once``, then ``runs`` measured calls; their values."""
    once()
    return [once() for _ in range(runs)]


def per_second(count: int, seconds: float) -> float:
    """Operations per second (a zero-length interval counts as one nanosecond)."""
    return count / max(seconds, 1e-9)


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far, read from /proc.

    Raises:
        OSError: The process is gone, or this system has no /proc.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name (field 2) may hold spaces: fields are counted after its ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuShares:
    """Where the CPU of a measured interval went, per operation, in milliseconds.

    Wall throughput on a shared machine moves with its neighbours; CPU per operation
    moves far less, and says which side bounds a figure.
    """

    gateway_ms: float
    """This process's CPU less the benchmark clients' own threads: the server under
    test (its gRPC threads included)."""
    registries_ms: float | None
    """The registry emulators' process, where it runs apart (None where there is none)."""

    def to_extra(self) -> dict[str, float]:
        """The shares as result extras, with the gateway's CPU as a multiple of the
        registries' where both were measured.

        The registries' work per transfer is the same in every run, so that multiple
        compares the gateway's cost across runs taken while the machine ran at
        different speeds, as its neighbours let it (a quarter apart within minutes).
        """
        extra = {"gateway_cpu_ms_per_op": self.gateway_ms}
        if self.registries_ms is not None:
            extra["registries_cpu_ms_per_op"] = self.registries_ms
            if self.registries_ms > 0:
                extra["gateway_cpu_per_registries_cpu"] = self.gateway_ms / self.registries_ms
                # The registries' own bound: with a core to themselves and a gateway that
                # cost nothing, they could serve no more operations per second than this.
                extra["registries_bound_ops_per_s"] = 1e3 / self.registries_ms
        return extra


class CpuMeter:
    """Measures :class:`CpuShares` over an interval: ``start()``, then ``shares(...)``."""

    def __init__(self, registries_pid: int | None = None) -> None:
        """Measure this process, and the registries' process ``registries_pid`` if given."""
        self._registries_pid = registries_pid
        self._process = 0.0
        self._registries = 0.0

    def start(self) -> None:
        """Begin the interval."""
        self._process = time.process_time()
        if self._registries_pid is not None:
            self._registries = process_cpu_seconds(self._registries_pid)

    def shares(self, operations: int, client_seconds: float) -> CpuShares:
        """The interval's CPU per operation; ``client_seconds``: the clients' own threads'."""
        count = max(operations, 1)
        gateway = time.process_time() - self._process - client_seconds
        registries = None
        if self._registries_pid is not None:
            registries = (process_cpu_seconds(self._registries_pid) - self._registries) / count
        return CpuShares(gateway * 1e3 / count, None if registries is None else registries * 1e3)


def median_shares(shares: Sequence[CpuShares]) -> dict[str, float]:
    """The median of each share over runs, as result extras."""
    if not shares:
        return {}
    extras = [s.to_extra() for s in shares]
    keys = dict.fromkeys(k for e in extras for k in e)
    return {key: statistics.median(e[key] for e in extras if key in e) for key in keys}
