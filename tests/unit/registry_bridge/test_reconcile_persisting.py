"""Only a difference found by two reconciliations in a row is reported as persisting."""

from __future__ import annotations

from registry_bridge.model import BlockId, Program
from registry_bridge.reconcile import (
    COMPLETED,
    TOTALS,
    TRAIL,
    UNIT_BLOCKS,
    Discrepancy,
    ReconcileReport,
    persisting,
)


def _block(start: int) -> BlockId:
    return BlockId(Program.VCS, "", start, start + 9)


def _difference(registry: str, start: int, phase: str = UNIT_BLOCKS) -> Discrepancy:
    return Discrepancy(registry, phase, f"{registry} {start}", block=_block(start))


def test_a_difference_seen_once_is_not_persisting_and_one_seen_twice_is() -> None:
    stuck = _difference("hkmo", 100)
    moving = _difference("hkmo", 200)
    first = ReconcileReport(TRAIL, (stuck, moving, _difference("hkmo", 100, TRAIL)))
    second = ReconcileReport(
        TRAIL, (stuck, _difference("verra", 300), _difference("hkmo", 100, TRAIL))
    )
    assert persisting(None, first) == ()
    assert persisting(first, second) == (stuck,)
    assert persisting(second, ReconcileReport(COMPLETED, ())) == ()


def test_totals_that_differ_the_same_way_twice_persist() -> None:
    totals = Discrepancy("verra", TOTALS, "VCS active", Program.VCS, None, 10, 9)
    again = Discrepancy("verra", TOTALS, "VCS active", Program.VCS, None, 10, 9)
    changed = Discrepancy("verra", TOTALS, "VCS active", Program.VCS, None, 10, 8)
    report = ReconcileReport(UNIT_BLOCKS, (totals,))
    assert persisting(report, ReconcileReport(UNIT_BLOCKS, (again,))) == (again,)
    assert persisting(report, ReconcileReport(UNIT_BLOCKS, (changed,))) == ()
