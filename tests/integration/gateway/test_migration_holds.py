"""Held units and a migration, over real gRPC on both databases.

Units a failed use left held (rule CL-USE-0001) or a reconciliation holds (CL-RECONCILE-0001)
block a covered entity's migration out of the Shenzhen pilot before anything changes: the
plan names the hold, and ExecuteMigration refuses while it stands. A surrender an operator
settled by hand counts in the plan's surrendered units like a completed one.

The failed uses are real: the Shenzhen emulator refuses a scripted ``Fulfil`` (its
retirement and surrender call) for good, after an earlier leg of the same use was done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal, utc_now
from gateway.demo_migration import (
    PilotEntity,
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
    statuses,
)
from registry_bridge import invariants
from registry_bridge.bridge import HELD_BY_FAILED_USE, HELD_BY_RECONCILIATION
from registry_bridge.db import unit_of_work
from registry_bridge.migration import MigrationPlan, MigrationRequest
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import SurrenderRequest
from registry_bridge.schema import MigrationRecord
from tests.integration.gateway.conftest import (
    COUNTED_CALLS_TIMEOUT_S,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.integration.gateway.entity_records import year_record

ACCEPT_UNCONFIRMED = "CL-MIGRATION-0014"
HELD_UNITS = "CL-MIGRATION-0019"
YEAR_COVERED_TWICE = "CL-MIGRATION-0007"
SETTLE_FULFILS = 2
"""Shenzhen ``Fulfil`` calls of settle_final_pilot_year: its SZA and its CCER mirror."""


class _Days:
    """A clock a test moves a day at a time: each scheduled reconciliation is due when asked."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def next_day(self) -> None:
        self.now += timedelta(days=1)


@contextmanager
def _pilot(
    database_url: str,
    refusals: tuple[ScriptedRefusal, ...] = (),
    clock: Callable[[], datetime] = utc_now,
) -> Iterator[tuple[LiveGateway, LinkedRegistries]]:
    """Shenzhen and the national registry (Shenzhen refusing as scripted), and a gateway,
    on ``clock``."""
    faults = {"shenzhen": FaultConfig(refusals=refusals)} if refusals else {}
    with (
        linked_registries(faults, clock=clock, wired=("shenzhen", "national")) as registries,
        running_gateway(
            database_url,
            registries,
            clock=clock,
            # The tests drive every resolution and reconciliation themselves.
            recovery_interval_seconds=3600,
            reconcile_interval_seconds=86_400,
            # Shenzhen's refusals are scripted by call number.
            registry_timeout_seconds=COUNTED_CALLS_TIMEOUT_S,
            registry_retry_initial_wait_seconds=0.01,
            registry_retry_max_wait_seconds=0.02,
        ) as gateway,
    ):
        yield gateway, registries


def _seeded(gateway: LiveGateway, registries: LinkedRegistries, entity: PilotEntity) -> None:
    seed_registries(registries.ports, entity)
    gateway.server.import_registries()
    record_entity(gateway.stub, entity)


def _selector(block: BlockId) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=block.program.value,
            serial_series=block.serial_series,
            serial_start=block.serial_start,
            serial_end=block.serial_end,
        )
    )


def _head(block: BlockId, start: int, end: int) -> BlockId:
    return BlockId(
        block.program, block.serial_series, block.serial_start + start, block.serial_start + end
    )


def _account(entity: PilotEntity) -> model_pb2.AccountRef:
    return model_pb2.AccountRef(registry="shenzhen", account=entity.shenzhen_account)


def _failed_surrender(gateway: LiveGateway, entity: PilotEntity, sza: BlockId) -> str:
    """The entity surrenders SZ-CI then SZA units more for its final pilot year; Shenzhen
    does the first and refuses the second (scripted), so the use fails with its SZA units
    held; the use's name."""
    return _failed_use(
        gateway, entity, f"surrender-more-{entity.entity_id}", [_head(entity.sz_ci.id, 0, 9), sza]
    )


def _failed_use(
    gateway: LiveGateway, entity: PilotEntity, request_id: str, blocks: list[BlockId]
) -> str:
    """The entity surrenders ``blocks`` for its final pilot year, in order, and the use
    fails (a scripted refusal of a later block's leg): the use's name."""
    request = gateway_pb2.SurrenderRequest(
        request_id=request_id,
        account=_account(entity),
        units=[_selector(block) for block in blocks],
        entity_id=entity.entity_id,
        compliance_year=entity.final_year,
        jurisdiction="shenzhen",
    )
    with pytest.raises(grpc.RpcError) as refused:
        gateway.stub.Surrender(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = gateway.stub.ListUses(
        gateway_pb2.ListUsesRequest(state=model_pb2.USE_STATE_FAILED), timeout=30
    )
    (name,) = [str(u.name) for u in listed.uses if u.request_id == request.request_id]
    return name


def _execute(gateway: LiveGateway, entity: PilotEntity, request_id: str) -> gateway_pb2.Migration:
    migration: gateway_pb2.Migration = gateway.stub.ExecuteMigration(
        gateway_pb2.ExecuteMigrationRequest(
            request_id=request_id,
            plan=migration_request(entity, acknowledged=[ACCEPT_UNCONFIRMED]),
        ),
        timeout=120,
    )
    return migration


def _plan(gateway: LiveGateway, entity: PilotEntity) -> gateway_pb2.MigrationPlan:
    plan: gateway_pb2.MigrationPlan = gateway.stub.PlanMigration(
        migration_request(entity, acknowledged=[ACCEPT_UNCONFIRMED]), timeout=60
    )
    return plan


def _migrations(gateway: LiveGateway) -> int:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(MigrationRecord)) or 0)


def _check_invariants(gateway: LiveGateway, registries: LinkedRegistries) -> None:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        assert invariants.check_all(session, registries.ports) == []


# The SZA the pilot cancels on migration: past the 46,000 surrendered for the final year.
HELD_SZA = (46_100, 46_109)


def _fail_a_use_once_recorded(
    gateway: LiveGateway, entity: PilotEntity, monkeypatch: pytest.MonkeyPatch
) -> tuple[BlockId, list[str]]:
    """Settle the entity's final pilot year, then have a surrender of its :data:`HELD_SZA`
    fail once its migration is recorded, before any step runs (the registry refuses the
    use's later leg). Returns those units, and a list that names the failed use once the
    migration has started."""
    settle_final_pilot_year(gateway.stub, entity)
    held = _head(entity.sza.id, *HELD_SZA)
    migrations = gateway.server.migrations
    run_step = migrations._run_step
    failed: list[str] = []

    def fail_a_use_first(migration_id: str, seq: int, kind: str, caller: str) -> bool:
        if not failed:  # the migration is recorded, and no step has run yet
            failed.append(_failed_surrender(gateway, entity, held))
        return run_step(migration_id, seq, kind, caller)

    monkeypatch.setattr(migrations, "_run_step", fail_a_use_first)
    return held, failed


def test_a_failed_use_on_the_entitys_units_blocks_the_plan_until_it_is_resolved(
    database_url: str,
) -> None:
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-h1", "steel", 2023, 20_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        held = _head(steel.sza.id, *HELD_SZA)
        name = _failed_surrender(gateway, steel, held)

        plan = _plan(gateway, steel)
        assert not plan.executable
        (finding,) = [v for v in plan.blocking_violations if v.rule_id == HELD_UNITS]
        assert [v.rule_id for v in plan.blocking_violations] == [HELD_UNITS]
        assert name in finding.message and HELD_BY_FAILED_USE in finding.message
        assert f"SZA {held.serial_start}-{held.serial_end}" in finding.message
        assert dict(finding.details) == {
            "rule": HELD_BY_FAILED_USE,
            "use": name.removeprefix("uses/"),
        }

        # Executing it is refused the same way, with nothing recorded or cancelled.
        before = statuses(registries.ports["shenzhen"], steel.sza.id)
        with pytest.raises(grpc.RpcError) as refused:
            _execute(gateway, steel, "migrate-held")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert HELD_UNITS in details and name in details and HELD_BY_FAILED_USE in details
        assert _migrations(gateway) == 0
        assert statuses(registries.ports["shenzhen"], steel.sza.id) == before

        # The operator retries; Shenzhen accepts now, the hold is gone, and it migrates.
        resolved = gateway.stub.ResolveUse(
            gateway_pb2.ResolveUseRequest(
                request_id="retry-1", name=name, action=model_pb2.USE_RESOLUTION_ACTION_RETRY
            ),
            timeout=30,
        )
        assert resolved.state == model_pb2.USE_STATE_COMPLETED
        assert _plan(gateway, steel).executable
        migration = _execute(gateway, steel, "migrate-held")
        assert migration.state == "completed", migration.failure_reason
        _check_invariants(gateway, registries)


def test_a_hold_that_appears_after_planning_refuses_the_execution(database_url: str) -> None:
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-h2", "steel", 2023, 21_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        assert _plan(gateway, steel).executable

        name = _failed_surrender(gateway, steel, _head(steel.sza.id, *HELD_SZA))
        before = statuses(registries.ports["shenzhen"], steel.sza.id)
        with pytest.raises(grpc.RpcError) as refused:
            _execute(gateway, steel, "migrate-after-plan")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert HELD_UNITS in details and name in details
        assert _migrations(gateway) == 0
        assert statuses(registries.ports["shenzhen"], steel.sza.id) == before


def test_a_hold_that_appears_while_the_migration_is_recorded_refuses_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ExecuteMigration plans outside the transaction that records the migration: a use
    that fails in between is read where the migration would be recorded, and refuses it."""
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-h5", "steel", 2023, 24_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        migrations = gateway.server.migrations
        planned = migrations.plan
        failed: list[str] = []

        def plan_then_fail(request: MigrationRequest) -> MigrationPlan:
            plan = planned(request)
            failed.append(_failed_surrender(gateway, steel, _head(steel.sza.id, *HELD_SZA)))
            return plan

        monkeypatch.setattr(migrations, "plan", plan_then_fail)
        before = statuses(registries.ports["shenzhen"], steel.sza.id)
        with pytest.raises(grpc.RpcError) as refused:
            _execute(gateway, steel, "migrate-raced")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert HELD_UNITS in details and failed[0] in details
        assert _migrations(gateway) == 0
        assert statuses(registries.ports["shenzhen"], steel.sza.id) == before


def test_a_year_recorded_while_the_migration_is_recorded_refuses_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pilot year from the migration's first year on, recorded after the plan was read
    and before the migration is, would be a year both schemes cover: it is read again
    where the migration would be recorded, and refuses it (CL-MIGRATION-0007)."""
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-h7", "steel", 2023, 26_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        migrations = gateway.server.migrations
        planned = migrations.plan

        def plan_then_record(request: MigrationRequest) -> MigrationPlan:
            plan = planned(request)
            gateway.stub.UpsertCoveredEntity(
                gateway_pb2.UpsertCoveredEntityRequest(
                    request_id="entity-steel-h7-2024",
                    entity=year_record(steel, "shenzhen", steel.final_year + 1),
                ),
                timeout=30,
            )
            return plan

        monkeypatch.setattr(migrations, "plan", plan_then_record)
        before = statuses(registries.ports["shenzhen"], steel.sza.id)
        with pytest.raises(grpc.RpcError) as refused:
            _execute(gateway, steel, "migrate-raced-year")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert YEAR_COVERED_TWICE in details and f"shenzhen for {steel.final_year + 1}" in details
        assert _migrations(gateway) == 0
        assert statuses(registries.ports["shenzhen"], steel.sza.id) == before


def test_a_hold_that_appears_while_the_steps_run_fails_the_cancellation_of_its_units(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A use that fails on the entity's SZA once the migration is recorded, before its
    steps run, leaves those units held: the cancel step refuses them, as a transfer step's
    bridge transfer would, instead of cancelling units an operator must settle."""
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-h6", "steel", 2023, 25_000_000)
        _seeded(gateway, registries, steel)
        _, failed = _fail_a_use_once_recorded(gateway, steel, monkeypatch)
        migration = _execute(gateway, steel, "migrate-during")
        assert failed, [(s.kind, s.state) for s in migration.steps]
        assert migration.state == "failed"
        (cancel,) = [s for s in migration.steps if s.kind == "cancel"]
        assert cancel.state == "failed"
        assert HELD_UNITS in cancel.error and failed[0] in cancel.error
        assert HELD_BY_FAILED_USE in migration.failure_reason
        # Nothing of the SZA was cancelled, in the ledger or at Shenzhen.
        assert (
            HoldingStatus.CANCELLED
            not in statuses(registries.ports["shenzhen"], steel.sza.id).values()
        )
        _check_invariants(gateway, registries)


def test_units_a_reconciliation_holds_block_the_plan(database_url: str) -> None:
    days = _Days()
    with _pilot(database_url, clock=days) as (gateway, registries):
        steel = pilot_entity("steel-h3", "steel", 2023, 22_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        held = _head(steel.sza.id, *HELD_SZA)
        # Surrendered at Shenzhen behind the gateway's back: two scheduled runs in a row
        # find Shenzhen differing from the ledger, and hold the units.
        registries.ports["shenzhen"].surrender(
            SurrenderRequest("behind-the-back", steel.shenzhen_account, held, "nobody", 2023)
        )
        for _ in range(2):
            days.next_day()
            run = gateway.server.reconcile_once()
        assert run is not None and run.persistent

        plan = _plan(gateway, steel)
        assert not plan.executable
        findings = [v for v in plan.blocking_violations if v.rule_id == HELD_UNITS]
        assert findings, list(plan.blocking_violations)
        assert all(HELD_BY_RECONCILIATION in v.message for v in findings)
        assert any(f"SZA {held.serial_start}-{held.serial_end}" in v.message for v in findings)
        assert {dict(v.details)["reconciliation"] for v in findings} == {str(run.id)}
        assert {dict(v.details)["rule"] for v in findings} == {HELD_BY_RECONCILIATION}
        with pytest.raises(grpc.RpcError) as refused:
            _execute(gateway, steel, "migrate-reconciled")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert HELD_BY_RECONCILIATION in (refused.value.details() or "")
        assert _migrations(gateway) == 0


def test_a_surrender_settled_by_hand_counts_in_the_plans_surrendered_units(
    database_url: str,
) -> None:
    # The settlement's second Fulfil (its CCER mirror) is refused after its SZA was
    # surrendered: the final year's surrender fails.
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS - 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-h4", "steel", 2023, 23_000_000)
        _seeded(gateway, registries, steel)
        with pytest.raises(grpc.RpcError) as refused:
            settle_final_pilot_year(gateway.stub, steel)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        (failed,) = gateway.stub.ListUses(
            gateway_pb2.ListUsesRequest(state=model_pb2.USE_STATE_FAILED), timeout=30
        ).uses
        (mirror_leg,) = [leg for leg in failed.legs if leg.state == model_pb2.USE_LEG_STATE_REFUSED]
        # Shenzhen's operator surrenders the mirror by hand, and the gateway's operator
        # records it settled.
        block = mirror_leg.block
        registries.ports["shenzhen"].surrender(
            SurrenderRequest(
                "by-hand",
                steel.shenzhen_account,
                BlockId(
                    Program(block.program),
                    block.serial_series,
                    block.serial_start,
                    block.serial_end,
                ),
                steel.entity_id,
                2023,
            )
        )
        resolved = gateway.stub.ResolveUse(
            gateway_pb2.ResolveUseRequest(
                request_id="settle-1",
                name=failed.name,
                action=model_pb2.USE_RESOLUTION_ACTION_SETTLE_MANUALLY,
                reason="surrendered at Shenzhen by hand, ticket SZ-1",
            ),
            timeout=30,
        )
        assert resolved.state == model_pb2.USE_STATE_RESOLVED

        plan = _plan(gateway, steel)
        assert (plan.allowances_surrendered, plan.offsets_surrendered) == (46_000, 4_000)
        assert (plan.units_surrendered, plan.shortfall) == (50_000, 0)
        assert plan.executable, list(plan.blocking_violations)


def test_a_hold_on_units_the_migration_keeps_in_the_pilot_does_not_block_it(
    database_url: str,
) -> None:
    """SZ-CI stay in the entity's pilot account (keep_for_sale): the migration neither
    moves nor cancels them, so a failed use holding some of them is no reason to stop it,
    and the operator still resolves the use after the move."""
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-h7", "steel", 2023, 20_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        kept = _head(steel.sz_ci.id, 0, 9)
        # Shenzhen surrenders the SZA, then refuses the SZ-CI: the use fails, the SZ-CI held.
        name = _failed_use(gateway, steel, "surrender-kept", [_head(steel.sza.id, *HELD_SZA), kept])

        plan = _plan(gateway, steel)
        assert HELD_UNITS not in [v.rule_id for v in plan.blocking_violations]
        assert plan.executable, [v.message for v in plan.blocking_violations]
        migration = _execute(gateway, steel, "migrate-kept-held")
        assert migration.state == "completed", migration.failure_reason

        resolved = gateway.stub.ResolveUse(
            gateway_pb2.ResolveUseRequest(
                request_id="retry-kept", name=name, action=model_pb2.USE_RESOLUTION_ACTION_RETRY
            ),
            timeout=30,
        )
        assert resolved.state == model_pb2.USE_STATE_COMPLETED
        _check_invariants(gateway, registries)
