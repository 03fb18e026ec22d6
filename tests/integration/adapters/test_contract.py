"""One contract for every registry adapter, run against its emulator over real gRPC.

The same tests run for every registry in ``adapters.registry.REGISTRIES``: issuance,
block status, lock with expiry, unlock, finalize, credit, retire, cancel, surrender,
holdings and totals, idempotency on the operation id, the refusals every registry keeps,
and splitting on partial operations; then the same flows with faults injected, where the
adapter's retries must end with exactly one effect.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest

from adapters.emulator_core import CreditMode, FaultConfig
from adapters.registry import REGISTRIES
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import (
    BlockStatusRequest,
    CancelRequest,
    CreditRequest,
    FinalizeDisposition,
    FinalizeRequest,
    IssueRequest,
    ListHoldingsRequest,
    LockRequest,
    ProgramTotal,
    RegistryHolding,
    RetireRequest,
    SurrenderRequest,
    UnlockRequest,
)
from tests.integration.adapters.conftest import (
    ALL_REGISTRIES,
    FOREIGN_BLOCK,
    Harness,
    later,
    start_harness,
)

ACCOUNT = "ACC-1"
OTHER = "ACC-2"

# Registries whose own programs include compliance units that are surrendered.
SURRENDERING = {"national", "shenzhen", "guangdong"}


def sub(block_id: BlockId, start: int, end: int) -> BlockId:
    """A sub-range of ``block_id``."""
    return BlockId(block_id.program, block_id.serial_series, start, end)


def statuses(holdings: Sequence[RegistryHolding]) -> dict[tuple[int, int], HoldingStatus]:
    """Range -> status of each holding."""
    return {(h.block.id.serial_start, h.block.id.serial_end): h.status for h in holdings}


def total_of(totals: Sequence[ProgramTotal]) -> Counter[tuple[str, HoldingStatus]]:
    """Totals as a counter keyed by (program, status)."""
    return Counter({(t.program.value, t.status): t.quantity for t in totals})


def rejected(code: str) -> pytest.RaisesExc[RegistryRejected]:
    """Expect a rejection with the registry's own ``code``."""
    return pytest.raises(RegistryRejected, match=rf"\({code}\)")


def issue(h: Harness, start: int, end: int, account: str = ACCOUNT) -> RegistryHolding:
    return h.adapter.issue(IssueRequest(h.op("issue"), account, h.block(start, end)))


# -- issuance, status, holdings, totals -------------------------------------------------


def test_issue_reports_the_block_as_issued(harness: Harness) -> None:
    block = harness.block(1001, 2000)
    holding = harness.adapter.issue(IssueRequest(harness.op(), ACCOUNT, block))

    assert holding.block == block
    assert (holding.account, holding.status) == (ACCOUNT, HoldingStatus.ACTIVE)
    assert list(harness.adapter.block_status(BlockStatusRequest(block.id))) == [holding]
    assert list(harness.adapter.list_holdings(ListHoldingsRequest(ACCOUNT))) == [holding]
    assert list(harness.adapter.list_holdings(ListHoldingsRequest(OTHER))) == []
    assert total_of(harness.adapter.totals()) == Counter(
        {(block.program.value, HoldingStatus.ACTIVE): 1000}
    )


def test_duplicate_and_overlapping_issuance_are_refused(harness: Harness) -> None:
    issue(harness, 1001, 2000)
    with rejected("DUPLICATE_ISSUANCE"):
        issue(harness, 1001, 2000)
    with rejected("DUPLICATE_ISSUANCE"):
        issue(harness, 1500, 2500, account=OTHER)
    issue(harness, 2001, 2100)
    assert sum(t.quantity for t in harness.adapter.totals()) == 1100


def test_same_operation_twice_has_one_effect_and_one_result(harness: Harness) -> None:
    request = IssueRequest("issue-once", ACCOUNT, harness.block(1001, 2000))
    first = harness.adapter.issue(request)
    assert harness.adapter.issue(request) == first

    lock = LockRequest("lock-once", ACCOUNT, sub(first.block.id, 1001, 1100), later(harness), "T1")
    locked = harness.adapter.lock(lock)
    assert harness.adapter.lock(lock) == locked
    assert (
        total_of(harness.adapter.totals())[(first.block.program.value, HoldingStatus.LOCKED)] == 100
    )

    # A refused operation stays refused when repeated, even once the refusal's cause is gone.
    retire = RetireRequest("retire-locked", ACCOUNT, locked.block.id, "Acme", "FY2025")
    with rejected("UNITS_LOCKED"):
        harness.adapter.retire(retire)
    harness.adapter.unlock(UnlockRequest(harness.op(), ACCOUNT, locked.block.id, "T1"))
    with rejected("UNITS_LOCKED"):
        harness.adapter.retire(retire)


def test_operation_id_reused_for_another_request_is_refused(harness: Harness) -> None:
    harness.adapter.issue(IssueRequest("op-A", ACCOUNT, harness.block(1001, 2000)))
    with rejected("OPERATION_ID_REUSED"):
        harness.adapter.issue(IssueRequest("op-A", ACCOUNT, harness.block(3001, 4000)))
    assert sum(t.quantity for t in harness.adapter.totals()) == 1000


# -- lock, unlock, expiry, splits ----------------------------------------------------------


def test_partial_lock_splits_and_unlock_restores_one_block(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    part = sub(held.block.id, 1201, 1300)
    expiry = later(harness)
    locked = harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, expiry, "T1"))

    assert locked.block.id == part
    assert locked.status is HoldingStatus.LOCKED
    assert locked.lock_expires_at == expiry
    assert locked.block == held.block.with_range(1201, 1300)
    pieces = harness.adapter.block_status(BlockStatusRequest(held.block.id))
    assert statuses(pieces) == {
        (1001, 1200): HoldingStatus.ACTIVE,
        (1201, 1300): HoldingStatus.LOCKED,
        (1301, 2000): HoldingStatus.ACTIVE,
    }
    assert sum(p.block.quantity for p in pieces) == held.block.quantity

    with rejected("UNITS_LOCKED"):
        harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, expiry, "T2"))
    with rejected("LOCK_TRANSFER_MISMATCH"):
        harness.adapter.unlock(UnlockRequest(harness.op(), ACCOUNT, part, "T2"))

    unlocked = harness.adapter.unlock(UnlockRequest(harness.op(), ACCOUNT, part, "T1"))
    assert unlocked.status is HoldingStatus.ACTIVE
    assert list(harness.adapter.block_status(BlockStatusRequest(held.block.id))) == [held]


def test_a_lock_expires(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    part = sub(held.block.id, 1001, 1500)
    harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness, 10), "T1"))
    harness.clock.advance(timedelta(minutes=11))

    assert statuses(harness.adapter.block_status(BlockStatusRequest(held.block.id))) == {
        (1001, 2000): HoldingStatus.ACTIVE
    }
    with rejected("UNITS_NOT_LOCKED"):
        harness.adapter.finalize(
            FinalizeRequest(
                harness.op(), ACCOUNT, part, FinalizeDisposition.IMMOBILIZE, "T1", "national"
            )
        )


def test_a_lock_needs_a_future_expiry(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    with rejected("LOCK_EXPIRY_IN_PAST"):
        harness.adapter.lock(
            LockRequest(harness.op(), ACCOUNT, held.block.id, later(harness, -1), "T1")
        )


def test_units_not_held_by_the_account_do_not_move(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    with rejected("UNITS_NOT_HELD"):
        harness.adapter.lock(LockRequest(harness.op(), OTHER, held.block.id, later(harness), "T1"))
    with rejected("UNITS_NOT_FOUND"):
        harness.adapter.retire(
            RetireRequest(harness.op(), ACCOUNT, sub(held.block.id, 5001, 5002), "Acme", "")
        )


# -- finalize and credit -----------------------------------------------------------------


def test_finalize_immobilize_then_the_units_come_back(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    part = sub(held.block.id, 1001, 1400)
    harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness), "T1"))
    bridged = harness.adapter.finalize(
        FinalizeRequest(harness.op(), ACCOUNT, part, FinalizeDisposition.IMMOBILIZE, "T1", "x")
    )
    assert (bridged.block.id, bridged.status) == (part, HoldingStatus.BRIDGED)
    # Immobilized units cannot move; they can only come back (below) or end with their
    # mirror (retiring a mirror retires its origin: see the next test).
    with rejected("UNITS_IMMOBILIZED"):
        harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness), "T2"))

    # The mirror elsewhere is returned: the immobilized units are active again.
    back = harness.adapter.credit(
        CreditRequest(harness.op(), OTHER, held.block.with_range(1001, 1400), "x", "T9")
    )
    assert (back.block.id, back.account, back.status) == (part, OTHER, HoldingStatus.ACTIVE)
    assert statuses(harness.adapter.list_holdings(ListHoldingsRequest())) == {
        (1001, 1400): HoldingStatus.ACTIVE,
        (1401, 2000): HoldingStatus.ACTIVE,
    }


def test_retiring_immobilized_units_ends_them(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    part = sub(held.block.id, 1001, 1400)
    harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness), "T1"))
    harness.adapter.finalize(
        FinalizeRequest(harness.op(), ACCOUNT, part, FinalizeDisposition.IMMOBILIZE, "T1", "x")
    )
    retired = harness.adapter.retire(RetireRequest(harness.op(), ACCOUNT, part, "Acme", "claim"))
    assert (retired.block.id, retired.status) == (part, HoldingStatus.RETIRED)
    with rejected("UNITS_RETIRED"):
        harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness), "T3"))


def test_finalize_export_takes_the_units_off_the_registry(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    part = sub(held.block.id, 1901, 2000)
    harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness), "T1"))
    with rejected("LOCK_TRANSFER_MISMATCH"):
        harness.adapter.finalize(
            FinalizeRequest(harness.op(), ACCOUNT, part, FinalizeDisposition.EXPORT, "T2", "x")
        )
    exported = harness.adapter.finalize(
        FinalizeRequest(harness.op(), ACCOUNT, part, FinalizeDisposition.EXPORT, "T1", "x")
    )
    assert (exported.block.id, exported.status) == (part, HoldingStatus.EXPORTED)
    assert exported.status.is_terminal
    assert statuses(harness.adapter.list_holdings(ListHoldingsRequest(ACCOUNT))) == {
        (1001, 1900): HoldingStatus.ACTIVE
    }
    assert sum(t.quantity for t in harness.adapter.totals()) == 900
    with rejected("UNITS_EXPORTED"):
        harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, part, later(harness), "T3"))


def test_units_delivered_out_and_back_move_again(harness: Harness) -> None:
    """A venue position exported to another registry and returned is held (and used) again."""
    origin_registry, origin = FOREIGN_BLOCK[harness.registry_id]
    if REGISTRIES[harness.registry_id].emulator().credit_mode is not CreditMode.HOLD:
        pytest.skip("only a venue holds foreign units as they are")
    harness.adapter.credit(CreditRequest(harness.op(), ACCOUNT, origin, origin_registry, "T1"))
    harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, origin.id, later(harness), "T2"))
    harness.adapter.finalize(
        FinalizeRequest(harness.op(), ACCOUNT, origin.id, FinalizeDisposition.EXPORT, "T2", "x")
    )
    back = harness.adapter.credit(CreditRequest(harness.op(), OTHER, origin, origin_registry, "T3"))
    assert (back.account, back.status) == (OTHER, HoldingStatus.ACTIVE)
    part = sub(origin.id, origin.id.serial_start, origin.id.serial_start)
    retired = harness.adapter.retire(RetireRequest(harness.op(), OTHER, part, "Acme", "claim"))
    assert retired.status is HoldingStatus.RETIRED


def test_credit_of_foreign_units(harness: Harness) -> None:
    origin_registry, origin = FOREIGN_BLOCK[harness.registry_id]
    request = CreditRequest(harness.op(), ACCOUNT, origin, origin_registry, "T7")
    mode = REGISTRIES[harness.registry_id].emulator().credit_mode
    if mode is CreditMode.RETURN_ONLY:
        with rejected("FOREIGN_UNITS_NOT_ACCEPTED"):
            harness.adapter.credit(request)
        assert list(harness.adapter.list_holdings(ListHoldingsRequest())) == []
        return

    credited = harness.adapter.credit(request)
    assert harness.adapter.credit(request) == credited
    assert (credited.account, credited.status) == (ACCOUNT, HoldingStatus.ACTIVE)
    assert credited.block.project_id == origin.project_id
    assert credited.block.vintage_start == origin.vintage_start
    if mode is CreditMode.MIRROR:
        # A mirror: local serials of its own that name the origin block.
        assert credited.mirror_of == origin.id
        assert credited.mirror_origin_registry == origin_registry
        assert credited.block.program == origin.program
        assert credited.block.id != origin.id
        assert credited.block.quantity == origin.quantity
    else:
        assert credited.block == origin
        assert credited.mirror_of is None
    with pytest.raises(RegistryRejected, match=r"\(DUPLICATE_(MIRROR|CREDIT)\)"):
        harness.adapter.credit(CreditRequest(harness.op(), OTHER, origin, origin_registry, "T8"))

    # The credited units move like any other: part of them is retired.
    part = sub(
        credited.block.id, credited.block.id.serial_start, credited.block.id.serial_start + 9
    )
    retired = harness.adapter.retire(RetireRequest(harness.op(), ACCOUNT, part, "Acme", "claim"))
    assert retired.status is HoldingStatus.RETIRED
    if mode is CreditMode.MIRROR:
        assert retired.mirror_of == sub(
            origin.id, origin.id.serial_start, origin.id.serial_start + 9
        )
    assert list(harness.adapter.block_status(BlockStatusRequest(credited.block.id)))


def _bridged(h: Harness) -> RegistryHolding:
    """Units 1001-1400 of a fresh block, immobilized here (their mirror is elsewhere)."""
    held = issue(h, 1001, 2000)
    part = sub(held.block.id, 1001, 1400)
    h.adapter.lock(LockRequest(h.op(), ACCOUNT, part, later(h), "T1"))
    return h.adapter.finalize(
        FinalizeRequest(h.op(), ACCOUNT, part, FinalizeDisposition.IMMOBILIZE, "T1", "x")
    )


def test_a_credit_after_its_deadline_is_refused(harness: Harness) -> None:
    bridged = _bridged(harness)
    past = harness.clock() - timedelta(seconds=1)
    with rejected("DEADLINE_PASSED"):
        harness.adapter.credit(
            CreditRequest(harness.op(), OTHER, bridged.block, "x", "T9", deadline=past)
        )
    mode = REGISTRIES[harness.registry_id].emulator().credit_mode
    if mode is not CreditMode.RETURN_ONLY:
        origin_registry, origin = FOREIGN_BLOCK[harness.registry_id]
        with rejected("DEADLINE_PASSED"):
            harness.adapter.credit(
                CreditRequest(harness.op(), OTHER, origin, origin_registry, "T7", deadline=past)
            )
    # Nothing was credited: the returning units are still immobilized, nothing arrived.
    assert statuses(harness.adapter.list_holdings(ListHoldingsRequest())) == {
        (1001, 1400): HoldingStatus.BRIDGED,
        (1401, 2000): HoldingStatus.ACTIVE,
    }

    # Up to the deadline itself the credit is in time.
    back = harness.adapter.credit(
        CreditRequest(harness.op(), OTHER, bridged.block, "x", "T9", deadline=harness.clock())
    )
    assert (back.account, back.status) == (OTHER, HoldingStatus.ACTIVE)


def test_a_credit_applied_in_time_answers_its_repeat_after_the_deadline(harness: Harness) -> None:
    bridged = _bridged(harness)
    returning = CreditRequest(
        harness.op(), OTHER, bridged.block, "x", "T9", deadline=later(harness, 10)
    )
    first = harness.adapter.credit(returning)
    mode = REGISTRIES[harness.registry_id].emulator().credit_mode
    foreign: CreditRequest | None = None
    if mode is not CreditMode.RETURN_ONLY:
        origin_registry, origin = FOREIGN_BLOCK[harness.registry_id]
        foreign = CreditRequest(
            harness.op(), ACCOUNT, origin, origin_registry, "T7", deadline=later(harness, 10)
        )
        mirrored = harness.adapter.credit(foreign)
    before = statuses(harness.adapter.list_holdings(ListHoldingsRequest()))

    harness.clock.advance(timedelta(minutes=11))
    # The op log answers a repeat first: the credit stays applied, once.
    assert harness.adapter.credit(returning) == first
    if foreign is not None:
        assert harness.adapter.credit(foreign) == mirrored
    assert statuses(harness.adapter.list_holdings(ListHoldingsRequest())) == before
    # A new credit after the deadline is refused all the same.
    with rejected("DEADLINE_PASSED"):
        harness.adapter.credit(dataclasses.replace(returning, operation_id=harness.op("late")))


# -- terminal operations -----------------------------------------------------------------


def test_retired_and_cancelled_units_never_move(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    retired_part = sub(held.block.id, 1001, 1010)
    cancelled_part = sub(held.block.id, 1991, 2000)
    retired = harness.adapter.retire(
        RetireRequest(harness.op(), ACCOUNT, retired_part, "Acme Ltd", "FY2025 scope 1")
    )
    cancelled = harness.adapter.cancel(
        CancelRequest(harness.op(), ACCOUNT, cancelled_part, "issued in error")
    )
    assert (retired.status, cancelled.status) == (HoldingStatus.RETIRED, HoldingStatus.CANCELLED)

    with rejected("UNITS_RETIRED"):
        harness.adapter.retire(RetireRequest(harness.op(), ACCOUNT, retired_part, "Other", ""))
    with rejected("UNITS_RETIRED"):
        harness.adapter.lock(LockRequest(harness.op(), ACCOUNT, retired_part, later(harness), "T1"))
    with rejected("UNITS_CANCELLED"):
        harness.adapter.cancel(CancelRequest(harness.op(), ACCOUNT, cancelled_part, "again"))
    with rejected("UNITS_RETIRED"):
        # A range reaching into retired units is refused whole.
        harness.adapter.lock(
            LockRequest(harness.op(), ACCOUNT, sub(held.block.id, 1005, 1100), later(harness), "T")
        )
    program = held.block.program.value
    assert total_of(harness.adapter.totals()) == Counter(
        {
            (program, HoldingStatus.ACTIVE): 980,
            (program, HoldingStatus.RETIRED): 10,
            (program, HoldingStatus.CANCELLED): 10,
        }
    )


def test_surrender_for_compliance(harness: Harness) -> None:
    held = issue(harness, 1001, 2000)
    request = SurrenderRequest(harness.op(), ACCOUNT, sub(held.block.id, 1001, 1100), "E-9", 2025)
    if harness.registry_id not in SURRENDERING:
        with rejected("NOT_SUPPORTED"):
            harness.adapter.surrender(request)
        return
    surrendered = harness.adapter.surrender(request)
    assert surrendered.status is HoldingStatus.SURRENDERED
    assert harness.adapter.surrender(request) == surrendered
    with rejected("UNITS_SURRENDERED"):
        harness.adapter.retire(RetireRequest(harness.op(), ACCOUNT, request.block, "x", ""))


# -- faults: retries end with exactly one effect -------------------------------------------

FAULTS = {
    "unavailable": FaultConfig(unavailable_fraction=0.4, seed=7),
    "crash_after_commit": FaultConfig(crash_after_commit_fraction=0.4, seed=11),
    "duplicate_delivery": FaultConfig(duplicate_delivery_fraction=0.5, seed=13),
    "latency": FaultConfig(latency_ms=5, seed=17),
    "all": FaultConfig(
        latency_ms=1,
        unavailable_fraction=0.25,
        crash_after_commit_fraction=0.25,
        duplicate_delivery_fraction=0.25,
        seed=19,
    ),
}


@pytest.fixture(params=[(r, f) for r in ALL_REGISTRIES for f in FAULTS], ids=lambda p: "-".join(p))
def faulty(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """An emulator of each registry under each fault configuration."""
    registry_id, fault = request.param
    started = start_harness(registry_id, faults=FAULTS[fault])
    yield started
    started.running.stop(grace=None)


def test_flow_under_faults_has_exactly_one_effect_per_operation(faulty: Harness) -> None:
    h = faulty
    held = issue(h, 1001, 2000)
    issue(h, 3001, 3500, account=OTHER)
    program = held.block.program.value
    moving = sub(held.block.id, 1001, 1300)
    h.adapter.lock(LockRequest(h.op(), ACCOUNT, moving, later(h), "T1"))
    h.adapter.finalize(
        FinalizeRequest(h.op(), ACCOUNT, moving, FinalizeDisposition.IMMOBILIZE, "T1", "x")
    )
    staying = sub(held.block.id, 1301, 1400)
    h.adapter.lock(LockRequest(h.op(), ACCOUNT, staying, later(h), "T2"))
    h.adapter.unlock(UnlockRequest(h.op(), ACCOUNT, staying, "T2"))
    h.adapter.retire(RetireRequest(h.op(), ACCOUNT, sub(held.block.id, 1301, 1350), "Acme", ""))
    h.adapter.cancel(CancelRequest(h.op(), ACCOUNT, sub(held.block.id, 1951, 2000), "error"))
    with rejected("DUPLICATE_ISSUANCE"):
        issue(h, 1001, 1001)

    assert total_of(h.adapter.totals()) == Counter(
        {
            (program, HoldingStatus.ACTIVE): 600 + 500,
            (program, HoldingStatus.BRIDGED): 300,
            (program, HoldingStatus.RETIRED): 50,
            (program, HoldingStatus.CANCELLED): 50,
        }
    )
    assert statuses(h.adapter.list_holdings(ListHoldingsRequest(ACCOUNT))) == {
        (1001, 1300): HoldingStatus.BRIDGED,
        (1301, 1350): HoldingStatus.RETIRED,
        (1351, 1950): HoldingStatus.ACTIVE,
        (1951, 2000): HoldingStatus.CANCELLED,
    }


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_crash_after_commit_keeps_the_effect_and_the_retry_gets_the_first_result(
    registry_id: str,
) -> None:
    h = start_harness(registry_id, faults=FaultConfig(crash_after_commit_fraction=1.0))
    try:
        bare = h.adapter.inner  # type: ignore[attr-defined]
        # NOTE(registry-adapters): build_adapter returns the retrying wrapper; the test
        # reaches through it to see a single lost reply.
        request = IssueRequest("issue-crash", ACCOUNT, h.block(1001, 2000))
        with pytest.raises(RegistryUnavailable):
            bare.issue(request)
        assert h.running.store.holdings(ACCOUNT)[0].block == request.block
        op = h.running.store.operation("issue-crash")
        assert op is not None and op.holding is not None
        assert op.holding.block == request.block
    finally:
        h.running.stop(grace=None)
