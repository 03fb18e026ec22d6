"""Covered entities moving from the Shenzhen pilot to the national ETS, over real gRPC.

A steel entity and an aviation entity settle their final pilot year, plan and execute their
migration; the registries (read through their own APIs) and the ledger's invariants are
checked afterwards, and so are the refusals that keep a year from being covered twice and
an offset from being used twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core import RunningEmulator, start_emulator
from adapters.registry import REGISTRIES, build_adapter
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.demo_migration import (
    PilotEntity,
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
    statuses,
)
from gateway.server import GatewayServer
from registry_bridge import db, invariants
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import RegistryPort
from registry_bridge.schema import MigrationRecord, MigrationStepRecord

MIGRATION_REGISTRIES = ("shenzhen", "national")

ACCEPT_UNCONFIRMED = "CL-MIGRATION-0014"
"""The entity accepts dispositions resting on unconfirmed pack figures."""


@dataclass
class World:
    server: GatewayServer
    stub: gateway_pb2_grpc.LinkageGatewayStub
    ports: dict[str, RegistryPort]
    database_url: str

    def check_invariants(self) -> None:
        engine = db.create_engine(self.database_url)
        try:
            with db.session_factory(engine)() as session:
                assert invariants.check_all(session, self.ports) == []
        finally:
            engine.dispose()


@pytest.fixture
def pilot_registries() -> Iterator[dict[str, RunningEmulator]]:
    emulators = {r: start_emulator(REGISTRIES[r].emulator()) for r in MIGRATION_REGISTRIES}
    try:
        yield emulators
    finally:
        for emulator in emulators.values():
            emulator.stop()


@pytest.fixture
def world(database_url: str, pilot_registries: dict[str, RunningEmulator]) -> Iterator[World]:
    config = GatewayConfig(
        listen="127.0.0.1:0",
        database_url=database_url,
        registries=tuple(RegistryEndpoint(r, e.target) for r, e in pilot_registries.items()),
        recovery_interval_seconds=3600,
        insecure=True,
    )
    server = GatewayServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    ports = {r: build_adapter(r, e.target) for r, e in pilot_registries.items()}
    try:
        yield World(server, gateway_pb2_grpc.LinkageGatewayStub(channel), ports, database_url)
    finally:
        channel.close()
        server.stop(grace_seconds=0)


def _seeded(world: World, entity: PilotEntity) -> model_pb2.BlockId:
    seed_registries(world.ports, entity)
    world.server.import_registries()
    record_entity(world.stub, entity)
    return settle_final_pilot_year(world.stub, entity)


def _execute(world: World, entity: PilotEntity) -> gateway_pb2.Migration:
    migration: gateway_pb2.Migration = world.stub.ExecuteMigration(
        gateway_pb2.ExecuteMigrationRequest(
            request_id=f"migrate-{entity.entity_id}",
            plan=migration_request(entity, acknowledged=[ACCEPT_UNCONFIRMED]),
        ),
        timeout=120,
    )
    return migration


def test_a_steel_entity_plans_and_executes_its_migration(world: World) -> None:
    steel = pilot_entity("steel-01", "steel", 2023, 1_000_000)
    mirror = _seeded(world, steel)

    # Cancelling the SZA cannot be undone and rests on an unconfirmed pack figure: the plan
    # waits for the entity to accept it, and names what it would cancel.
    waiting = world.stub.PlanMigration(migration_request(steel), timeout=60)
    assert [v.rule_id for v in waiting.blocking_violations] == ["CL-MIGRATION-0015"]
    assert "cancelling SZA" in waiting.blocking_violations[0].message
    with pytest.raises(grpc.RpcError) as refused:
        world.stub.ExecuteMigration(
            gateway_pb2.ExecuteMigrationRequest(
                request_id="migrate-unaccepted", plan=migration_request(steel)
            ),
            timeout=60,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    accepted = migration_request(steel, acknowledged=[ACCEPT_UNCONFIRMED])
    plan = world.stub.PlanMigration(accepted, timeout=60)
    assert plan.executable, list(plan.blocking_violations)
    assert plan.final_pilot_year == 2023
    assert (plan.allowances_due, plan.units_surrendered, plan.shortfall) == (50_000, 50_000, 0)
    assert (plan.allowances_surrendered, plan.offsets_surrendered) == (46_000, 4_000)
    assert plan.destination_account.account == "cn-steel-01"
    assert plan.pack_version == "shenzhen@2024-10-01"
    actions = {d.holding.block.id.program: d.action for d in plan.dispositions}
    assert actions == {"SZA": "cancel", "CCER": "transfer", "SZ-CI": "keep_for_sale"}
    assert {w.rule_id for w in plan.warnings} == {"CL-MIGRATION-0014"}

    migration = _execute(world, steel)
    assert migration.state == "completed", migration.failure_reason
    assert [s.kind for s in migration.steps][-1] == "register"
    assert all(s.state == "done" for s in migration.steps)

    sza, ccer = steel.sza.id, steel.ccer.id
    cut = sza.serial_start + 46_000
    assert statuses(world.ports["shenzhen"], sza) == {
        (sza.serial_start, cut - 1): HoldingStatus.SURRENDERED,
        (cut, sza.serial_end): HoldingStatus.CANCELLED,
    }
    # The CCER surrendered in the pilot is retired at its origin; the rest came home.
    national = statuses(world.ports["national"], ccer)
    assert national[(ccer.serial_start, ccer.serial_start + 3_999)] == HoldingStatus.RETIRED
    assert national[(ccer.serial_start + 4_000, ccer.serial_end)] == HoldingStatus.ACTIVE
    sz_ci = statuses(world.ports["shenzhen"], steel.sz_ci.id)
    assert set(sz_ci.values()) == {HoldingStatus.ACTIVE}
    world.check_invariants()

    # A second execute (same request id) answers with the same migration, doing nothing.
    again = _execute(world, steel)
    assert again.name == migration.name and list(again.steps) == list(migration.steps)
    assert statuses(world.ports["shenzhen"], sza)[(cut, sza.serial_end)] == HoldingStatus.CANCELLED

    # The pilot refuses a surrender for a national year, with a clear violation id.
    with pytest.raises(grpc.RpcError) as refused:
        world.stub.Surrender(
            gateway_pb2.SurrenderRequest(
                request_id="late-pilot",
                account=model_pb2.AccountRef(registry="shenzhen", account="sz-steel-01"),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(
                            program="SZ-CI",
                            serial_start=steel.sz_ci.id.serial_start,
                            serial_end=steel.sz_ci.id.serial_start + 9,
                        )
                    )
                ],
                entity_id="steel-01",
                compliance_year=2024,
                jurisdiction="shenzhen",
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CL-MIGRATION-0001" in (refused.value.details() or "")

    # Nor can its record gain a year on the wrong side of the move.
    for jurisdiction, year in [("national", 2023), ("shenzhen", 2024)]:
        with pytest.raises(grpc.RpcError) as misplaced:
            _record_steel_year(world, f"late-{jurisdiction}", "steel-01", jurisdiction, year, 1, 1)
        assert misplaced.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "moved from shenzhen to national from 2024" in (misplaced.value.details() or "")

    # Offsets used in the pilot cannot be used again in the national ETS.
    with pytest.raises(grpc.RpcError) as twice:
        world.stub.Surrender(
            gateway_pb2.SurrenderRequest(
                request_id="ccer-again",
                account=model_pb2.AccountRef(registry="national", account="cn-steel-01"),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(
                            program="CCER",
                            serial_start=ccer.serial_start,
                            serial_end=ccer.serial_start + 99,
                        )
                    )
                ],
                entity_id="steel-01",
                compliance_year=2024,
                jurisdiction="national",
            ),
            timeout=30,
        )
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Nor can the pilot's mirror of them be moved or used again.
    assert mirror.serial_start > 0
    world.check_invariants()


def test_an_aviation_plan_warns_that_the_national_year_is_unconfirmed(world: World) -> None:
    aviation = pilot_entity("air-01", "civil_aviation", 2024, 2_000_000)
    _seeded(world, aviation)
    plan = world.stub.PlanMigration(
        migration_request(aviation, acknowledged=[ACCEPT_UNCONFIRMED]), timeout=60
    )
    assert plan.executable, list(plan.blocking_violations)
    assert "CL-MIGRATION-0012" in {w.rule_id for w in plan.warnings}
    migration = _execute(world, aviation)
    assert migration.state == "completed", migration.failure_reason
    world.check_invariants()


def test_a_driver_that_read_the_cancel_step_before_another_took_it_changes_nothing(
    world: World,
) -> None:
    """Two drivers of one migration (a request and the recovery loop, or two gateways) may
    both read its cancel step as pending. The one whose turn at the ledger comes second
    must find the step taken, under the step's lock, and leave it: not try the
    cancellation again, find the units already cancelled and fail the migration."""
    steel = pilot_entity("steel-02", "steel", 2023, 1_000_000)
    _seeded(world, steel)
    migration = _execute(world, steel)
    assert migration.state == "completed", migration.failure_reason
    engine = db.create_engine(world.database_url)
    try:
        with db.session_factory(engine)() as session:
            by_request = MigrationRecord.request_id == "migrate-steel-02"
            migration_id = session.execute(
                sa.select(MigrationRecord.id).where(by_request)
            ).scalar_one()
            step = session.execute(
                sa.select(MigrationStepRecord).where(
                    MigrationStepRecord.migration_id == migration_id,
                    MigrationStepRecord.kind == "cancel",
                )
            ).scalar_one()
            seq, detail = step.seq, json.loads(step.detail)
    finally:
        engine.dispose()

    # The late driver goes on from the state it read: the step was still pending then.
    assert world.server.migrations._cancel(migration_id, seq, detail, "pending") is True

    after = world.server.migrations.get(migration_id)
    assert after.state == "completed", after.failure_reason
    assert [s.state for s in after.steps] == [s.state for s in migration.steps]
    sza = steel.sza.id
    cut = sza.serial_start + 46_000
    assert statuses(world.ports["shenzhen"], sza)[(cut, sza.serial_end)] == HoldingStatus.CANCELLED
    world.check_invariants()


def _record_steel_year(
    world: World,
    request_id: str,
    entity_id: str,
    jurisdiction: str,
    year: int,
    verified: int,
    due: int,
) -> None:
    """UpsertCoveredEntity: one compliance year of a steel entity."""
    world.stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id=request_id,
            entity=gateway_pb2.CoveredEntity(
                entity_id=entity_id,
                sector="steel",
                gases=["CO2"],
                years=[
                    gateway_pb2.ComplianceYear(
                        jurisdiction=jurisdiction,
                        compliance_year=year,
                        verified_emissions=verified,
                        allowances_due=due,
                    )
                ],
            ),
        ),
        timeout=30,
    )


def test_a_late_first_year_and_an_amount_due_below_emissions_are_flagged(world: World) -> None:
    steel = pilot_entity("steel-03", "steel", 2023, 4_000_000)
    seed_registries(world.ports, steel)
    world.server.import_registries()
    record_entity(world.stub, steel)
    # Recorded as owing nothing for 2023, though it emitted 60,000 t.
    _record_steel_year(world, "steel-03-due", "steel-03", "shenzhen", 2023, 60_000, 0)
    late = gateway_pb2.PlanMigrationRequest(
        entity_id="steel-03",
        from_jurisdiction="shenzhen",
        to_jurisdiction="national",
        first_year=2026,
        acknowledged_warnings=[ACCEPT_UNCONFIRMED],
    )
    plan = world.stub.PlanMigration(late, timeout=60)
    warned = {w.rule_id: w.message for w in plan.warnings}
    assert "years 2024-2025 stay in the pilot" in warned["CL-MIGRATION-0016"]
    assert "below its verified emissions of 60000" in warned["CL-MIGRATION-0017"]


def test_every_blocking_violation_is_listed(world: World) -> None:
    steel = pilot_entity("steel-02", "steel", 2023, 3_000_000)
    seed_registries(world.ports, steel)
    world.server.import_registries()
    record_entity(world.stub, steel)
    # The national ETS already has a 2023 year for it, and nothing was surrendered in 2023.
    _record_steel_year(world, "steel-02-national", "steel-02", "national", 2023, 1, 1)
    plan = world.stub.PlanMigration(migration_request(steel), timeout=60)
    assert not plan.executable
    ids = {v.rule_id for v in plan.blocking_violations}
    assert {"CL-MIGRATION-0005", "CL-MIGRATION-0007"} <= ids
    early = world.stub.PlanMigration(
        gateway_pb2.PlanMigrationRequest(
            entity_id="steel-02",
            from_jurisdiction="shenzhen",
            to_jurisdiction="national",
            first_year=2023,
        ),
        timeout=60,
    )
    assert "CL-MIGRATION-0011" in {v.rule_id for v in early.blocking_violations}
    with pytest.raises(grpc.RpcError) as caught:
        _execute(world, steel)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CL-MIGRATION-0005" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as unknown:
        world.stub.PlanMigration(
            gateway_pb2.PlanMigrationRequest(
                entity_id="nobody",
                from_jurisdiction="shenzhen",
                to_jurisdiction="national",
                first_year=2024,
            ),
            timeout=30,
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_name_the_field(world: World) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        world.stub.PlanMigration(gateway_pb2.PlanMigrationRequest(entity_id="x"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_jurisdiction" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        world.stub.UpsertCoveredEntity(
            gateway_pb2.UpsertCoveredEntityRequest(
                request_id="bad", entity=gateway_pb2.CoveredEntity(entity_id="e", gases=["H2O"])
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entity.gases[0]" in (caught.value.details() or "")


def test_block_id_of_a_pilot_unit_is_canonical() -> None:
    steel = pilot_entity("steel-03", "steel", 2023, 4_000_000)
    assert steel.sza.id == BlockId(steel.sza.id.program, "", 4_000_001, 4_060_000)
