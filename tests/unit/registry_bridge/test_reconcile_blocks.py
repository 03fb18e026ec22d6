"""Phase 2 of reconciliation from one listing per registry: the same discrepancies as
asking the registry about each ledger block (``block_status``), found in memory.

The oracle asks per block: every listed holding that shares a serial with the block, as
``block_status`` answers (by first serial, as the registries list them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock, merge_spans
from registry_bridge.port import RegistryHolding
from registry_bridge.reconcile import UNIT_BLOCKS, Discrepancy, compare_blocks

Run = tuple[int, int, str, HoldingStatus, str]
runs = st.tuples(
    st.integers(0, 60),
    st.integers(1, 30),
    st.sampled_from(("a", "b")),
    st.sampled_from((HoldingStatus.ACTIVE, HoldingStatus.RETIRED)),
    st.sampled_from(("", "s")),
)


def _block(start: int, length: int, series: str) -> UnitBlock:
    return UnitBlock(
        BlockId(Program.VCS, series, start, start + length - 1),
        project_id="1060",
        country="US",
        vintage_start=date(2019, 1, 1),
        vintage_end=date(2019, 12, 31),
    )


def _spelled(block: BlockId) -> str:
    series = f"/{block.serial_series}" if block.serial_series else ""
    return f"VCS{series} {block.serial_start}-{block.serial_end}"


def _asked_block_by_block(
    rows: Sequence[LedgerHolding], listing: Sequence[RegistryHolding]
) -> list[Discrepancy]:
    found = []
    for row in rows:
        shown = sorted(
            (h for h in listing if h.block.id.overlaps(row.block.id)),
            key=lambda h: h.block.id.serial_start,
        )
        held = [h for h in shown if h.account == row.account and h.status is row.status]
        spans = merge_spans(
            (
                max(h.block.id.serial_start, row.block.id.serial_start),
                min(h.block.id.serial_end, row.block.id.serial_end),
            )
            for h in held
        )
        if spans == [(row.block.id.serial_start, row.block.id.serial_end)]:
            continue
        others = [(_spelled(h.block.id), h.account, h.status.value) for h in shown]
        found.append(
            Discrepancy(
                registry="verra",
                phase=UNIT_BLOCKS,
                detail=(
                    f"ledger has {_spelled(row.block.id)} {row.status.value} at "
                    f"verra/{row.account}; verra shows {others}"
                ),
                program=Program.VCS,
                status=row.status,
                gateway_quantity=row.block.quantity,
                registry_quantity=sum(e - s + 1 for s, e in spans),
                block=row.block.id,
                differing=_serial_by_serial_gaps(row.block.id, held),
            )
        )
    return found


def _serial_by_serial_gaps(block: BlockId, held: Sequence[RegistryHolding]) -> tuple[BlockId, ...]:
    """The runs of ``block``'s serials no holding of ``held`` covers, found serial by serial."""
    covered = {
        serial for h in held for serial in range(h.block.id.serial_start, h.block.id.serial_end + 1)
    }
    gaps: list[BlockId] = []
    for serial in range(block.serial_start, block.serial_end + 1):
        if serial in covered:
            continue
        if gaps and gaps[-1].serial_end == serial - 1:
            last = gaps.pop()
            gaps.append(BlockId(last.program, last.serial_series, last.serial_start, serial))
        else:
            gaps.append(BlockId(block.program, block.serial_series, serial, serial))
    return tuple(gaps)


@settings(max_examples=300, deadline=None)
@given(st.lists(runs, max_size=8), st.lists(runs, max_size=12))
def test_each_block_is_compared_with_exactly_the_holdings_sharing_a_serial_with_it(
    ledger_runs: list[Run], registry_runs: list[Run]
) -> None:
    # Listed holdings may overlap one another here (a registry's live ones do not), so
    # long blocks reaching past shorter later ones are looked up too.
    rows = [
        LedgerHolding(n, block, "verra", account, status, False, block.id)
        for n, (start, length, account, status, series) in enumerate(ledger_runs)
        for block in [_block(start, length, series)]
    ]
    listing = [
        RegistryHolding(_block(start, length, series), account, status)
        for start, length, account, status, series in registry_runs
    ]
    assert compare_blocks(rows, {"verra": listing}) == _asked_block_by_block(rows, listing)


def test_rows_at_a_registry_not_read_are_not_compared() -> None:
    block = _block(1, 10, "")
    row = LedgerHolding(1, block, "verra", "a", HoldingStatus.ACTIVE, False, block.id)
    assert compare_blocks([row], {}) == []
    assert [d.registry_quantity for d in compare_blocks([row], {"verra": []})] == [0]
