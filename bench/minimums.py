"""The benchmark issue's four minimums, judged from one run's results.

A run says for itself which minimums it met on the machine it ran on, so that an operator
running ``carbonlink bench`` on their own hardware reads the verdict next to the figures
instead of working it out from ``docs/performance.md``. A minimum whose figures the run did
not take (a quick run's smaller sizes, ``--only``, ``--database``) is "not measured", never
met by default.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BATCH_MINIMUM_PER_S = 5_000
BATCH_SIZE = 1_000
SINGLE_MINIMUM_RATIO_TO_ECHO = 0.25
PROOF_MINIMUM_US = 1_000.0
PROOF_LEAVES = 1_000_000
OVERLAP_SMALLEST = 100_000
OVERLAP_LARGEST = 10_000_000
OVERLAP_FLAT_GROWTH = 2.0
"""The most a check at 10^7 blocks may cost against one at 10^5 and still be flat.

A check of O(log n) seeks grows by at most log(10^7)/log(10^5) = 1.4 over that range, and
the medians of a shared machine spread by more than that between sizes; a check that scans
grows a hundredfold."""

# The single-transfer modes the bench measures, as (figure prefix, label).
_SINGLE_MODES = (
    ("submit_transfer", "answered once settled"),
    ("submit_accepted", "answered at acceptance"),
)


class Status(enum.StrEnum):
    MET = "met"
    NOT_MET = "not met"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Verdict:
    """One minimum, on one database where the database matters."""

    minimum: str
    """The issue's words for it."""
    database: str
    """``sqlite``, ``postgresql`` or ``-``."""
    status: Status
    measured: str
    """What the run measured against it, or why it did not."""

    def to_json(self) -> dict[str, str]:
        """The verdict as plain data."""
        return {
            "minimum": self.minimum,
            "database": self.database,
            "status": self.status.value,
            "measured": self.measured,
        }


def judge(results: Sequence[Mapping[str, Any]], databases: Sequence[str]) -> list[Verdict]:
    """The issue's minimums judged from a report's ``results`` (as :meth:`Result.to_json`).

    Args:
        results: The run's figures.
        databases: The databases the run was asked to measure.
    """
    figures = {(r["bench"], r["name"], r["database"]): r for r in results}
    verdicts = [_batch(figures), _single(figures)]
    for database in databases:
        verdicts.append(_overlap(figures, database))
        verdicts.append(_proofs(figures, database))
    return verdicts


_Figures = Mapping[tuple[str, str, str], Mapping[str, Any]]


def _batch(figures: _Figures) -> Verdict:
    minimum = f"SubmitTransfers >= {BATCH_MINIMUM_PER_S:,} transfers/s, batches of {BATCH_SIZE:,}"
    figure = figures.get(("batch", f"submit_transfers.batch_{BATCH_SIZE}", "sqlite"))
    if figure is None:
        return Verdict(
            minimum,
            "sqlite",
            Status.NOT_MEASURED,
            f"no batch of {BATCH_SIZE:,} on SQLite in this run (a full run takes one)",
        )
    rate = float(figure["median"])
    measured = f"{rate:,.0f}/s"
    bound = figure["extra"].get("registries_bound_ops_per_s")
    if bound is not None:
        measured += f"; the registries' own CPU allows at most {float(bound):,.0f}/s"
    status = Status.MET if rate >= BATCH_MINIMUM_PER_S else Status.NOT_MET
    return Verdict(minimum, "sqlite", status, measured)


def _single(figures: _Figures) -> Verdict:
    """Met by a mode whose transfers reach the share of echo with one client and with N."""
    minimum = f"single SubmitTransfer >= {SINGLE_MINIMUM_RATIO_TO_ECHO:.0%} of bare echo"
    parts: list[str] = []
    met = False
    for prefix, label in _SINGLE_MODES:
        ratios = sorted(
            (int(name.rpartition("_")[2]), float(r["extra"]["ratio_to_echo"]))
            for (bench, name, database), r in figures.items()
            if bench == "transport"
            and database == "sqlite"
            and name.startswith(f"{prefix}.clients_")
            and "ratio_to_echo" in r["extra"]
        )
        if not ratios:
            continue
        shown = ", ".join(
            f"{ratio:.1%} ({clients} client{'' if clients == 1 else 's'})"
            for clients, ratio in ratios
        )
        parts.append(f"{label} {shown}")
        clients_measured = {clients for clients, _ in ratios}
        if len(clients_measured) >= 2 and 1 in clients_measured:
            met = met or all(ratio >= SINGLE_MINIMUM_RATIO_TO_ECHO for _, ratio in ratios)
    if not parts:
        return Verdict(
            minimum, "sqlite", Status.NOT_MEASURED, "no SubmitTransfer on SQLite in this run"
        )
    return Verdict(minimum, "sqlite", Status.MET if met else Status.NOT_MET, "; ".join(parts))


def _overlap(figures: _Figures, database: str) -> Verdict:
    minimum = "overlap checks O(log n), flat from 10^5 to 10^7 blocks"
    smallest = figures.get(("overlap", f"check.blocks_{OVERLAP_SMALLEST}", database))
    largest = figures.get(("overlap", f"check.blocks_{OVERLAP_LARGEST}", database))
    if smallest is None or largest is None:
        return Verdict(
            minimum,
            database,
            Status.NOT_MEASURED,
            "the run's block counts do not span 10^5 to 10^7 (a full run's do)",
        )
    growth = float(largest["median"]) / float(smallest["median"])
    measured = (
        f"{float(smallest['median']):,.1f} µs at 10^5, {float(largest['median']):,.1f} µs at 10^7 "
        f"({growth:.2f} times; flat is at most {OVERLAP_FLAT_GROWTH:g})"
    )
    status = Status.MET if growth <= OVERLAP_FLAT_GROWTH else Status.NOT_MET
    return Verdict(minimum, database, status, measured)


def _proofs(figures: _Figures, database: str) -> Verdict:
    minimum = "proofs at 10^6 leaves under 1 ms"
    medians = {
        kind: figures.get(("provenance", f"{kind}_prove.leaves_{PROOF_LEAVES}", database))
        for kind in ("inclusion", "consistency")
    }
    if any(figure is None for figure in medians.values()):
        return Verdict(
            minimum,
            database,
            Status.NOT_MEASURED,
            "no proofs at 10^6 leaves in this run (a full run takes them)",
        )
    micros = {
        kind: float(figure["median"]) for kind, figure in medians.items() if figure is not None
    }
    measured = ", ".join(f"{kind} {us:,.0f} µs" for kind, us in micros.items())
    status = Status.MET if all(us < PROOF_MINIMUM_US for us in micros.values()) else Status.NOT_MET
    return Verdict(minimum, database, status, measured)


def lines(verdicts: Sequence[Mapping[str, str]]) -> list[str]:
    """The verdicts (as :meth:`Verdict.to_json`) as text lines under a heading."""
    if not verdicts:
        return []
    width = max(len(v["minimum"]) for v in verdicts)
    db_width = max(len(v["database"]) for v in verdicts)
    status_width = max(len(v["status"]) for v in verdicts)
    return ["", "the benchmark issue's minimums on this machine:"] + [
        f"  {v['minimum'].ljust(width)}  {v['database'].ljust(db_width)}  "
        f"{v['status'].ljust(status_width)}  {v['measured']}"
        for v in verdicts
    ]
