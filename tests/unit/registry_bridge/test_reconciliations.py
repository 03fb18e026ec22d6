"""Reconciliation runs: recorded, one at a time over every gateway on the database, a
dead gateway's run given up once its lease runs out, the schedule shared; and only a
difference found by two scheduled runs in a row reported as persisting."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES, build_adapter
from registry_bridge import reconciliations
from registry_bridge.db import read_only, unit_of_work
from registry_bridge.errors import (
    Abandoned,
    InvalidRequest,
    RegistryRejected,
    RegistryUnavailable,
)
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import RegistryPort
from registry_bridge.reconcile import (
    COMPLETED,
    RUN_LEASE,
    TOTALS,
    TRAIL,
    UNIT_BLOCKS,
    Discrepancy,
    ReconcileBusy,
    Reconciler,
    ReconcileReport,
    UnreadableRegistry,
)
from registry_bridge.reconcile_report import report_from_json, report_json
from registry_bridge.reconciliations import persisting
from registry_bridge.schema import ReconciliationRecord
from tests.logs import logged_events
from tests.loopback import ANY_PORT

T0 = datetime(2026, 11, 27, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)


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


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _reconciler(
    sessions: sessionmaker[Session], clock: Callable[[], datetime], runner: str
) -> Reconciler:
    # No registry wired: a run reads only the ledger, and these tests are about the runs.
    return Reconciler(sessions, {}, runner=runner, clock=clock)


def _runs(sessions: sessionmaker[Session]) -> list[reconciliations.Reconciliation]:
    with read_only(sessions) as session:
        return reconciliations.list_runs(session, before_id=None, limit=100)


def test_a_report_is_stored_and_read_back_as_it_was_found() -> None:
    stuck = Discrepancy(
        "verra",
        UNIT_BLOCKS,
        "VCS 100-109 at verra:seller",
        Program.VCS,
        HoldingStatus.ACTIVE,
        10,
        0,
        _block(100),
    )
    totals = Discrepancy("hkmo", TOTALS, "VCS active", Program.VCS, None, 10, 9)
    trail = _difference("verra", 100, TRAIL)
    down = UnreadableRegistry("gold_standard", RegistryUnavailable("gold_standard", "timed out"))
    refused = UnreadableRegistry("bri", RegistryRejected("bri", "PERMISSION_DENIED", "no"))
    report = ReconcileReport(TRAIL, (stuck, totals, trail), (down, refused))

    read, persistent = report_from_json(report_json(report, (stuck,)))

    assert read.phase == TRAIL and read.discrepancies == report.discrepancies
    assert persistent == (stuck,)
    assert [(u.registry, type(u.error), str(u.error)) for u in read.unreadable] == [
        (u.registry, type(u.error), str(u.error)) for u in report.unreadable
    ]
    (_, rejected) = read.unreadable
    assert isinstance(rejected.error, RegistryRejected) and rejected.error.code == (
        "PERMISSION_DENIED"
    )


def test_each_run_is_recorded_with_who_asked_and_what_it_found(
    sessions: sessionmaker[Session],
) -> None:
    clock = _Clock()
    run = _reconciler(sessions, clock, "gw-a").run(requested_by="auditor-1")
    assert run.state == reconciliations.COMPLETED and run.report is not None
    (recorded,) = _runs(sessions)
    assert (recorded.id, recorded.trigger, recorded.requested_by, recorded.runner) == (
        run.id,
        reconciliations.REQUEST,
        "auditor-1",
        "gw-a",
    )
    assert recorded.state == reconciliations.COMPLETED
    assert recorded.started_at == T0 and recorded.ended_at == T0
    assert recorded.report is not None and recorded.report.consistent


def test_one_run_at_a_time_over_every_gateway_on_the_database(
    sessions: sessionmaker[Session],
) -> None:
    clock = _Clock()
    first, second = (_reconciler(sessions, clock, r) for r in ("gw-a", "gw-b"))
    reading, release = threading.Event(), threading.Event()

    def held() -> bool:
        reading.set()
        return release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(first.run, still_wanted=held)
        assert reading.wait(10)
        with pytest.raises(ReconcileBusy) as busy:
            second.run()
        assert busy.value.running is not None and busy.value.running.runner == "gw-a"
        assert "already under way" in str(busy.value) and "gw-a" in str(busy.value)
        assert second.run_scheduled(HOUR) is None  # the schedule skips, no error
        release.set()
        assert running.result(timeout=30).state == reconciliations.COMPLETED
    # Once it has ended, the next is let in.
    assert second.run().state == reconciliations.COMPLETED
    assert [r.runner for r in _runs(sessions)] == ["gw-b", "gw-a"]


def test_a_dead_gateways_run_is_given_up_once_its_lease_runs_out(
    sessions: sessionmaker[Session],
) -> None:
    clock = _Clock()
    dead = Reconciler(sessions, {}, runner="gw-dead", clock=clock, renew_every=HOUR)
    alive = _reconciler(sessions, clock, "gw-alive")
    reading, release = threading.Event(), threading.Event()

    def hung() -> bool:
        reading.set()
        return release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        hanging = pool.submit(dead.run, still_wanted=hung)
        assert reading.wait(10)
        clock.now = T0 + RUN_LEASE - timedelta(seconds=1)
        with pytest.raises(ReconcileBusy):
            alive.run()
        (seen,) = alive.runs(before_id=None, limit=10)
        assert seen.state == reconciliations.RUNNING
        clock.now = T0 + RUN_LEASE + timedelta(seconds=1)
        # Listed as abandoned once its lease has run out, before any run records it so.
        (seen,) = alive.runs(before_id=None, limit=10)
        assert (seen.state, seen.failure) == (reconciliations.ABANDONED, reconciliations.DIED)
        with logged_events() as logs:
            taken_over = alive.run()
        assert taken_over.state == reconciliations.COMPLETED
        assert [e["runner"] for e in logs if e["event"] == "reconcile_run_died"] == ["gw-dead"]
        release.set()
        hanging.result(timeout=30)
    runs = {r.runner: r for r in _runs(sessions)}
    assert runs["gw-alive"].state == reconciliations.COMPLETED
    # The hung run completed after all: its own outcome is recorded over "abandoned".
    assert runs["gw-dead"].state == reconciliations.COMPLETED


def test_a_run_renews_its_lease_while_it_reads(sessions: sessionmaker[Session]) -> None:
    clock = _Clock()
    # A registry to read, so the run asks still_wanted at each read and phase.
    verra = start_emulator(REGISTRIES["verra"].emulator(), listen=ANY_PORT)
    try:
        _renewing_run(sessions, clock, {"verra": build_adapter("verra", verra.target)})
    finally:
        verra.stop(grace=None)


def _renewing_run(
    sessions: sessionmaker[Session], clock: _Clock, ports: Mapping[str, RegistryPort]
) -> None:
    slow = Reconciler(sessions, ports, runner="gw-slow", clock=clock, renew_every=timedelta(0))
    other = _reconciler(sessions, clock, "gw-other")
    reading, release = threading.Event(), threading.Event()
    asked = 0

    def reading_long() -> bool:
        nonlocal asked
        asked += 1
        if asked == 1:
            # Long into the run: past the first lease, which the run renews now.
            clock.now = T0 + RUN_LEASE * 2
            return True
        reading.set()
        return release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(slow.run, still_wanted=reading_long)
        assert reading.wait(10)
        clock.now = T0 + RUN_LEASE * 2 + timedelta(seconds=30)
        with pytest.raises(ReconcileBusy):
            other.run()
        release.set()
        assert running.result(timeout=30).state == reconciliations.COMPLETED


def test_an_abandoned_or_failed_run_is_recorded_and_lets_the_next_in(
    sessions: sessionmaker[Session],
) -> None:
    reconciler = _reconciler(sessions, _Clock(), "gw-a")
    with pytest.raises(Abandoned):
        reconciler.run(still_wanted=lambda: False)

    def broken() -> bool:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        reconciler.run(still_wanted=broken)
    assert reconciler.run().state == reconciliations.COMPLETED
    completed, failed, abandoned = _runs(sessions)
    assert (abandoned.state, failed.state) == (reconciliations.ABANDONED, reconciliations.FAILED)
    assert "caller is gone" in abandoned.failure and "disk on fire" in failed.failure
    assert abandoned.report is None and failed.report is None and completed.report is not None


def test_the_schedule_is_shared_by_the_gateways_on_the_database(
    sessions: sessionmaker[Session],
) -> None:
    clock = _Clock()
    first, second = (_reconciler(sessions, clock, r) for r in ("gw-a", "gw-b"))
    assert first.run_scheduled(HOUR) is not None
    clock.now = T0 + HOUR / 2
    assert second.run_scheduled(HOUR) is None  # gw-a's run is within the hour
    first.run(requested_by="auditor")  # a run asked for does not move the schedule
    clock.now = T0 + HOUR
    assert second.run_scheduled(HOUR) is not None
    assert first.run_scheduled(HOUR) is None
    assert [(r.trigger, r.runner) for r in _runs(sessions)] == [
        (reconciliations.SCHEDULE, "gw-b"),
        (reconciliations.REQUEST, "gw-a"),
        (reconciliations.SCHEDULE, "gw-a"),
    ]


def test_runs_are_listed_newest_first_by_page_and_trigger(
    sessions: sessionmaker[Session],
) -> None:
    clock = _Clock()
    reconciler = _reconciler(sessions, clock, "gw-a")
    for n in range(5):
        clock.now = T0 + n * HOUR
        if n % 2:
            reconciler.run()
        else:
            reconciler.run_scheduled(HOUR)
    with read_only(sessions) as session:
        first = reconciliations.list_runs(session, before_id=None, limit=2)
        rest = reconciliations.list_runs(session, before_id=first[-1].id, limit=10)
        scheduled = reconciliations.list_runs(
            session, before_id=None, limit=10, trigger=reconciliations.SCHEDULE
        )
        with pytest.raises(InvalidRequest) as refused:
            reconciliations.list_runs(session, before_id=None, limit=10, trigger="hourly")
    ids = [r.id for r in first + rest]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)
    assert [r.started_at for r in scheduled] == [T0 + 4 * HOUR, T0 + 2 * HOUR, T0]
    assert "trigger" in str(refused.value) and "hourly" in str(refused.value)


def _record(
    sessions: sessionmaker[Session],
    trigger: str,
    registries: Sequence[str],
    found: Sequence[Discrepancy] = (),
    persistent: Sequence[Discrepancy] = (),
    unreadable: Sequence[str] = (),
) -> int:
    """A completed run as a gateway records it."""
    report = ReconcileReport(
        TRAIL if found else COMPLETED,
        tuple(found),
        tuple(UnreadableRegistry(r, RegistryUnavailable(r, "down")) for r in unreadable),
    )
    with unit_of_work(sessions) as session:
        row = ReconciliationRecord(
            trigger=trigger,
            requested_by="",
            runner="gw",
            registries=json.dumps(list(registries)),
            state=reconciliations.COMPLETED,
            report=report_json(report, persistent),
            started_at=T0,
            lease_expires_at=T0,
            ended_at=T0,
        )
        session.add(row)
        session.flush()
        return row.id


def _held(sessions: sessionmaker[Session]) -> list[tuple[str, BlockId, int]]:
    with read_only(sessions) as session:
        return [
            (h.registry, h.block, h.reconciliation_id) for h in reconciliations.held_blocks(session)
        ]


def test_units_a_difference_persists_over_are_held_until_a_run_finds_them_agreeing(
    sessions: sessionmaker[Session],
) -> None:
    schedule, request = reconciliations.SCHEDULE, reconciliations.REQUEST
    stuck = _difference("hkmo", 100)
    totals = Discrepancy("hkmo", TOTALS, "VCS retired", Program.VCS, None, 0, 10)
    assert _held(sessions) == []
    _record(sessions, schedule, ["hkmo", "verra"], [stuck, totals])
    assert _held(sessions) == []  # seen once: it may be a transfer under way
    second = _record(sessions, schedule, ["hkmo", "verra"], [stuck, totals], [stuck, totals])
    # Held: the block of the difference; a difference of totals names no units to hold.
    assert _held(sessions) == [("hkmo", _block(100), second)]
    # Runs that say nothing of those units at hkmo leave them held: one not covering hkmo,
    # one that could not read it, one that still finds them differing.
    _record(sessions, request, ["verra"])
    _record(sessions, request, ["hkmo"], unreadable=["hkmo"])
    _record(sessions, request, ["hkmo"], [_difference("hkmo", 105)])
    assert _held(sessions) == [("hkmo", _block(100), second)]
    # A run reading hkmo that finds nothing over them releases them.
    _record(sessions, request, ["hkmo"], [_difference("hkmo", 300)])
    assert _held(sessions) == []
    # The next scheduled run finding them once more does not hold them yet.
    _record(sessions, schedule, ["hkmo", "verra"], [stuck])
    assert _held(sessions) == []


def test_only_the_serials_that_differ_are_held_and_once_for_both_sides(
    sessions: sessionmaker[Session],
) -> None:
    schedule = reconciliations.SCHEDULE
    part = BlockId(Program.VCS, "", 100, 102)
    # The ledger's block 100-109, of which the registry shows 100-102 otherwise; and the
    # registry's side of the same difference.
    ledger_side = Discrepancy(
        "hkmo", UNIT_BLOCKS, "ledger has 100-109", block=_block(100), differing=(part,)
    )
    registry_side = Discrepancy("hkmo", UNIT_BLOCKS, "hkmo shows 100-102", block=part)
    found = [ledger_side, registry_side]
    _record(sessions, schedule, ["hkmo"], found)
    second = _record(sessions, schedule, ["hkmo"], found, found)
    assert _held(sessions) == [("hkmo", part, second)]
    read, _ = report_from_json(report_json(ReconcileReport(TRAIL, (ledger_side,))))
    assert read.discrepancies == (ledger_side,)
