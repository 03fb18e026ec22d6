"""Failed uses and a migration, over real gRPC on both databases.

A surrender an operator settled by hand counts in the plan's surrendered units like a
completed one.

The failed uses are real: the Shenzhen emulator refuses a scripted ``Fulfil`` (its
retirement and surrender call) for good, after an earlier leg of the same use was done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal, utc_now
from gateway.demo_migration import (
    PilotEntity,
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
)
from registry_bridge.model import BlockId, Program
from registry_bridge.port import SurrenderRequest
from tests.integration.gateway.conftest import (
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)

ACCEPT_UNCONFIRMED = "CL-MIGRATION-0014"
SETTLE_FULFILS = 2
"""Shenzhen ``Fulfil`` calls of settle_final_pilot_year: its SZA and its CCER mirror."""


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
            registry_retry_initial_wait_seconds=0.01,
            registry_retry_max_wait_seconds=0.02,
        ) as gateway,
    ):
        yield gateway, registries


def _seeded(gateway: LiveGateway, registries: LinkedRegistries, entity: PilotEntity) -> None:
    seed_registries(registries.ports, entity)
    gateway.server.import_registries()
    record_entity(gateway.stub, entity)


def _plan(gateway: LiveGateway, entity: PilotEntity) -> gateway_pb2.MigrationPlan:
    plan: gateway_pb2.MigrationPlan = gateway.stub.PlanMigration(
        migration_request(entity, acknowledged=[ACCEPT_UNCONFIRMED]), timeout=60
    )
    return plan


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
