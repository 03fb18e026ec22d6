"""Lock expiry in the emulator store: applied at the start of every operation and read.

The store knows the earliest expiry of the locks it holds and skips the expiry query
until that moment comes; these tests hold that a lock is released exactly when it would
be if every operation queried, inside a batch and after a rollback.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from adapters.emulator_core import CreditMode, Rejection, Store, UnitState
from registry_bridge.model import BlockId, Program, UnitBlock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A store clock the test moves."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def unit(serial: int) -> BlockId:
    return BlockId(Program.CCER, "", serial, serial)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Store:
    store = Store("reg", frozenset({Program.CCER}), CreditMode.MIRROR, clock=clock)
    store.issue(
        "issue",
        "A",
        UnitBlock(
            BlockId(Program.CCER, "", 1, 100), "P1", "CN", date(2024, 1, 1), date(2024, 12, 31)
        ),
    )
    return store


def state(store: Store, serial: int) -> UnitState:
    (held,) = [h for h in store.find(unit(serial)) if h.state is not UnitState.EXPORTED]
    return held.state


def test_a_lock_expiring_inside_a_batch_is_released_for_the_items_after(
    store: Store, clock: Clock
) -> None:
    store.lock("early", "A", unit(1), NOW + timedelta(minutes=1), "t1")
    store.lock("late", "A", unit(2), NOW + timedelta(minutes=5), "t2")
    with store.batch():
        store.lock("new", "A", unit(3), NOW + timedelta(minutes=2), "t3")
        clock.now = NOW + timedelta(minutes=1)  # "early" expires at this very moment
        with pytest.raises(Rejection, match="UNITS_NOT_LOCKED"):
            store.finalize("f1", "A", unit(1), "t1", export=False)
        # The lock written in this batch expires before "late", and is released too.
        clock.now = NOW + timedelta(minutes=3)
        with pytest.raises(Rejection, match="UNITS_NOT_LOCKED"):
            store.finalize("f3", "A", unit(3), "t3", export=False)
        store.finalize("f2", "A", unit(2), "t2", export=False)
    assert [state(store, s) for s in (1, 2, 3)] == [
        UnitState.ACTIVE,
        UnitState.IMMOBILIZED,
        UnitState.ACTIVE,
    ]


def test_a_lock_released_in_a_rolled_back_transaction_is_released_again(
    store: Store, clock: Clock
) -> None:
    store.lock("lock", "A", unit(1), NOW + timedelta(minutes=1), "t1")
    clock.now = NOW + timedelta(minutes=2)
    with pytest.raises(KeyError), store.atomic():
        store.lock("other", "A", unit(5), NOW + timedelta(hours=1), "t2")  # releases "lock"
        raise KeyError("rolled back")
    # The rollback brought the expired lock back; it holds nothing all the same.
    assert state(store, 1) is UnitState.ACTIVE
    store.lock("again", "A", unit(1), NOW + timedelta(hours=1), "t3")
    assert state(store, 1) is UnitState.LOCKED


def test_no_expiry_query_runs_before_the_earliest_expiry(store: Store, clock: Clock) -> None:
    store.lock("lock", "A", unit(1), NOW + timedelta(minutes=1), "t1")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        store.lock("before", "A", unit(2), NOW + timedelta(hours=1), "t2")
        assert not any("lock_expires_at <=" in s for s in statements)
        clock.now = NOW + timedelta(minutes=1)
        store.lock("at", "A", unit(3), NOW + timedelta(hours=1), "t3")
        assert any("lock_expires_at <=" in s for s in statements)
    finally:
        store._db.set_trace_callback(None)
    assert state(store, 1) is UnitState.ACTIVE
