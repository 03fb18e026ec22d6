"""Races: many threads move overlapping blocks at once; exactly one wins each conflict.

Each thread has its own Bridge (as separate gateway processes would, each with its own
lease owner) over one database and the same registries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db, ledger
from registry_bridge.bridge import Bridge, _Submission
from registry_bridge.errors import LedgerConflict, RequestIdConflict
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.transfers import (
    AccountRef,
    Transfer,
    TransferInstruction,
    TransferState,
    UseRequest,
)
from tests.integration.bridge.conftest import PermitAllRules, World, vcs_block

THREADS = 8
LOSERS = {TransferState.REJECTED, TransferState.ROLLED_BACK}


def _gateways(world: World) -> list[Bridge]:
    return [
        Bridge(world.sessions, world.ports, PermitAllRules(), clock=world.clock, owner=f"gw-{i}")
        for i in range(THREADS)
    ]


def _race(world: World, ranges: list[BlockId], label: str) -> list[tuple[BlockId, Transfer]]:
    """Submit one transfer per range from its own gateway, all released at once."""
    gateways = _gateways(world)
    start = threading.Barrier(len(ranges))

    def submit(i: int) -> str:
        instruction = TransferInstruction(
            AccountRef("verra", "dev-1"), AccountRef("national", f"buyer-{i}"), (ranges[i],)
        )
        start.wait()
        try:
            return gateways[i].submit(f"{label}-{i}", instruction).transfer_id
        except LedgerConflict:
            # The documented answer to a lost race: the caller may retry.  The transfer
            # itself stays PROPOSED; resume_unfinished below must settle it.
            return ""

    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(submit, range(len(ranges))))
    # Settle anything a lost race left unfinished (what a gateway does periodically).
    world.bridge.resume_unfinished()
    transfers, _ = world.bridge.list_transfers(None, 1000)
    mine = {t.request_id: t for t in transfers if t.request_id.startswith(f"{label}-")}
    assert len(mine) == len(ranges)
    return [(ranges[i], mine[f"{label}-{i}"]) for i in range(len(ranges))]


def _one_winner_per_conflict(outcomes: list[tuple[BlockId, Transfer]]) -> None:
    for _, transfer in outcomes:
        assert transfer.state is TransferState.COMPLETED or transfer.state in LOSERS, (
            transfer.state,
            transfer.failure_reason,
        )
    winners = [(b, t) for b, t in outcomes if t.state is TransferState.COMPLETED]
    assert winners, "someone must win"
    for i, (block, _) in enumerate(winners):
        for other, _ in winners[i + 1 :]:
            assert not block.overlaps(other), f"{block} and {other} both moved"
    # Every loser lost to a winner overlapping it (not to a spurious failure).
    for block, transfer in outcomes:
        if transfer.state in LOSERS:
            assert any(block.overlaps(w) for w, _ in winners), (block, transfer.failure_reason)


def _check(world: World) -> None:
    assert world.violations() == []
    # Each winner's units are a mirror now; no loser left anything locked.
    assert all(h.status.value != "locked" for h in world.live())


def test_same_whole_block_one_winner(world: World) -> None:
    """Every thread asks for the very same block: no split, so nothing but the row's status
    tells the threads apart.  Three rounds, so the race is met for sure."""
    for round_ in range(3):
        block = vcs_block(1 + 100 * round_, 100 * (round_ + 1))
        world.seed("verra", "dev-1", block)
        outcomes = _race(world, [block.id] * THREADS, f"same-{round_}")
        _one_winner_per_conflict(outcomes)
        _check(world)


def test_overlapping_blocks_one_winner_per_conflict(world: World) -> None:
    """Each thread's block overlaps its neighbours': pieces split off under the race."""
    world.seed("verra", "dev-1", vcs_block(1, 100))
    ranges = [BlockId(Program.VCS, "", 1 + 7 * i, 20 + 7 * i) for i in range(THREADS)]
    outcomes = _race(world, ranges, "overlap")
    _one_winner_per_conflict(outcomes)
    _check(world)


_AT = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def issued(database_url: str) -> Iterator[tuple[sessionmaker[Session], UnitBlock]]:
    """Sessions on PostgreSQL whose ledger holds VCS 1-100 at verra/dev-1.

    On SQLite two transactions cannot interleave (every one is BEGIN IMMEDIATE), so the
    races below cannot happen there, and only PostgreSQL can show them.
    """
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serializes whole transactions: no write can fall inside another")
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        block = vcs_block(1, 100)
        with db.unit_of_work(sessions) as session:
            ledger.issue(session, "verra", "dev-1", block, _AT)
        yield sessions, block
    finally:
        engine.dispose()


def test_ledger_change_refuses_a_stale_holding(
    issued: tuple[sessionmaker[Session], UnitBlock],
) -> None:
    """The root cause of the race above, made deterministic with two sessions.

    Gateway A reads a holding (active); gateway B locks it and commits; A then changes
    the holding it read.  ``ledger.change`` must refuse (LedgerConflict): the row is no
    longer what A planned from.
    """
    sessions, block = issued
    with sessions() as a, a.begin():
        (read_by_a,) = ledger.require_holding(a, "verra", "dev-1", block.id)
        with db.unit_of_work(sessions) as b:
            (read_by_b,) = ledger.require_holding(b, "verra", "dev-1", block.id)
            ledger.change(
                b, read_by_b, "lock", _AT, status=HoldingStatus.LOCKED, lock_transfer_id="t-b"
            )
        with pytest.raises(LedgerConflict):
            ledger.change(
                a, read_by_a, "lock", _AT, status=HoldingStatus.LOCKED, lock_transfer_id="t-a"
            )


def test_a_row_ended_between_the_ledgers_two_reads_is_a_conflict_not_missing_units(
    issued: tuple[sessionmaker[Session], UnitBlock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup reads the ids of the live rows, then the rows. Gateway B splits the row
    in between and commits: A must meet a conflict (and retry), not conclude that the
    units are not in the ledger (a spurious rejection, seen once under the race above).
    """
    sessions, block = issued
    run_plain = db.run_plain
    split = threading.Event()

    def then_b_splits(session: Any, statement: Any, params: Any) -> Any:
        rows = run_plain(session, statement, params)
        if statement is ledger._OVERLAP and not split.is_set():
            split.set()
            with db.unit_of_work(sessions) as b:
                (held,) = ledger.require_holding(b, "verra", "dev-1", block.id)
                ledger.carve(b, held, BlockId(Program.VCS, "", 1, 10), _AT)
        return rows

    monkeypatch.setattr("registry_bridge.ledger.run_plain", then_b_splits)
    with sessions() as a, a.begin(), pytest.raises(LedgerConflict, match="concurrent"):
        ledger.require_holding(a, "verra", "dev-1", BlockId(Program.VCS, "", 1, 20))
    assert split.is_set()
    monkeypatch.setattr("registry_bridge.ledger.run_plain", run_plain)
    # Read again, the ledger has every unit, in the pieces B left.
    with db.unit_of_work(sessions) as a:
        pieces = ledger.require_holding(a, "verra", "dev-1", BlockId(Program.VCS, "", 1, 20))
        assert [(h.block.id.serial_start, h.block.id.serial_end) for h in pieces] == [
            (1, 10),
            (11, 100),
        ]


def test_concurrent_submissions_to_one_gateway_share_rounds_and_keep_their_answers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single submissions to one gateway at once are settled together (group commit); each
    still gets its own answer: a repeated request its first transfer, a request id reused
    for another body its own refusal, the others their completed transfer."""
    world.seed("verra", "dev-1", vcs_block(1, 100))
    start = threading.Barrier(THREADS)

    def instruction(i: int) -> TransferInstruction:
        return TransferInstruction(
            AccountRef("verra", "dev-1"),
            AccountRef("national", f"buyer-{i}"),
            (BlockId(Program.VCS, "", 1 + 10 * i, 10 + 10 * i),),
        )

    # Threads 0 and 1 send the same request; 2 and 3 one request id with two bodies.
    submissions = [("same", instruction(0)), ("same", instruction(0))]
    submissions += [("reused", instruction(2)), ("reused", instruction(3))]
    submissions += [(f"own-{i}", instruction(i)) for i in range(4, THREADS)]

    # A round reads back at most once, for all its submissions together (those it saw
    # to their end from its own steps, not at all).
    rounds: list[int] = []
    reads: list[int] = []
    settle, read = world.bridge._settle, world.bridge._get_many

    def counted_settle(
        group: Sequence[_Submission],
    ) -> tuple[list[str | Exception], dict[str, Transfer]]:
        rounds.append(len(group))
        return settle(group)

    def counted_read(transfer_ids: Sequence[str]) -> dict[str, Transfer]:
        reads.append(len(transfer_ids))
        return read(transfer_ids)

    monkeypatch.setattr(world.bridge, "_settle", counted_settle)
    monkeypatch.setattr(world.bridge, "_get_many", counted_read)

    def submit(i: int) -> Transfer | RequestIdConflict:
        start.wait()
        try:
            return world.bridge.submit(*submissions[i])
        except RequestIdConflict as exc:
            return exc

    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(submit, range(THREADS)))
    assert sum(rounds) == THREADS
    assert len(reads) <= len(rounds)

    first, second = answers[0], answers[1]
    assert isinstance(first, Transfer) and isinstance(second, Transfer)
    assert first.transfer_id == second.transfer_id
    reused = answers[2:4]
    assert sorted(type(a).__name__ for a in reused) == ["RequestIdConflict", "Transfer"]
    for answer in [first, *[a for a in reused if isinstance(a, Transfer)], *answers[4:]]:
        assert isinstance(answer, Transfer)
        assert answer.state is TransferState.COMPLETED, answer.failure_reason
    transfers, _ = world.bridge.list_transfers(None, 100)
    assert len(transfers) == 1 + 1 + (THREADS - 4)  # one per distinct request id
    _check(world)


def test_concurrent_retirements_of_parts_of_one_holding_all_complete(world: World) -> None:
    # Each carves its part out of the same row: all but one lose the race for the row,
    # and each starts again on the rows as they are, instead of failing its caller.
    world.seed("verra", "dev-1", vcs_block(1, 1000))
    gateways = _gateways(world)
    owner = AccountRef("verra", "dev-1")
    start = threading.Barrier(THREADS)

    def retire(i: int) -> str:
        part = BlockId(Program.VCS, "", 1 + i * 100, 100 + i * 100)
        request = UseRequest("retirement", owner, (part,), beneficiary=f"B{i}")
        start.wait()
        return gateways[i].use(f"retire-{i}", request).state

    with ThreadPoolExecutor(THREADS) as pool:
        states = list(pool.map(retire, range(THREADS)))
    assert states == ["completed"] * THREADS
    with db.read_only(world.sessions) as session:
        retired = [
            h.block.id
            for h in ledger.origin_rows(session, BlockId(Program.VCS, "", 1, 1000))
            if h.status is HoldingStatus.RETIRED
        ]
    assert sum(b.quantity for b in retired) == THREADS * 100
    assert world.violations() == []
