"""The invariant checker itself: each kind of corruption is reported under its invariant.

The other tests assert that the checker finds nothing; these show that it would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from registry_bridge import db, invariants
from registry_bridge.model import BlockId, Program
from registry_bridge.schema import LedgerBlock, LedgerEvent, LogHead, TransferRecord
from registry_bridge.transfers import AccountRef, TransferInstruction, TransferState, UseRequest
from tests.integration.bridge.conftest import World, make_world, vcs_block


@pytest.fixture
def moved(sqlite_url: str) -> Iterator[World]:
    """A world where VCS 1-20 of 1-50 were bridged from Verra to the national registry."""
    world = make_world(sqlite_url)
    try:
        world.seed("verra", "dev-1", vcs_block(1, 50))
        transfer = world.bridge.submit(
            "r1",
            TransferInstruction(
                AccountRef("verra", "dev-1"),
                AccountRef("national", "buyer"),
                (BlockId(Program.VCS, "", 1, 20),),
            ),
        )
        assert transfer.state is TransferState.COMPLETED
        assert world.violations() == []
        yield world
    finally:
        world.close()


def _tamper(world: World, statement: sa.Executable) -> None:
    with db.unit_of_work(world.sessions) as session:
        session.execute(statement)


def _tags(world: World) -> set[str]:
    return {v.split("]")[0] + "]" for v in world.violations()}


def test_an_origin_unbridged_behind_the_ledgers_back_is_caught(moved: World) -> None:
    _tamper(
        moved,
        sa.update(LedgerBlock).where(LedgerBlock.status == "bridged").values(status="active"),
    )
    tags = _tags(moved)
    # The mirror no longer fits its origin, the log does not replay to the ledger, and
    # Verra (which has the units immobilized) disagrees.
    assert {"[I1 mirror]", "[I5 replay]", "[I6 totals]", "[I6 blocks]"} <= tags


def test_lost_units_are_caught(moved: World) -> None:
    _tamper(moved, sa.update(LedgerBlock).where(LedgerBlock.serial_start == 21).values(live=False))
    assert {"[I1 conservation]", "[I5 replay]"} <= _tags(moved)


def test_overlapping_rows_are_caught(moved: World) -> None:
    _tamper(
        moved,
        sa.update(LedgerBlock).where(LedgerBlock.serial_start == 21).values(serial_start=15),
    )
    assert "[I2 overlap]" in _tags(moved)


def test_a_retired_row_revived_is_caught(moved: World) -> None:
    moved.bridge.use(
        "u1",
        UseRequest(
            "retirement",
            AccountRef("verra", "dev-1"),
            (BlockId(Program.VCS, "", 30, 40),),
            beneficiary="ACME",
        ),
    )
    with db.unit_of_work(moved.sessions) as session:
        earlier = invariants.snapshot(session)
    _tamper(
        moved, sa.update(LedgerBlock).where(LedgerBlock.status == "retired").values(status="active")
    )
    with db.unit_of_work(moved.sessions) as session:
        problems = invariants.check_unchanged(session, earlier)
    assert any(p.startswith("[I3 terminal]") for p in problems)


def test_a_final_transfer_moved_again_is_caught(moved: World) -> None:
    _tamper(moved, sa.update(TransferRecord).values(state=TransferState.ROLLED_BACK.value))
    assert "[I3 transfer]" in _tags(moved)


def test_a_tampered_or_missing_event_is_caught(moved: World) -> None:
    _tamper(moved, sa.update(LedgerEvent).where(LedgerEvent.idx == 0).values(payload=b"{}"))
    assert "[I5 log]" in _tags(moved)


def test_a_gap_in_the_log_is_caught(moved: World) -> None:
    _tamper(moved, sa.delete(LedgerEvent).where(LedgerEvent.idx == 1))
    problems = moved.violations()
    assert any("not dense" in p for p in problems)
    assert any("log head" in p for p in problems)
    _tamper(moved, sa.update(LogHead).values(size=LogHead.size + 5))
    assert any("log head" in p for p in moved.violations())
