"""The covered-entity journey: a Shenzhen steel entity moves to the national ETS.

Used by ``carbonlink demo`` and by the end-to-end tests, which seed the same pilot
entities: the registries issue the units natively (through their own APIs), the gateway
learns of them, the entity settles its final pilot year with allowances and CCER, then
plans and executes its migration over gRPC.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import parse_serial
from gateway import demo_security
from registry_bridge.model import BlockId, HoldingStatus, UnitBlock
from registry_bridge.port import BlockStatusRequest, IssueRequest, RegistryPort


class JourneyFailure(Exception):
    """The journey did not end as it must."""


@dataclass(frozen=True)
class PilotEntity:
    """A Shenzhen covered entity seeded at the registries, and its final pilot year."""

    entity_id: str
    display_name: str
    sector: str
    gases: tuple[str, ...]
    shenzhen_account: str
    national_account: str
    final_year: int
    verified_emissions: int
    sza: UnitBlock
    ccer: UnitBlock
    sz_ci: UnitBlock

    @property
    def first_national_year(self) -> int:
        """The year the national ETS covers first."""
        return self.final_year + 1


def pilot_entity(entity_id: str, sector: str, final_year: int, base: int) -> PilotEntity:
    """A pilot entity whose serials start at ``base`` (distinct per entity)."""
    gases = ("CO2", "CF4", "C2F6") if sector == "aluminium" else ("CO2",)
    ccer = parse_serial(
        "national",
        f"CN-CCER-{base + 1}-{base + 5_000}-{final_year}0101-{final_year}1231-HI-0001",
    )
    return PilotEntity(
        entity_id=entity_id,
        display_name=f"{entity_id} ({sector})",
        sector=sector,
        gases=gases,
        shenzhen_account=f"sz-{entity_id}",
        national_account=f"cn-{entity_id}",
        final_year=final_year,
        verified_emissions=50_000,
        sza=parse_serial("shenzhen", f"SZA-{final_year}-{base + 1}-{base + 60_000}"),
        # Forestry sinks are eligible in Shenzhen with no origin limit (2015 rule).
        ccer=dataclasses.replace(ccer, project_type="forestry_sink"),
        sz_ci=parse_serial(
            "shenzhen",
            f"SZ-CI-{base + 1}-{base + 3_000}-{final_year}0101-{final_year}1231-GD-SZCI001",
        ),
    )


def seed_registries(ports: Mapping[str, RegistryPort], entity: PilotEntity) -> None:
    """The registries issue the entity's units natively (before the gateway learns of them)."""
    seed = uuid.uuid4().hex[:8]
    ports["shenzhen"].issue(IssueRequest(f"seed-sza-{seed}", entity.shenzhen_account, entity.sza))
    ports["shenzhen"].issue(
        IssueRequest(f"seed-szci-{seed}", entity.shenzhen_account, entity.sz_ci)
    )
    ports["national"].issue(IssueRequest(f"seed-ccer-{seed}", entity.national_account, entity.ccer))


def _block(block: BlockId) -> model_pb2.BlockId:
    return model_pb2.BlockId(
        program=block.program.value,
        serial_series=block.serial_series,
        serial_start=block.serial_start,
        serial_end=block.serial_end,
    )


def record_entity(
    gateway: gateway_pb2_grpc.LinkageGatewayStub, entity: PilotEntity
) -> gateway_pb2.CoveredEntity:
    """UpsertCoveredEntity: sector, gases, both accounts and the final pilot year."""
    reply: gateway_pb2.CoveredEntity = gateway.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id=f"entity-{entity.entity_id}-{uuid.uuid4().hex[:8]}",
            entity=gateway_pb2.CoveredEntity(
                entity_id=entity.entity_id,
                display_name=entity.display_name,
                sector=entity.sector,
                gases=list(entity.gases),
                accounts=[
                    model_pb2.AccountRef(registry="shenzhen", account=entity.shenzhen_account),
                    model_pb2.AccountRef(registry="national", account=entity.national_account),
                ],
                years=[
                    gateway_pb2.ComplianceYear(
                        jurisdiction="shenzhen",
                        compliance_year=entity.final_year,
                        verified_emissions=entity.verified_emissions,
                        allowances_due=entity.verified_emissions,
                    )
                ],
            ),
        ),
        timeout=30,
    )
    return reply


def settle_final_pilot_year(
    gateway: gateway_pb2_grpc.LinkageGatewayStub, entity: PilotEntity, offsets: int = 4_000
) -> model_pb2.BlockId:
    """Bring the CCER to Shenzhen and surrender allowances plus ``offsets`` CCER for the year.

    Returns the Shenzhen mirror of the CCER (its first ``offsets`` units are surrendered).
    """
    moved: model_pb2.Transfer = gateway.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id=f"ccer-in-{entity.entity_id}",
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="national", account=entity.national_account),
                destination=model_pb2.AccountRef(
                    registry="shenzhen", account=entity.shenzhen_account
                ),
                units=[model_pb2.UnitSelector(block=_block(entity.ccer.id))],
            ),
        ),
        timeout=60,
    )
    if moved.state != model_pb2.TRANSFER_STATE_COMPLETED:
        raise JourneyFailure(f"CCER did not reach Shenzhen: {moved.failure_reason}")
    mirror = moved.credited_blocks[0].id
    allowances = entity.verified_emissions - offsets
    sza = entity.sza.id
    gateway.Surrender(
        gateway_pb2.SurrenderRequest(
            request_id=f"surrender-{entity.entity_id}-{entity.final_year}",
            account=model_pb2.AccountRef(registry="shenzhen", account=entity.shenzhen_account),
            units=[
                model_pb2.UnitSelector(
                    block=_block(
                        BlockId(
                            sza.program, "", sza.serial_start, sza.serial_start + allowances - 1
                        )
                    )
                ),
                model_pb2.UnitSelector(
                    block=model_pb2.BlockId(
                        program=mirror.program,
                        serial_series=mirror.serial_series,
                        serial_start=mirror.serial_start,
                        serial_end=mirror.serial_start + offsets - 1,
                    )
                ),
            ],
            entity_id=entity.entity_id,
            compliance_year=entity.final_year,
            jurisdiction="shenzhen",
        ),
        timeout=60,
    )
    return mirror


def migration_request(
    entity: PilotEntity, acknowledged: Sequence[str] = ()
) -> gateway_pb2.PlanMigrationRequest:
    """PlanMigration's request: from Shenzhen to the national ETS from the next year."""
    return gateway_pb2.PlanMigrationRequest(
        entity_id=entity.entity_id,
        from_jurisdiction="shenzhen",
        to_jurisdiction="national",
        first_year=entity.first_national_year,
        acknowledged_warnings=acknowledged,
    )


def statuses(port: RegistryPort, block: BlockId) -> dict[tuple[int, int], HoldingStatus]:
    """What a registry reports for a block, by sub-range (its own API, not the gateway's)."""
    return {
        (h.block.id.serial_start, h.block.id.serial_end): h.status
        for h in port.block_status(BlockStatusRequest(block))
    }


DEMO_ENTITY = pilot_entity("sz-steel-demo", "steel", 2023, 70_000_000)
"""The demo's steel works: its serials sit far from every other journey's."""


def journey_covered_entity(
    workdir: Path, target: str, ports: Mapping[str, RegistryPort], learn: Callable[[], object]
) -> None:
    """The covered-entity journey of ``carbonlink demo``.

    The regulator records the entity; the entity itself (a covered-entity token naming its
    two accounts and itself) settles its final pilot year and migrates.

    Args:
        workdir: The demo's directory (its TLS material and keys).
        target: The gateway's address.
        ports: Adapters of the emulated registries (to seed and to read back).
        learn: Makes the gateway import what the registries issued (start-up import).
    """
    entity = DEMO_ENTITY
    accounts = (f"shenzhen:{entity.shenzhen_account}", f"national:{entity.national_account}")
    with (
        demo_security.channel(workdir, target, "regulator") as regulator,
        demo_security.channel(
            workdir, target, "covered_entity", accounts=accounts, entities=(entity.entity_id,)
        ) as channel,
    ):
        _journey(regulator, channel, entity, ports, learn)


def _journey(
    regulator: grpc.Channel,
    channel: grpc.Channel,
    entity: PilotEntity,
    ports: Mapping[str, RegistryPort],
    learn: Callable[[], object],
) -> None:
    say = print
    say()
    say("== covered entity: a Shenzhen steel works moves to the national ETS")
    gateway = gateway_pb2_grpc.LinkageGatewayStub(channel)
    seed_registries(ports, entity)
    learn()
    record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), entity)
    say(f"   {entity.entity_id}: sector steel, final pilot year {entity.final_year}")
    settle_final_pilot_year(gateway, entity)
    say(f"   surrendered {entity.verified_emissions} units for {entity.final_year} (SZA + CCER)")
    plan: gateway_pb2.MigrationPlan = gateway.PlanMigration(migration_request(entity), timeout=60)
    say(
        f"   PlanMigration ({plan.pack_version}): final pilot year {plan.final_pilot_year}, "
        f"due {plan.allowances_due}, surrendered {plan.units_surrendered}, "
        f"shortfall {plan.shortfall}"
    )
    for d in plan.dispositions:
        block = d.holding.block.id
        say(
            f"     {d.action:14} {block.program:6} {block.serial_start}-{block.serial_end} "
            f"({d.reason})"
        )
    for w in plan.warnings:
        say(f"     warning {w.rule_id}: {w.message}")
    for v in plan.blocking_violations:
        say(f"     blocked {v.rule_id}: {v.message}")
    irreversible = [v for v in plan.blocking_violations if v.rule_id == "CL-MIGRATION-0015"]
    if not irreversible or len(irreversible) != len(plan.blocking_violations):
        raise JourneyFailure(f"expected only the cancellation to wait: {plan.blocking_violations}")
    # The entity has read the pack's note on its SZA and accepts their cancellation.
    accepted = migration_request(entity, acknowledged=["CL-MIGRATION-0014"])
    plan = gateway.PlanMigration(accepted, timeout=60)
    if not plan.executable:
        raise JourneyFailure(f"the migration is blocked: {list(plan.blocking_violations)}")
    say("   the entity acknowledges CL-MIGRATION-0014: the plan is executable")
    request = gateway_pb2.ExecuteMigrationRequest(
        request_id=f"migrate-{entity.entity_id}", plan=accepted
    )
    migration: gateway_pb2.Migration = gateway.ExecuteMigration(request, timeout=120)
    for step in migration.steps:
        say(f"     step {step.seq} {step.kind:8} {step.state:6} {step.description}")
    say(f"   {migration.name}: {migration.state}")
    if migration.state != "completed":
        raise JourneyFailure(f"{migration.name} ended {migration.state}")
    again: gateway_pb2.Migration = gateway.ExecuteMigration(request, timeout=60)
    if list(again.steps) != list(migration.steps):
        raise JourneyFailure("a repeated ExecuteMigration changed the migration")
    say("   ExecuteMigration repeated: same migration, nothing done twice")
    try:
        gateway.Surrender(
            gateway_pb2.SurrenderRequest(
                request_id=f"late-{entity.entity_id}",
                account=model_pb2.AccountRef(registry="shenzhen", account=entity.shenzhen_account),
                units=[
                    model_pb2.UnitSelector(
                        block=_block(
                            BlockId(
                                entity.sz_ci.id.program,
                                "",
                                entity.sz_ci.id.serial_start,
                                entity.sz_ci.id.serial_start + 9,
                            )
                        )
                    )
                ],
                entity_id=entity.entity_id,
                compliance_year=entity.first_national_year,
                jurisdiction="shenzhen",
            ),
            timeout=60,
        )
    except grpc.RpcError as exc:
        say(f"   a Shenzhen surrender for {entity.first_national_year} is refused: {exc.details()}")
    else:
        raise JourneyFailure("the pilot accepted a surrender for a national year")
