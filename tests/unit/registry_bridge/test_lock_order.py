"""Writers take their locks in one order, and a deadlock the database breaks is retryable.

PostgreSQL only: SQLite runs one write transaction at a time, so two writers never hold
locks together there.

Seen in CI under two gateways: a check group locked a ledger row, then waited for the log
head, while the head's holder waited for that row.  PostgreSQL broke the cycle after its
``deadlock_timeout`` by aborting one transaction, and its clients got an internal error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.errors import LedgerConflict, TransactionAborted
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, Program
from registry_bridge.schema import LedgerBlock

AT = datetime(2026, 11, 26, tzinfo=UTC)


def _vcs(start: int, end: int) -> BlockId:
    return BlockId(Program.VCS, "", start, end)


def _two_rows(sessions: sessionmaker[Session]) -> tuple[LedgerHolding, LedgerHolding]:
    """VCS 1-50 and 51-100 held by verra/dev, as two ledger rows."""
    block = serials.parse_serial(
        "verra", "19385-1-100-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
    )
    with db.unit_of_work(sessions) as session:
        whole = ledger.issue(session, "verra", "dev", block, AT)
        ledger.carve(session, whole, _vcs(1, 50), AT)
    with db.read_only(sessions) as session:
        (first,) = ledger.require_holding(session, "verra", "dev", _vcs(1, 50))
        (second,) = ledger.require_holding(session, "verra", "dev", _vcs(51, 100))
    return first, second


def _wait_until_blocked(sessions: sessionmaker[Session], count: int) -> None:
    """Until ``count`` other connections to the database wait for a lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sessions() as probe:
            waiting = probe.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting >= count:
            return
        time.sleep(0.01)
    raise AssertionError("the other writer never waited for a lock")


@pytest.mark.postgres
def test_writers_crossing_over_two_rows_do_not_deadlock(
    postgres_sessions: sessionmaker[Session],
) -> None:
    """A carves row 1 then row 2; B carves row 2 in between.  B must queue behind A (for
    the log head) without taking row 2 first; A then finishes, and B meets a plain
    conflict on the row A ended, which its caller retries."""
    first, second = _two_rows(postgres_sessions)
    b_outcome: list[BaseException | None] = []

    def b_carves_the_second_row() -> None:
        try:
            with db.unit_of_work(postgres_sessions) as b:
                ledger.carve(b, second, _vcs(51, 60), AT)
            b_outcome.append(None)
        except BaseException as exc:  # reported to the test thread
            b_outcome.append(exc)

    with db.unit_of_work(postgres_sessions) as a:
        # Long enough that a cycle, if there were one, would be broken by aborting B.
        a.execute(sa.text("SET LOCAL deadlock_timeout = '5s'"))
        ledger.carve(a, first, _vcs(1, 10), AT)
        b = threading.Thread(target=b_carves_the_second_row)
        b.start()
        _wait_until_blocked(postgres_sessions, 1)
        ledger.carve(a, second, _vcs(51, 60), AT)
    b.join(timeout=30)
    assert not b.is_alive()
    (error,) = b_outcome
    assert isinstance(error, LedgerConflict), error
    assert not isinstance(error, TransactionAborted), error
    with db.read_only(postgres_sessions) as session:
        ranges = sorted(
            (h.block.id.serial_start, h.block.id.serial_end) for h in ledger.all_live(session)
        )
    assert ranges == [(1, 10), (11, 50), (51, 60), (61, 100)]


def _lock_by_orm(session: Session, row_id: int) -> None:
    session.execute(sa.select(LedgerBlock.id).where(LedgerBlock.id == row_id).with_for_update())


_LOCK_ONE = sa.select(LedgerBlock.id).where(LedgerBlock.id == sa.bindparam("id")).with_for_update()


def _lock_by_driver(session: Session, row_id: int) -> None:
    db.run_plain(session, _LOCK_ONE, {"id": row_id})


@pytest.mark.postgres
@pytest.mark.parametrize("lock", [_lock_by_orm, _lock_by_driver], ids=["orm", "driver"])
def test_a_deadlock_the_database_breaks_is_a_retryable_conflict(
    postgres_sessions: sessionmaker[Session], lock: Callable[[Session, int], None]
) -> None:
    """Whichever way the statement ran, the aborted writer gets TransactionAborted (a
    LedgerConflict, which callers retry), never the driver's error."""
    first, second = _two_rows(postgres_sessions)
    waiter_outcome: list[BaseException | None] = []

    def waiter() -> None:
        try:
            with db.unit_of_work(postgres_sessions) as w:
                w.execute(sa.text("SET LOCAL deadlock_timeout = '10s'"))
                lock(w, second.row_id)
                holds_second.set()
                lock(w, first.row_id)
            waiter_outcome.append(None)
        except BaseException as exc:  # reported to the test thread
            waiter_outcome.append(exc)

    holds_second = threading.Event()
    thread = threading.Thread(target=waiter)
    with pytest.raises(TransactionAborted) as aborted, db.unit_of_work(postgres_sessions) as closer:
        # PostgreSQL looks for a cycle once, deadlock_timeout into a wait. The closer's
        # wait starts after the waiter's (checked below) and is looked at 50 ms in, when
        # the cycle is there however slow the machine: it is the one aborted. (The other
        # way round, a waiter looked at before the closer began to wait found no cycle.)
        closer.execute(sa.text("SET LOCAL deadlock_timeout = '50ms'"))
        lock(closer, first.row_id)
        thread.start()
        assert holds_second.wait(timeout=30)
        _wait_until_blocked(postgres_sessions, 1)
        lock(closer, second.row_id)
    thread.join(timeout=30)
    assert waiter_outcome == [None]
    error = aborted.value
    assert isinstance(error, LedgerConflict)
    assert "deadlock" in str(error)
