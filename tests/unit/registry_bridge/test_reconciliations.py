"""Reconciliation runs: recorded, one at a time over every gateway on the database, a
dead gateway's run given up once its lease runs out, the schedule shared; and only a
difference found by two scheduled runs in a row reported as persisting."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES, build_adapter
from registry_bridge import reconciliations
from registry_bridge.db import read_only
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
    TOTALS,
    TRAIL,
    UNIT_BLOCKS,
    Discrepancy,
    ReconcileReport,
    UnreadableRegistry,
)
from registry_bridge.reconciliations import (
    ReconcileBusy,
    Reconciler,
    persisting,
    report_from_json,
    report_json,
)

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
        clock.now = T0 + reconciliations.RUN_LEASE - timedelta(seconds=1)
        with pytest.raises(ReconcileBusy):
            alive.run()
        clock.now = T0 + reconciliations.RUN_LEASE + timedelta(seconds=1)
        with capture_logs() as logs:
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
    verra = start_emulator(REGISTRIES["verra"].emulator())
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
            clock.now = T0 + reconciliations.RUN_LEASE * 2
            return True
        reading.set()
        return release.wait(30)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(slow.run, still_wanted=reading_long)
        assert reading.wait(10)
        clock.now = T0 + reconciliations.RUN_LEASE * 2 + timedelta(seconds=30)
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
