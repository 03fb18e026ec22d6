"""The shared mechanics of batched registry calls, without a network.

Client side (``invoke_batch``): splitting, ordering, refusals kept in their slots, the
whole-call failures.  Emulator side (``Store.batch``, ``serve_batch``): one transaction
with every item isolated.  The retry wrapper: a batch is retried whole, on transient
failures only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, date, datetime, timedelta

import pytest

from adapters._pb.registries.verra.v1 import verra_pb2 as pb
from adapters.client_core import BATCH_ITEM_TIMEOUT_S, invoke_batch, item_refused
from adapters.emulator_core import BATCH_ITEMS_CAP, CreditMode, Rejection, Store, serve_batch
from adapters.retry import RetryingRegistry, RetryPolicy
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.port import (
    CreditRequest,
    FinalizeRequest,
    LockRequest,
    RegistryHolding,
    RegistryPort,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def block(start: int, end: int) -> UnitBlock:
    """A CCER block over ``start..end``."""
    return UnitBlock(
        id=BlockId(Program.CCER, "", start, end),
        project_id="P1",
        country="CN",
        vintage_start=date(2024, 1, 1),
        vintage_end=date(2024, 12, 31),
    )


def holding(start: int) -> RegistryHolding:
    """A one-unit holding, standing for a translated answer."""
    return RegistryHolding(block(start, start), "A", HoldingStatus.LOCKED)


class FakeRegistry:
    """A batch RPC that records its calls and answers per item by the item's serial."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.calls: list[tuple[list[int], float]] = []
        self.refuse = refuse

    def call(self, items: list[pb.VcuRange], timeout_s: float) -> list[pb.VcuBatchResult]:
        self.calls.append(([i.block_start for i in items], timeout_s))
        return [
            pb.VcuBatchResult(refusal=pb.VcuRefusal(code="UNITS_LOCKED", message="locked"))
            if item.block_start in self.refuse
            else pb.VcuBatchResult()
            for item in items
        ]


def to_native(serial: int) -> pb.VcuRange:
    if serial < 0:
        raise RegistryRejected("x", "NOT_SUPPORTED", f"cannot name {serial}")
    return pb.VcuRange(block_start=serial, block_end=serial)


def run(
    fake: FakeRegistry, serials: Sequence[int], max_items: int = 500, max_bytes: int = 1 << 20
) -> list[RegistryHolding | RegistryRejected]:
    answers = iter(serials)

    def from_native(result: pb.VcuBatchResult) -> RegistryHolding:
        serial = next(answers)
        while serial < 0:  # items refused before sending get no answer
            serial = next(answers)
        if result.HasField("refusal"):
            raise item_refused("x", result.refusal)
        return holding(serial)

    return invoke_batch(
        "x",
        serials,
        to_native=to_native,
        call=fake.call,
        from_native=from_native,
        timeout_s=1.0,
        max_items=max_items,
        max_bytes=max_bytes,
    )


def test_an_empty_batch_makes_no_call() -> None:
    fake = FakeRegistry()
    assert run(fake, []) == []
    assert fake.calls == []


def test_results_come_back_in_request_order_with_refusals_in_their_slots() -> None:
    fake = FakeRegistry(refuse=frozenset({2}))
    results = run(fake, [1, -5, 2, 3])
    assert results[0] == holding(1)
    assert isinstance(results[1], RegistryRejected) and results[1].code == "NOT_SUPPORTED"
    assert isinstance(results[2], RegistryRejected) and results[2].code == "UNITS_LOCKED"
    assert str(results[2]) == "registry x rejected the operation (UNITS_LOCKED): locked"
    assert results[3] == holding(3)
    # The item the adapter refused itself was never sent.
    assert [serials for serials, _ in fake.calls] == [[1, 2, 3]]


def test_a_long_batch_is_split_by_count_and_each_call_gets_time_per_item() -> None:
    fake = FakeRegistry()
    results = run(fake, list(range(1, 8)), max_items=3)
    assert results == [holding(s) for s in range(1, 8)]
    assert [serials for serials, _ in fake.calls] == [[1, 2, 3], [4, 5, 6], [7]]
    assert fake.calls[0][1] == pytest.approx(1.0 + 3 * BATCH_ITEM_TIMEOUT_S)
    assert fake.calls[2][1] == pytest.approx(1.0 + BATCH_ITEM_TIMEOUT_S)


def test_a_long_batch_is_split_by_size() -> None:
    fake = FakeRegistry()
    one = to_native(1).ByteSize()
    run(fake, [1, 2, 3, 4, 5], max_bytes=2 * one)
    assert [serials for serials, _ in fake.calls] == [[1, 2], [3, 4], [5]]


def test_a_reply_that_does_not_match_the_items_fails_the_call() -> None:
    def short(items: list[pb.VcuRange], timeout_s: float) -> list[pb.VcuBatchResult]:
        return []

    with pytest.raises(RegistryRejected, match=r"\(BATCH_REPLY_MISMATCH\)"):
        invoke_batch(
            "x",
            [1],
            to_native=to_native,
            call=short,
            from_native=lambda r: holding(1),
            timeout_s=1.0,
        )


def test_a_transport_failure_fails_the_whole_batch() -> None:
    def down(items: list[pb.VcuRange], timeout_s: float) -> list[pb.VcuBatchResult]:
        raise RegistryUnavailable("x", "UNAVAILABLE")

    with pytest.raises(RegistryUnavailable):
        invoke_batch(
            "x",
            [1, 2],
            to_native=to_native,
            call=down,
            from_native=lambda r: holding(1),
            timeout_s=1.0,
        )


# -- the emulator side ------------------------------------------------------------------


@pytest.fixture
def store() -> Store:
    return Store("national", frozenset({Program.CCER}), CreditMode.MIRROR, clock=lambda: NOW)


def test_a_batch_applies_every_item_and_records_refusals(store: Store) -> None:
    store.issue("issue", "A", block(1, 100))
    until = NOW + timedelta(hours=1)

    def lock(start: int) -> str:
        return store.lock(f"lock-{start}", "A", block(start, start + 9).id, until, "T").account

    def refuse(start: int, rejection: Rejection) -> str:
        return rejection.code

    assert serve_batch(store, [1, 5, 200, 11], lock, refuse) == [
        "A",
        "UNITS_LOCKED",
        "UNITS_NOT_FOUND",
        "A",
    ]
    # The refusal is the operation's recorded outcome, as for a single call.
    record = store.operation("lock-5")
    assert record is not None and record.rejection is not None
    assert record.rejection.code == "UNITS_LOCKED"


def test_an_item_that_fails_halfway_is_undone_alone(store: Store) -> None:
    def serve(start: int) -> str:
        # Two operations as one (atomic); the second one's bad value sinks both.
        with store.atomic():
            store.issue(f"issue-{start}", "A", block(start, start + 9))
            if start == 11:
                raise ValueError("bad native value")
        return "ok"

    def refuse(start: int, rejection: Rejection) -> str:
        return rejection.code

    assert serve_batch(store, [1, 11, 21], serve, refuse) == ["ok", "INVALID_REQUEST", "ok"]
    held = [(h.block.id.serial_start, h.block.id.serial_end) for h in store.holdings()]
    assert held == [(1, 10), (21, 30)]
    assert store.operation("issue-11") is None


def test_a_batch_that_raises_commits_nothing(store: Store) -> None:
    with pytest.raises(KeyError), store.batch():
        store.issue("issue-1", "A", block(1, 10))
        raise KeyError("crash before the commit")
    assert store.holdings() == []
    assert store.operation("issue-1") is None


def test_a_batch_reading_its_op_log_up_front_answers_as_one_reading_per_item() -> None:
    until = NOW + timedelta(hours=1)

    def scenario(store: Store, ids: list[str]) -> list[object]:
        answers: list[object] = []

        def note(run: Callable[[], object]) -> None:
            try:
                answers.append(run())
            except Rejection as rejection:
                answers.append(rejection.code)

        store.issue("issue", "A", block(1, 100))
        store.lock("before", "A", block(1, 1).id, until, "T")
        with store.batch(ids):
            note(lambda: store.lock("before", "A", block(1, 1).id, until, "T"))  # a repeat
            note(lambda: store.lock("new", "A", block(2, 2).id, until, "T"))
            note(lambda: store.lock("new", "A", block(2, 2).id, until, "T"))  # again, in it
            note(lambda: store.lock("new", "A", block(3, 3).id, until, "T"))  # id reused
            note(lambda: store.lock("taken", "A", block(2, 2).id, until, "T"))  # refused
            note(lambda: store.lock("taken", "A", block(2, 2).id, until, "T"))
            with suppress(KeyError), store.atomic():
                note(lambda: store.lock("undone", "A", block(4, 4).id, until, "T"))
                raise KeyError("rolled back")
            note(lambda: store.lock("undone", "A", block(5, 5).id, until, "T"))  # not a repeat
            note(lambda: store.lock("unlisted", "A", block(6, 6).id, until, "T"))
        note(lambda: store.operation("undone"))
        note(lambda: store.holdings())
        return answers

    ids = ["before", "new", "new", "new", "taken", "taken", "undone", "undone"]
    assert scenario(
        Store("national", frozenset({Program.CCER}), CreditMode.MIRROR, clock=lambda: NOW), ids
    ) == scenario(
        Store("national", frozenset({Program.CCER}), CreditMode.MIRROR, clock=lambda: NOW), []
    )


@pytest.mark.parametrize("failure", [ValueError("bug"), Rejection("BUG", "refused late")])
def test_an_item_failing_while_it_writes_fails_the_whole_batch(
    store: Store, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # Operations are refused before they write, so no savepoint is taken per item; one
    # that fails halfway through its writes (the database, or a bug) cannot be undone
    # alone, and must not be committed with the others as a refusal.
    store.issue("issue", "A", block(1, 100))
    until = NOW + timedelta(hours=1)
    calls = 0
    cut = store._cut

    def cut_then_fail(*args: object) -> None:
        nonlocal calls
        calls += 1
        cut(*args)  # type: ignore[arg-type]
        # NOTE(emulator-store): the real method's arguments, passed through.
        if calls == 2:
            raise failure

    monkeypatch.setattr(store, "_cut", cut_then_fail)

    def lock(start: int) -> str:
        return store.lock(f"lock-{start}", "A", block(start, start).id, until, "T").account

    with pytest.raises(RuntimeError, match="failed while writing"):
        serve_batch(store, [1, 2, 3], lock, lambda start, rejection: rejection.code)
    monkeypatch.undo()
    assert [(h.block.id.serial_start, h.state.value) for h in store.holdings()] == [(1, "active")]
    assert store.operation("lock-1") is None
    # The store goes on: the next transaction commits.
    store.lock("lock-1", "A", block(1, 1).id, until, "T")
    assert store.operation("lock-1") is not None


def test_a_batch_over_the_cap_is_refused_whole(store: Store) -> None:
    with pytest.raises(Rejection, match="BATCH_TOO_LARGE"):
        serve_batch(store, [0] * (BATCH_ITEMS_CAP + 1), lambda i: i, lambda i, r: i)


# -- the retry wrapper -------------------------------------------------------------------


@dataclasses.dataclass
class Flaky:
    """A port whose batches fail in transit ``failures`` times, then answer."""

    failures: int
    calls: int = 0

    @property
    def registry_id(self) -> str:
        return "flaky"

    def _answer(self, count: int) -> list[RegistryHolding | RegistryRejected]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RegistryUnavailable("flaky", "UNAVAILABLE")
        return [RegistryRejected("flaky", "UNITS_LOCKED", "locked")] * count

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> list[RegistryHolding | RegistryRejected]:
        return self._answer(len(requests))

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> list[RegistryHolding | RegistryRejected]:
        return self._answer(len(requests))

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> list[RegistryHolding | RegistryRejected]:
        return self._answer(len(requests))


@pytest.mark.parametrize("method", ["lock_many", "credit_many", "finalize_many"])
def test_the_retry_wrapper_retries_a_batch_whole_on_transient_failures_only(method: str) -> None:
    flaky = Flaky(failures=2)
    # NOTE(registry-adapters): only the three batch methods are reached here.
    port: RegistryPort = flaky  # type: ignore[assignment]
    retrying = RetryingRegistry(port, RetryPolicy(attempts=3, initial_wait_s=0, jitter_s=0))
    results = getattr(retrying, method)([object(), object()])
    # Two transient failures, then one answer; its refused items are results, not retried.
    assert flaky.calls == 3
    assert [r.code for r in results] == ["UNITS_LOCKED", "UNITS_LOCKED"]


@pytest.mark.parametrize(("failures", "attempts"), [(0, 3), (1, 3), (2, 3), (3, 3), (1, 1)])
def test_the_retry_wrapper_makes_the_policys_attempts_with_its_waits(
    monkeypatch: pytest.MonkeyPatch, failures: int, attempts: int
) -> None:
    # The first attempt is made outside tenacity; the attempts and the waits between
    # them must still be the policy's.
    waits: list[float] = []
    controller = RetryPolicy.retrying
    monkeypatch.setattr(
        RetryPolicy, "retrying", lambda policy: controller(policy).copy(sleep=waits.append)
    )
    flaky = Flaky(failures=failures)
    # NOTE(registry-adapters): only the batch methods are reached here.
    port: RegistryPort = flaky  # type: ignore[assignment]
    policy = RetryPolicy(attempts=attempts, initial_wait_s=0.1, max_wait_s=0.3, jitter_s=0)
    retrying = RetryingRegistry(port, policy)
    request = LockRequest("lock", "A", block(1, 1).id, NOW, "T")
    if failures >= attempts:
        with pytest.raises(RegistryUnavailable):
            retrying.lock_many([request])
    else:
        (result,) = retrying.lock_many([request])
        assert isinstance(result, RegistryRejected) and result.code == "UNITS_LOCKED"
    assert flaky.calls == min(failures + 1, attempts)
    assert waits == pytest.approx([0.1, 0.2][: flaky.calls - 1])


def test_the_retry_wrapper_does_not_retry_a_refusal() -> None:
    class Refusing:
        calls = 0
        registry_id = "x"

        def lock_many(self, requests: Sequence[LockRequest]) -> list[RegistryHolding]:
            self.calls += 1
            raise RegistryRejected("x", "UNITS_LOCKED", "locked")

    refusing = Refusing()
    # NOTE(registry-adapters): only lock_many is reached here.
    port: RegistryPort = refusing  # type: ignore[assignment]
    with pytest.raises(RegistryRejected):
        RetryingRegistry(port, RetryPolicy(attempts=3, initial_wait_s=0)).lock_many([])
    assert refusing.calls == 1
