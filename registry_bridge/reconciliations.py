"""The record of reconciliation runs, and the units their findings hold.

Every run is kept (table ``reconciliations``), asked for or scheduled, with what it found,
so an auditor can see when the ledger was last compared with each registry and which
gateway did it; :class:`registry_bridge.reconcile.Reconciler` writes the records and, as
the database admits one running row, runs one reconciliation at a time over every gateway
sharing it. The scheduled runs of those gateways are one schedule, and a scheduled run
marks as persisting the differences the scheduled run before it, on whichever gateway,
found too.

Units a persisting difference names are held (:func:`held_blocks`): no transfer or use
may take them until a later run reads the registry and finds them agreeing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge.db import run_plain
from registry_bridge.errors import InvalidRequest
from registry_bridge.model import BlockId
from registry_bridge.reconcile_report import (
    TRAIL,
    UNIT_BLOCKS,
    Discrepancy,
    ReconcileReport,
    report_from_json,
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

DIED = "its gateway stopped renewing it (stopped or died during the run)"


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
    lease_expires_at: datetime | None = None
    """While running: when it counts as dead unless its gateway renews it."""

    def as_seen_at(self, now: datetime) -> Reconciliation:
        """The run as it stands at ``now``: one still recorded running whose lease has run
        out is abandoned (its gateway stopped renewing it), though no run has started
        since to record it so."""
        if self.state != RUNNING or self.lease_expires_at is None:
            return self
        if self.lease_expires_at > now:
            return self
        return replace(self, state=ABANDONED, failure=DIED)


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


def run_from_row(row: ReconciliationRecord) -> Reconciliation:
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
        lease_expires_at=row.lease_expires_at if row.state == RUNNING else None,
    )


def last_completed(session: Session, trigger: str) -> Reconciliation | None:
    """The latest completed run of ``trigger`` (for readers holding a session)."""
    row = session.scalars(
        sa.select(ReconciliationRecord)
        .where(ReconciliationRecord.trigger == trigger, ReconciliationRecord.state == COMPLETED)
        .order_by(ReconciliationRecord.started_at.desc(), ReconciliationRecord.id.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else run_from_row(row)


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
    return [run_from_row(row) for row in session.scalars(query.limit(limit))]


@dataclass(frozen=True)
class HeldBlock:
    """Units no transfer or use may take: a registry and the ledger disagree about them.

    The Kyoto ITL refuses transactions on units whose reconciliation is unresolved
    (ANCHORS.md, check 3016): moving units whose whereabouts the registry and the ledger
    tell differently could count them twice.
    """

    registry: str
    block: BlockId
    """The units that differ, as the difference names them."""
    reconciliation_id: int
    """The scheduled run that found the difference for the second time in a row."""
    detail: str


_LATEST_COMPLETED = sa.select(sa.func.max(ReconciliationRecord.id)).where(
    ReconciliationRecord.state == COMPLETED
)


def latest_completed_id(session: Session) -> int | None:
    """The id of the newest completed run (the held blocks change only with it)."""
    # Asked by every transaction that checks a transfer or a use: built once and run as
    # plain text, as SQLAlchemy's per-execution work cost more than the index seek.
    ((latest,),) = run_plain(session, _LATEST_COMPLETED, {})
    return None if latest is None else int(latest)


def held_blocks(session: Session) -> tuple[HeldBlock, ...]:
    """The blocks held now: those the latest completed scheduled run found differing, as
    the scheduled run before it did, unless a later completed run read the same registry
    and no longer found them differing (an operator who has put the registry right asks
    for a reconciliation, and its answer releases them)."""
    latest = last_completed(session, SCHEDULE)
    if latest is None:
        return ()
    candidates = [
        (difference, block)
        for difference in latest.persistent
        if difference.phase == UNIT_BLOCKS
        for block in difference.differing_blocks
    ]
    if not candidates:
        return ()
    later = [
        run_from_row(row)
        for row in session.scalars(
            sa.select(ReconciliationRecord)
            .where(
                ReconciliationRecord.state == COMPLETED,
                ReconciliationRecord.id > latest.id,
            )
            .order_by(ReconciliationRecord.id)
        )
    ]
    held: dict[tuple[str, BlockId], HeldBlock] = {}
    for difference, block in candidates:
        # Both sides of one difference (the ledger's block, the registry's) name the same
        # units: they are held once.
        if (difference.registry, block) in held:
            continue
        if not any(_releases(run, difference.registry, block) for run in later):
            held[(difference.registry, block)] = HeldBlock(
                difference.registry, block, latest.id, difference.detail
            )
    return tuple(held.values())


def _releases(run: Reconciliation, registry: str, block: BlockId) -> bool:
    """Whether ``run`` read ``registry`` and found nothing differing over ``block``."""
    report = run.report
    if report is None or registry not in run.registries:
        return False
    if any(u.registry == registry for u in report.unreadable):
        return False
    return not any(
        d.registry == registry and d.phase == UNIT_BLOCKS and held.overlaps(block)
        for d in report.discrepancies
        for held in d.differing_blocks
    )
