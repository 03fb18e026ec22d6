"""Reconciliation runs: each one recorded, and one at a time over every gateway.

A reconciliation (see :mod:`registry_bridge.reconcile`) reads every holding of the
registries it covers. Several gateway processes share one database (DESIGN.md), so the
database, not a lock in one process, decides which run goes on: a running run holds a
row of ``reconciliations`` (a unique index admits one running row), renewed while it
reads, and another asked for meanwhile is refused with :class:`ReconcileBusy`. A
gateway that dies mid-run stops renewing it, and the next run to start marks it
abandoned once its lease has run out.

Every run is kept, asked for or scheduled, with what it found, so an auditor can see
when the ledger was last compared with each registry and whichever gateway ran it. The
scheduled runs of all the gateways sharing the database are one schedule: a gateway
starts one only when none has started within the interval, and a run reports as
persisting the differences the scheduled run before it, on whichever gateway, found
too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.block_json import block_id_from_dict, block_id_to_dict
from registry_bridge.db import read_only, unit_of_work
from registry_bridge.errors import (
    Abandoned,
    InvalidRequest,
    RegistryRejected,
    RegistryUnavailable,
    ResourceExhausted,
)
from registry_bridge.model import HoldingStatus, Program
from registry_bridge.port import RegistryPort
from registry_bridge.reconcile import (
    TRAIL,
    Discrepancy,
    ReconcileReport,
    UnreadableRegistry,
    reconcile,
)
from registry_bridge.schema import ReconciliationRecord

REQUEST = "request"
"""A run asked for over the API (the Reconcile RPC)."""
SCHEDULE = "schedule"
"""A run of the gateways' schedule (``reconcile_interval_seconds``)."""
TRIGGERS = (REQUEST, SCHEDULE)

RUNNING = "running"
COMPLETED = "completed"
ABANDONED = "abandoned"
FAILED = "failed"

RUN_LEASE = timedelta(seconds=60)
"""How long a run counts as alive without its gateway renewing it."""
RENEW_EVERY = timedelta(seconds=15)
"""How often a run renews its lease while it reads (at each registry page or phase)."""

DIED = "its gateway stopped renewing it (stopped or died during the run)"

_logger = structlog.get_logger(__name__)


def _always() -> bool:
    return True


class ReconcileBusy(ResourceExhausted):
    """A reconciliation is already under way, on this gateway or another sharing its
    database.

    Each one reads every holding of the registries it covers: run side by side they would
    only multiply the load on the registries and answer the same.
    """

    def __init__(self, running: Reconciliation | None) -> None:
        where = (
            ""
            if running is None
            else f" (reconciliation {running.id}, started {running.started_at.isoformat()} "
            f"by gateway {running.runner})"
        )
        super().__init__(f"a reconciliation is already under way{where}; retry when it ends")
        self.running = running
        self.subject = "reconciliations"
        self.description = "one reconciliation at a time over the gateways sharing a database"


@dataclass(frozen=True)
class Reconciliation:
    """One reconciliation run, as recorded."""

    id: int
    trigger: str
    """:data:`REQUEST` or :data:`SCHEDULE`."""
    requested_by: str
    """The caller who asked for it; empty for a scheduled run."""
    runner: str
    """The gateway process that ran it."""
    registries: tuple[str, ...]
    state: str
    """:data:`RUNNING`, :data:`COMPLETED`, :data:`ABANDONED` or :data:`FAILED`."""
    started_at: datetime
    ended_at: datetime | None
    report: ReconcileReport | None
    """What a completed run found (None for any other)."""
    persistent: tuple[Discrepancy, ...] = ()
    """Of a completed scheduled run: the differences (totals and unit blocks) the
    scheduled run completed before it found too (see :func:`persisting`)."""
    failure: str = ""
    """Why a failed or abandoned run did not complete."""


def persisting(
    previous: ReconcileReport | None, current: ReconcileReport
) -> tuple[Discrepancy, ...]:
    """The differences (totals and unit blocks) of ``current`` that ``previous`` found too.

    A reconciliation run while transfers move sees each one between its ledger step and
    its registry call as a difference that is gone by the next run; one found twice in a
    row, minutes apart, is not a transfer under way.  Trail lines explain differences and
    are not counted themselves.
    """
    if previous is None:
        return ()
    before = {d for d in previous.discrepancies if d.phase != TRAIL}
    return tuple(d for d in current.discrepancies if d.phase != TRAIL and d in before)


def _discrepancy_json(discrepancy: Discrepancy, persistent: bool) -> dict[str, Any]:
    return {
        "registry": discrepancy.registry,
        "phase": discrepancy.phase,
        "detail": discrepancy.detail,
        "program": None if discrepancy.program is None else discrepancy.program.value,
        "status": None if discrepancy.status is None else discrepancy.status.value,
        "gateway_quantity": discrepancy.gateway_quantity,
        "registry_quantity": discrepancy.registry_quantity,
        "block": None if discrepancy.block is None else block_id_to_dict(discrepancy.block),
        "persistent": persistent,
    }


def _discrepancy_from_json(data: dict[str, Any]) -> Discrepancy:
    return Discrepancy(
        registry=data["registry"],
        phase=data["phase"],
        detail=data["detail"],
        program=None if data["program"] is None else Program(data["program"]),
        status=None if data["status"] is None else HoldingStatus(data["status"]),
        gateway_quantity=int(data["gateway_quantity"]),
        registry_quantity=int(data["registry_quantity"]),
        block=None if data["block"] is None else block_id_from_dict(data["block"]),
    )


def _unreadable_json(unreadable: UnreadableRegistry) -> dict[str, Any]:
    error = unreadable.error
    if isinstance(error, RegistryRejected):
        return {
            "registry": unreadable.registry,
            "error": "rejected",
            "code": error.code,
            "message": str(error),
        }
    return {"registry": unreadable.registry, "error": "unavailable", "message": str(error)}


def _unreadable_from_json(data: dict[str, Any]) -> UnreadableRegistry:
    registry = data["registry"]
    error: RegistryUnavailable | RegistryRejected
    if data["error"] == "rejected":
        error = RegistryRejected(registry, data["code"], "")
    else:
        error = RegistryUnavailable(registry, "")
    # The recorded message is the error's whole text, as it was first said.
    error.args = (data["message"],)
    return UnreadableRegistry(registry, error)


def report_json(report: ReconcileReport, persistent: Sequence[Discrepancy] = ()) -> str:
    """A report as canonical JSON, each difference marked persistent or not."""
    marked = set(persistent)
    return json.dumps(
        {
            "phase": report.phase,
            "discrepancies": [_discrepancy_json(d, d in marked) for d in report.discrepancies],
            "unreadable": [_unreadable_json(u) for u in report.unreadable],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def report_from_json(text: str) -> tuple[ReconcileReport, tuple[Discrepancy, ...]]:
    """The report of :func:`report_json`, and the differences marked persistent."""
    data = json.loads(text)
    found = [(_discrepancy_from_json(d), bool(d["persistent"])) for d in data["discrepancies"]]
    report = ReconcileReport(
        data["phase"],
        tuple(d for d, _ in found),
        tuple(_unreadable_from_json(u) for u in data["unreadable"]),
    )
    return report, tuple(d for d, persistent in found if persistent)


def _from_row(row: ReconciliationRecord) -> Reconciliation:
    report: ReconcileReport | None = None
    persistent: tuple[Discrepancy, ...] = ()
    failure = ""
    if row.state == COMPLETED:
        report, persistent = report_from_json(row.report)
    else:
        failure = row.report
    return Reconciliation(
        id=row.id,
        trigger=row.trigger,
        requested_by=row.requested_by,
        runner=row.runner,
        registries=tuple(json.loads(row.registries)),
        state=row.state,
        started_at=row.started_at,
        ended_at=row.ended_at,
        report=report,
        persistent=persistent,
        failure=failure,
    )


class _Renewing:
    """``still_wanted`` for a run that also renews the run's lease every so often."""

    def __init__(
        self,
        reconciler: Reconciler,
        run_id: int,
        still_wanted: Callable[[], bool],
    ) -> None:
        self._reconciler = reconciler
        self._run_id = run_id
        self._still_wanted = still_wanted
        self._renewed = reconciler.clock()
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        wanted = self._still_wanted()
        if wanted:
            now = self._reconciler.clock()
            with self._lock:
                due = now - self._renewed >= self._reconciler.renew_every
                if due:
                    self._renewed = now
            if due:
                self._reconciler.renew(self._run_id, now)
        return wanted


class Reconciler:
    """Runs reconciliations of the ledger with the wired registries, one at a time over
    every gateway sharing the database, and records each.

    Each reads the ledger read-only: it waits on every registry's totals and holdings,
    which takes a while on a large ledger, and on SQLite a write transaction would hold
    the one write lock all that time, stopping every transfer.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ports: Mapping[str, RegistryPort],
        *,
        runner: str,
        clock: Callable[[], datetime],
        lease: timedelta = RUN_LEASE,
        renew_every: timedelta = RENEW_EVERY,
    ) -> None:
        self._sessions = sessions
        self._ports = ports
        self.runner = runner
        self.clock = clock
        self.lease = lease
        self.renew_every = renew_every

    def run(
        self,
        registries: Iterable[str] = (),
        still_wanted: Callable[[], bool] = _always,
        *,
        requested_by: str = "",
    ) -> Reconciliation:
        """Reconcile now with ``registries`` (every wired one when none named).

        Raises:
            ReconcileBusy: Another reconciliation is under way.
            Abandoned: ``still_wanted`` answered false; the run is recorded abandoned.
        """
        run = self._start(REQUEST, tuple(registries) or tuple(self._ports), requested_by, None)
        assert run is not None  # only a scheduled run is ever not due
        return self._complete(run, still_wanted, previous=None)

    def run_scheduled(
        self, interval: timedelta, still_wanted: Callable[[], bool] = _always
    ) -> Reconciliation | None:
        """The schedule's run with every wired registry, if one is due: when no scheduled
        run (of any gateway sharing the database) has started within ``interval``.

        Returns:
            The run, or None when none was due or another reconciliation is under way.

        Raises:
            Abandoned: ``still_wanted`` answered false; the run is recorded abandoned.
        """
        previous = self.last_completed(SCHEDULE)
        try:
            run = self._start(SCHEDULE, tuple(self._ports), "", interval)
        except ReconcileBusy:
            _logger.info("scheduled_reconcile_skipped", reason="a reconciliation is under way")
            return None
        if run is None:
            return None
        return self._complete(
            run, still_wanted, previous=None if previous is None else previous.report
        )

    def _complete(
        self,
        run: Reconciliation,
        still_wanted: Callable[[], bool],
        previous: ReconcileReport | None,
    ) -> Reconciliation:
        wanted = _Renewing(self, run.id, still_wanted)
        try:
            with read_only(self._sessions) as session:
                report = reconcile(session, self._ports, run.registries, wanted)
        except Abandoned as exc:
            self._end(run.id, ABANDONED, str(exc))
            raise
        except Exception as exc:
            self._end(run.id, FAILED, f"{type(exc).__name__}: {exc}")
            raise
        persistent = persisting(previous, report) if run.trigger == SCHEDULE else ()
        ended = self._end(run.id, COMPLETED, report_json(report, persistent))
        return Reconciliation(
            id=run.id,
            trigger=run.trigger,
            requested_by=run.requested_by,
            runner=run.runner,
            registries=run.registries,
            state=COMPLETED,
            started_at=run.started_at,
            ended_at=ended,
            report=report,
            persistent=persistent,
        )

    def _start(
        self,
        trigger: str,
        registries: tuple[str, ...],
        requested_by: str,
        interval: timedelta | None,
    ) -> Reconciliation | None:
        """Record a run as running; None when ``interval`` is given and a scheduled run
        started within it.

        Raises:
            ReconcileBusy: A run is under way (its lease not run out).
        """
        now = self.clock()
        try:
            with unit_of_work(self._sessions) as session:
                running = session.scalars(
                    sa.select(ReconciliationRecord).where(ReconciliationRecord.state == RUNNING)
                ).one_or_none()
                if running is not None:
                    if running.lease_expires_at > now:
                        raise ReconcileBusy(_from_row(running))
                    running.state = ABANDONED
                    running.report = DIED
                    running.ended_at = now
                    _logger.warning(
                        "reconcile_run_died", reconciliation=running.id, runner=running.runner
                    )
                    session.flush()
                if interval is not None:
                    last = session.scalar(
                        sa.select(sa.func.max(ReconciliationRecord.started_at)).where(
                            ReconciliationRecord.trigger == SCHEDULE
                        )
                    )
                    if last is not None and last > now - interval:
                        return None
                row = ReconciliationRecord(
                    trigger=trigger,
                    requested_by=requested_by,
                    runner=self.runner,
                    registries=json.dumps(list(registries)),
                    state=RUNNING,
                    report="",
                    started_at=now,
                    lease_expires_at=now + self.lease,
                    ended_at=None,
                )
                session.add(row)
                session.flush()
                return _from_row(row)
        except sa.exc.IntegrityError as exc:
            # Another gateway recorded its run between the read and the insert.
            raise ReconcileBusy(self.running()) from exc

    def renew(self, run_id: int, now: datetime) -> None:
        """Extend a run's lease; a failure is logged, not raised (the run goes on, and at
        worst another may start once the lease has run out)."""
        try:
            with unit_of_work(self._sessions) as session:
                session.execute(
                    sa.update(ReconciliationRecord)
                    .where(
                        ReconciliationRecord.id == run_id,
                        ReconciliationRecord.state == RUNNING,
                    )
                    .values(lease_expires_at=now + self.lease)
                )
        except sa.exc.SQLAlchemyError:
            _logger.exception("reconcile_lease_not_renewed", reconciliation=run_id)

    def _end(self, run_id: int, state: str, report: str) -> datetime:
        now = self.clock()
        try:
            with unit_of_work(self._sessions) as session:
                # By id, whatever its state: a run whose lease ran out (marked abandoned
                # by another gateway) that completed all the same is recorded as such.
                session.execute(
                    sa.update(ReconciliationRecord)
                    .where(ReconciliationRecord.id == run_id)
                    .values(state=state, report=report, ended_at=now)
                )
        except sa.exc.SQLAlchemyError:
            if state == COMPLETED:
                raise
            # Already failing: the lease runs out and the next run records it abandoned.
            _logger.exception("reconcile_run_not_ended", reconciliation=run_id, state=state)
        return now

    def running(self) -> Reconciliation | None:
        """The run under way, if any."""
        with read_only(self._sessions) as session:
            row = session.scalars(
                sa.select(ReconciliationRecord).where(ReconciliationRecord.state == RUNNING)
            ).one_or_none()
            return None if row is None else _from_row(row)

    def last_completed(self, trigger: str) -> Reconciliation | None:
        """The latest completed run of ``trigger``, of any gateway."""
        with read_only(self._sessions) as session:
            return last_completed(session, trigger)


def last_completed(session: Session, trigger: str) -> Reconciliation | None:
    """The latest completed run of ``trigger`` (for readers holding a session)."""
    row = session.scalars(
        sa.select(ReconciliationRecord)
        .where(ReconciliationRecord.trigger == trigger, ReconciliationRecord.state == COMPLETED)
        .order_by(ReconciliationRecord.started_at.desc(), ReconciliationRecord.id.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else _from_row(row)


def list_runs(
    session: Session, *, before_id: int | None, limit: int, trigger: str = ""
) -> list[Reconciliation]:
    """Runs newest first: at most ``limit`` of them, with ids below ``before_id``.

    Raises:
        InvalidRequest: ``trigger`` is neither empty nor one of :data:`TRIGGERS`.
    """
    if trigger and trigger not in TRIGGERS:
        raise InvalidRequest.field(
            "trigger", f"must be empty or one of {', '.join(TRIGGERS)}, not {trigger!r}"
        )
    query = sa.select(ReconciliationRecord).order_by(ReconciliationRecord.id.desc())
    if trigger:
        query = query.where(ReconciliationRecord.trigger == trigger)
    if before_id is not None:
        query = query.where(ReconciliationRecord.id < before_id)
    return [_from_row(row) for row in session.scalars(query.limit(limit))]
