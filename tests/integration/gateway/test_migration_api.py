"""Covered entities moving from the Shenzhen pilot to the national ETS, over real gRPC.

A steel entity and an aviation entity settle their final pilot year, plan and execute their
migration; the registries (read through their own APIs) and the ledger's invariants are
checked afterwards, and so are the refusals that keep a year from being covered twice and
an offset from being used twice. A power entity, in the national ETS from its first cycle
(2019-2020), surrenders for those years under the rules they were complied under.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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
from gateway.migration_api import MAX_ACKNOWLEDGED_WARNINGS
from gateway.server import GatewayServer
from registry_bridge import db, invariants
from registry_bridge.errors import FailedPrecondition
from registry_bridge.migration import MigrationRequest, Migrations
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import IssueRequest, RegistryPort
from registry_bridge.schema import MigrationRecord, MigrationStepRecord
from tests.loopback import ANY_PORT, HOST

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
    emulators = {
        r: start_emulator(REGISTRIES[r].emulator(), listen=ANY_PORT) for r in MIGRATION_REGISTRIES
    }
    try:
        yield emulators
    finally:
        for emulator in emulators.values():
            emulator.stop()


@pytest.fixture
def world(database_url: str, pilot_registries: dict[str, RunningEmulator]) -> Iterator[World]:
    config = GatewayConfig(
        listen=ANY_PORT,
        database_url=database_url,
        registries=tuple(RegistryEndpoint(r, e.target) for r, e in pilot_registries.items()),
        recovery_interval_seconds=3600,
        # A registry that stops answering is retried as often, only sooner: the waits
        # between the attempts are not under test, and came to 1.5 s a call.
        registry_retry_initial_wait_seconds=0.01,
        registry_retry_max_wait_seconds=0.02,
        insecure=True,
    )
    server = GatewayServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"{HOST}:{port}")
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


def _unknown_to_the_pilot(world: World, case: str) -> PilotEntity:
    """An entity recorded in the gateway whose Shenzhen account the registry does not know.

    ``typo``: a settled steel entity, recorded again with a mistyped Shenzhen account.
    ``unknown``: an entity the pilot registry never heard of, recorded as owing nothing,
    so that nothing else would stop its migration.
    """
    if case == "typo":
        steel = pilot_entity("steel-04", "steel", 2023, 7_000_000)
        _seeded(world, steel)
        typo = dataclasses.replace(steel, shenzhen_account="sz-steel-O4")
        record_entity(world.stub, typo)
        return typo
    ghost = pilot_entity("ghost-01", "steel", 2023, 8_000_000)
    record_entity(world.stub, ghost)
    _record_steel_year(world, "ghost-01-due", "ghost-01", "shenzhen", 2023, 0, 0)
    return ghost


def _migration_count(world: World) -> int:
    engine = db.create_engine(world.database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).select_from(MigrationRecord)
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("case", ["typo", "unknown"])
def test_an_account_the_pilot_registry_does_not_know_is_refused_before_anything_changes(
    world: World, case: str
) -> None:
    entity = _unknown_to_the_pilot(world, case)
    before = statuses(world.ports["shenzhen"], entity.sza.id)

    plan = world.stub.PlanMigration(
        migration_request(entity, acknowledged=[ACCEPT_UNCONFIRMED]), timeout=60
    )
    assert not plan.executable
    [unknown] = plan.blocking_violations
    assert unknown.rule_id == "CL-MIGRATION-0018"
    assert unknown.message.startswith(
        f"the shenzhen registry knows no account {entity.shenzhen_account} "
        f"(recorded for {entity.entity_id})"
    )
    assert dict(unknown.details) == {"registry": "shenzhen", "account": entity.shenzhen_account}

    with pytest.raises(grpc.RpcError) as refused:
        _execute(world, entity)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"CL-MIGRATION-0018: {unknown.message}" in (refused.value.details() or "")
    status = rpc_status.from_call(refused.value)
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [("MIGRATION", "CL-MIGRATION-0018")]

    # Nothing changed: no migration is recorded, and the pilot's units are as they were.
    assert _migration_count(world) == 0
    assert statuses(world.ports["shenzhen"], entity.sza.id) == before
    world.check_invariants()


def test_once_its_account_is_corrected_the_refused_entity_migrates(world: World) -> None:
    typo = _unknown_to_the_pilot(world, "typo")
    with pytest.raises(grpc.RpcError):
        _execute(world, typo)
    steel = dataclasses.replace(typo, shenzhen_account="sz-steel-04")
    record_entity(world.stub, steel)
    migration = _execute(world, steel)
    assert migration.state == "completed", migration.failure_reason
    sza = steel.sza.id
    assert (
        statuses(world.ports["shenzhen"], sza)[(sza.serial_start + 46_000, sza.serial_end)]
        == HoldingStatus.CANCELLED
    )
    world.check_invariants()


def test_a_pilot_registry_the_gateway_is_not_wired_to_cannot_confirm_the_account(
    world: World,
) -> None:
    steel = pilot_entity("steel-06", "steel", 2023, 10_000_000)
    _seeded(world, steel)
    national_only = Migrations(
        world.server.bridge,
        {"national": world.ports["national"]},
        clock=world.server.migrations.now,
    )
    request = MigrationRequest(
        "steel-06", "shenzhen", "national", 2024, frozenset({ACCEPT_UNCONFIRMED})
    )
    plan = national_only.plan(request)
    [unwired] = plan.blocking
    assert unwired.rule_id == "CL-MIGRATION-0018"
    assert unwired.message == (
        "the shenzhen registry is not wired in this gateway, so account sz-steel-06 "
        "(recorded for steel-06) cannot be confirmed there"
    )
    with pytest.raises(FailedPrecondition, match="CL-MIGRATION-0018"):
        national_only.execute("migrate-steel-06", request)
    assert _migration_count(world) == 0


def test_a_pilot_registry_that_does_not_answer_is_unavailable_and_nothing_is_recorded(
    world: World, pilot_registries: dict[str, RunningEmulator]
) -> None:
    steel = pilot_entity("steel-07", "steel", 2023, 11_000_000)
    _seeded(world, steel)
    pilot_registries["shenzhen"].stop(grace=0)
    with pytest.raises(grpc.RpcError) as planned:
        world.stub.PlanMigration(
            migration_request(steel, acknowledged=[ACCEPT_UNCONFIRMED]), timeout=60
        )
    with pytest.raises(grpc.RpcError) as executed:
        _execute(world, steel)
    for caught in (planned, executed):
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "registry shenzhen unavailable" in (caught.value.details() or "")
    assert _migration_count(world) == 0


def test_a_plan_asks_the_pilot_registry_once_whatever_the_entity_holds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account check is one lookup per plan, not a round trip per unit."""
    steel = pilot_entity("steel-05", "steel", 2023, 9_000_000)
    _seeded(world, steel)
    calls: list[tuple[str, str]] = []
    for registry, port in world.server.adapters.items():
        for name in _PORT_CALLS:
            monkeypatch.setattr(port, name, _recording(calls, registry, name, getattr(port, name)))
    plan = world.stub.PlanMigration(
        migration_request(steel, acknowledged=[ACCEPT_UNCONFIRMED]), timeout=60
    )
    assert plan.executable, list(plan.blocking_violations)
    assert len(plan.dispositions) == 3  # SZA, SZ-CI and the CCER mirror
    assert calls == [("shenzhen", "list_holdings")]


_PORT_CALLS = (
    "issue",
    "block_status",
    "lock",
    "unlock",
    "finalize",
    "credit",
    "retire",
    "surrender",
    "cancel",
    "list_holdings",
    "totals",
    "lock_many",
    "credit_many",
    "finalize_many",
)
"""Every call of :class:`~registry_bridge.port.RegistryPort` that reaches a registry."""


def _recording(
    calls: list[tuple[str, str]], registry: str, name: str, call: Callable[..., Any]
) -> Callable[..., Any]:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append((registry, name))
        return call(*args, **kwargs)

    return recorded


def test_a_power_entity_surrenders_for_the_national_first_cycle(world: World) -> None:
    """The national ETS's first cycle (2019-2020) was complied under the 2021 measures: a
    surrender for 2019 or 2020 is decided under them, not refused for want of a version."""
    power = pilot_entity("power-01", "power", 2019, 5_000_000)
    world.ports["national"].issue(
        IssueRequest("seed-power-ccer", power.national_account, power.ccer)
    )
    world.server.import_registries()
    world.stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id="power-01",
            entity=gateway_pb2.CoveredEntity(
                entity_id="power-01",
                sector="power",
                gases=["CO2"],
                accounts=[
                    model_pb2.AccountRef(registry="national", account=power.national_account)
                ],
                years=[
                    gateway_pb2.ComplianceYear(
                        jurisdiction="national",
                        compliance_year=year,
                        verified_emissions=20_000,
                        allowances_due=20_000,
                    )
                    for year in (2019, 2020)
                ],
            ),
        ),
        timeout=30,
    )
    ccer = power.ccer.id

    def surrender(year: int, start: int, end: int) -> model_pb2.UnitUse:
        used: model_pb2.UnitUse = world.stub.Surrender(
            gateway_pb2.SurrenderRequest(
                request_id=f"power-01-{year}-{start}",
                account=model_pb2.AccountRef(registry="national", account=power.national_account),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(
                            program="CCER",
                            serial_start=ccer.serial_start + start,
                            serial_end=ccer.serial_start + end,
                        )
                    )
                ],
                entity_id="power-01",
                compliance_year=year,
                jurisdiction="national",
            ),
            timeout=30,
        )
        return used

    # 5% of 20,000 due: 1,000 CCER at most.
    used = surrender(2019, 0, 999)
    assert used.decision.allowed
    assert "national@2021-02-01" in used.decision.pack_versions
    with pytest.raises(grpc.RpcError) as over:
        surrender(2020, 1_000, 2_000)
    assert over.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = over.value.details() or ""
    assert "CR-NAT-0002" in details and "no version in force" not in details
    world.check_invariants()


def test_bad_requests_name_the_field(world: World) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        world.stub.PlanMigration(gateway_pb2.PlanMigrationRequest(entity_id="x"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "from_jurisdiction" in (caught.value.details() or "")
    flood = gateway_pb2.PlanMigrationRequest(
        entity_id="steel-01",
        from_jurisdiction="shenzhen",
        to_jurisdiction="national",
        first_year=2026,
        acknowledged_warnings=[ACCEPT_UNCONFIRMED] * (MAX_ACKNOWLEDGED_WARNINGS + 1),
    )
    with pytest.raises(grpc.RpcError) as caught:
        world.stub.ExecuteMigration(
            gateway_pb2.ExecuteMigrationRequest(request_id="flood", plan=flood), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "") == (
        f"plan.acknowledged_warnings: holds more than {MAX_ACKNOWLEDGED_WARNINGS} warning codes"
    )
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
