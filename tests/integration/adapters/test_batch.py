"""The batched settlement steps (``lock_many``, ``finalize_many``, ``credit_many``) of every
registry adapter, against its emulator over real gRPC.

The central check runs the same scenario twice, on two emulators of the same registry
with the same clock: once through single calls, once through batches.  Every item's
result (holding, or refusal code and message) and every registry state after each step
must be the same, which is the port's contract: a batch item is its single call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import TypeVar

import grpc
import pytest

from adapters._pb.registries.verra.v1 import verra_pb2 as verra_pb
from adapters._pb.registries.verra.v1 import verra_pb2_grpc as verra_grpc
from adapters.client_core import BATCH_MAX_ITEMS, REJECTION_CODE_KEY
from adapters.emulator_core import BATCH_ITEMS_CAP, FaultConfig
from adapters.retry import RetryingRegistry, RetryPolicy
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId
from registry_bridge.port import (
    CreditRequest,
    FinalizeDisposition,
    FinalizeRequest,
    IssueRequest,
    ListHoldingsRequest,
    LockRequest,
    RegistryHolding,
    RegistryPort,
    RetireRequest,
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

Req = TypeVar("Req")
Outcome = RegistryHolding | tuple[str, str]
"""A holding, or a refusal as (code, message) (exceptions do not compare by value)."""


def outcome(result: RegistryHolding | RegistryRejected) -> Outcome:
    """A result in a form that compares by value."""
    if isinstance(result, RegistryRejected):
        return (result.code, str(result))
    return result


def singly(call: Callable[[Req], RegistryHolding], requests: Sequence[Req]) -> list[Outcome]:
    """The outcomes of single calls, one per request, in order."""
    outcomes: list[Outcome] = []
    for request in requests:
        try:
            outcomes.append(call(request))
        except RegistryRejected as refusal:
            outcomes.append(outcome(refusal))
    return outcomes


def sub(block_id: BlockId, start: int, end: int) -> BlockId:
    """A sub-range of ``block_id``."""
    return dataclasses.replace(block_id, serial_start=start, serial_end=end)


def bare(adapter: RegistryPort) -> RegistryPort:
    """The client under the retrying wrapper ``build_adapter`` returns."""
    assert isinstance(adapter, RetryingRegistry)
    return adapter.inner


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The batches of one settlement round, with refusals of every kind mixed in."""

    locks: list[LockRequest]
    finalizes: list[FinalizeRequest]
    credits: list[CreditRequest]


def seed(h: Harness) -> BlockId:
    """Issue the scenario's units: 1001-2000 (1901-1950 retired) and 3001-3500 elsewhere."""
    held = h.adapter.issue(IssueRequest("seed-1", ACCOUNT, h.block(1001, 2000))).block.id
    h.adapter.issue(IssueRequest("seed-2", OTHER, h.block(3001, 3500)))
    h.adapter.retire(RetireRequest("seed-3", ACCOUNT, sub(held, 1901, 1950), "Acme", "FY25"))
    return held


def scenario(h: Harness, held: BlockId) -> Scenario:
    """The scenario over ``held`` (the same requests for both emulators of a pair)."""
    expires = later(h)
    foreign_registry, foreign = FOREIGN_BLOCK[h.registry_id]
    immobilized = h.block(1001, 1100)
    return Scenario(
        locks=[
            LockRequest("lock-1", ACCOUNT, sub(held, 1001, 1100), expires, "T1"),
            # Sees the item before it: those units are locked now.
            LockRequest("lock-2", ACCOUNT, sub(held, 1050, 1060), expires, "T9"),
            LockRequest("lock-3", ACCOUNT, sub(held, 9001, 9010), expires, "T9"),
            LockRequest("lock-4", ACCOUNT, sub(held, 1901, 1950), expires, "T9"),
            LockRequest("lock-5", ACCOUNT, sub(held, 1201, 1300), h.clock() - timedelta(1), "T9"),
            LockRequest("lock-6", ACCOUNT, sub(held, 3001, 3010), expires, "T9"),
            # The id of lock-1 for another request, then lock-1 itself again.
            LockRequest("lock-1", ACCOUNT, sub(held, 1301, 1400), expires, "T1"),
            LockRequest("lock-1", ACCOUNT, sub(held, 1001, 1100), expires, "T1"),
            LockRequest("", ACCOUNT, sub(held, 1401, 1500), expires, "T9"),
            LockRequest("lock-8", ACCOUNT, foreign.id, expires, "T9"),
            LockRequest("lock-9", ACCOUNT, sub(held, 1101, 1200), expires, "T2"),
        ],
        finalizes=[
            FinalizeRequest(
                "fin-1", ACCOUNT, sub(held, 1001, 1100), FinalizeDisposition.IMMOBILIZE, "T1", "x"
            ),
            FinalizeRequest(
                "fin-2", ACCOUNT, sub(held, 1101, 1200), FinalizeDisposition.EXPORT, "T8", "x"
            ),
            FinalizeRequest(
                "fin-3", ACCOUNT, sub(held, 1201, 1300), FinalizeDisposition.EXPORT, "T2", "x"
            ),
            FinalizeRequest(
                "fin-4", ACCOUNT, sub(held, 1101, 1200), FinalizeDisposition.EXPORT, "T2", "x"
            ),
            FinalizeRequest(
                "fin-5", ACCOUNT, sub(held, 1001, 1100), FinalizeDisposition.IMMOBILIZE, "T1", "x"
            ),
        ],
        credits=[
            CreditRequest("cred-1", OTHER, foreign, foreign_registry, "T5", later(h)),
            CreditRequest("cred-2", OTHER, foreign, foreign_registry, "T6", later(h)),
            CreditRequest("cred-3", OTHER, immobilized, "x", "T7", h.clock() - timedelta(1)),
            # The immobilized units coming back (their mirror was returned).
            CreditRequest("cred-4", OTHER, immobilized, "x", "T7", later(h)),
        ],
    )


def state(port: RegistryPort) -> tuple[list[RegistryHolding], list[object]]:
    """Everything a registry reports: holdings and totals."""
    return list(port.list_holdings(ListHoldingsRequest())), list(port.totals())


@pytest.fixture(params=ALL_REGISTRIES)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Harness, Harness]]:
    """Two fault-free emulators of one registry: one for single calls, one for batches."""
    single = start_harness(str(request.param))
    batched = start_harness(str(request.param))
    yield single, batched
    single.running.stop(grace=None)
    batched.running.stop(grace=None)


def test_every_batch_item_is_its_single_call(pair: tuple[Harness, Harness]) -> None:
    single, batched = pair
    plan = scenario(single, seed(single))
    assert scenario(batched, seed(batched)) == plan

    locked = [outcome(r) for r in batched.adapter.lock_many(plan.locks)]
    assert locked == singly(single.adapter.lock, plan.locks)
    assert state(batched.adapter) == state(single.adapter)
    finalized = [outcome(r) for r in batched.adapter.finalize_many(plan.finalizes)]
    assert finalized == singly(single.adapter.finalize, plan.finalizes)
    assert state(batched.adapter) == state(single.adapter)
    credited = [outcome(r) for r in batched.adapter.credit_many(plan.credits)]
    assert credited == singly(single.adapter.credit, plan.credits)
    assert state(batched.adapter) == state(single.adapter)

    # The mix really is mixed: the good items went through, the bad ones were refused.
    codes = [o[0] if isinstance(o, tuple) else "ok" for o in locked]
    assert codes[:2] == ["ok", "UNITS_LOCKED"]
    assert codes[6:9] == ["OPERATION_ID_REUSED", "ok", "OPERATION_ID_REQUIRED"]
    assert codes[-1] == "ok" and locked[7] == locked[0]
    assert [o[0] if isinstance(o, tuple) else "ok" for o in finalized] == [
        "ok",
        "LOCK_TRANSFER_MISMATCH",
        "UNITS_NOT_LOCKED",
        "ok",
        "UNITS_IMMOBILIZED",
    ]
    assert [o[0] if isinstance(o, tuple) else "ok" for o in credited][2:] == [
        "DEADLINE_PASSED",
        "ok",
    ]


def test_a_repeated_batch_answers_its_first_results(harness: Harness) -> None:
    plan = scenario(harness, seed(harness))
    first = [outcome(r) for r in harness.adapter.lock_many(plan.locks)]
    assert isinstance(first[2], tuple) and first[2][0] == "UNITS_NOT_FOUND"
    # Even once the cause of a refusal is gone, the repeat answers it the same.
    missing = plan.locks[2].block
    harness.adapter.issue(
        IssueRequest("late", ACCOUNT, harness.block(missing.serial_start, missing.serial_end))
    )
    before = state(harness.adapter)
    assert [outcome(r) for r in harness.adapter.lock_many(plan.locks)] == first
    assert state(harness.adapter) == before

    finalized = [outcome(r) for r in harness.adapter.finalize_many(plan.finalizes)]
    credited = [outcome(r) for r in harness.adapter.credit_many(plan.credits)]
    after = state(harness.adapter)
    assert [outcome(r) for r in harness.adapter.finalize_many(plan.finalizes)] == finalized
    assert [outcome(r) for r in harness.adapter.credit_many(plan.credits)] == credited
    assert state(harness.adapter) == after


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_an_empty_batch_calls_nothing(registry_id: str) -> None:
    # Every call to this emulator fails: an empty batch answers without making one.
    h = start_harness(registry_id, faults=FaultConfig(unavailable_fraction=1.0))
    try:
        assert list(h.adapter.lock_many([])) == []
        assert list(h.adapter.finalize_many([])) == []
        assert list(h.adapter.credit_many([])) == []
    finally:
        h.running.stop(grace=None)


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_an_unreachable_registry_fails_the_whole_batch_as_unavailable(registry_id: str) -> None:
    h = start_harness(registry_id, faults=FaultConfig(unavailable_fraction=1.0))
    try:
        lock = LockRequest("lock-x", ACCOUNT, h.block(1001, 1010).id, later(h), "T1")
        with pytest.raises(RegistryUnavailable):
            bare(h.adapter).lock_many([lock])
        quick = RetryingRegistry(bare(h.adapter), RetryPolicy(attempts=3, initial_wait_s=0))
        with pytest.raises(RegistryUnavailable):
            quick.lock_many([lock])
        finalize = FinalizeRequest(
            "fin-x", ACCOUNT, lock.block, FinalizeDisposition.EXPORT, "T1", "x"
        )
        with pytest.raises(RegistryUnavailable):
            quick.finalize_many([finalize])
        with pytest.raises(RegistryUnavailable):
            quick.credit_many([CreditRequest("cred-x", ACCOUNT, h.block(1, 9), "x", "T1")])
        assert h.running.store.operation("lock-x") is None
    finally:
        h.running.stop(grace=None)


def _locks(h: Harness, held: BlockId, count: int, label: str = "lock") -> list[LockRequest]:
    """``count`` one-unit locks over the start of ``held``."""
    start = held.serial_start
    return [
        LockRequest(f"{label}-{i}", ACCOUNT, sub(held, start + i, start + i), later(h), f"T{i}")
        for i in range(count)
    ]


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_a_crash_mid_batch_keeps_a_prefix_and_the_retry_finishes_it(registry_id: str) -> None:
    h = start_harness(registry_id, faults=FaultConfig(crash_mid_batch_fraction=1.0, seed=3))
    try:
        held = h.adapter.issue(IssueRequest("seed", ACCOUNT, h.block(1001, 2000))).block.id
        locks = _locks(h, held, 40)
        with pytest.raises(RegistryUnavailable):
            bare(h.adapter).lock_many(locks)
        applied = [h.running.store.operation(lock.operation_id) is not None for lock in locks]
        # Committed item by item up to the crash: a prefix, never the whole batch.
        assert applied == sorted(applied, reverse=True) and not all(applied)
    finally:
        h.running.stop(grace=None)


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_a_reply_lost_after_commit_leaves_every_item_applied(registry_id: str) -> None:
    h = start_harness(registry_id, faults=FaultConfig(crash_after_commit_fraction=1.0))
    try:
        block = h.block(1001, 2000)
        h.running.store.issue("seed", ACCOUNT, block)
        locks = _locks(h, block.id, 5)
        with pytest.raises(RegistryUnavailable):
            bare(h.adapter).lock_many(locks)
        assert all(h.running.store.operation(lock.operation_id) for lock in locks)
    finally:
        h.running.stop(grace=None)


FAULTY = FaultConfig(
    unavailable_fraction=0.3,
    crash_after_commit_fraction=0.2,
    duplicate_delivery_fraction=0.3,
    crash_mid_batch_fraction=0.3,
    seed=23,
)


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_the_retry_wrapper_retries_a_batch_to_its_one_true_result(registry_id: str) -> None:
    single = start_harness(registry_id)
    faulty = start_harness(registry_id, faults=FAULTY)
    try:
        plan = scenario(single, seed(single))
        assert scenario(faulty, seed(faulty)) == plan
        assert [outcome(r) for r in faulty.adapter.lock_many(plan.locks)] == singly(
            single.adapter.lock, plan.locks
        )
        assert [outcome(r) for r in faulty.adapter.finalize_many(plan.finalizes)] == singly(
            single.adapter.finalize, plan.finalizes
        )
        assert [outcome(r) for r in faulty.adapter.credit_many(plan.credits)] == singly(
            single.adapter.credit, plan.credits
        )
        assert state(faulty.adapter) == state(single.adapter)
    finally:
        single.running.stop(grace=None)
        faulty.running.stop(grace=None)


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_a_batch_over_the_registry_cap_is_split_by_the_client(registry_id: str) -> None:
    h = start_harness(registry_id)
    try:
        block = h.block(100_001, 102_000)
        h.running.store.issue("seed", ACCOUNT, block)
        count = BATCH_ITEMS_CAP + 1
        assert count > BATCH_MAX_ITEMS
        results = h.adapter.lock_many(_locks(h, block.id, count))
        assert len(results) == count
        assert all(isinstance(r, RegistryHolding) for r in results)
        assert [r.block.id.serial_start for r in results if isinstance(r, RegistryHolding)] == [
            block.id.serial_start + i for i in range(count)
        ]
    finally:
        h.running.stop(grace=None)


def test_the_emulator_refuses_a_batch_over_its_cap_whole() -> None:
    h = start_harness("verra")
    try:
        block = h.block(1001, 3000)
        h.running.store.issue("seed", ACCOUNT, block)
        native = verra_pb.ImmobilizeBatchRequest(
            requests=[
                verra_pb.ImmobilizeRequest(
                    operation_id=f"lock-{i}",
                    account_id=ACCOUNT,
                    range=verra_pb.VcuRange(block_start=1001 + i, block_end=1001 + i),
                    hold_until=later(h).isoformat(),
                    hold_reference="T",
                )
                for i in range(BATCH_ITEMS_CAP + 1)
            ]
        )
        with grpc.insecure_channel(h.running.target) as channel:
            stub = verra_grpc.VerraRegistryStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.ImmobilizeBatch(native, timeout=30)
        assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (REJECTION_CODE_KEY, "BATCH_TOO_LARGE") in failed.value.trailing_metadata()
        assert h.running.store.operation("lock-0") is None
    finally:
        h.running.stop(grace=None)
