"""Whose compliance a surrender counts for, over a real secure gateway.

A surrender is recorded against the covered entity it names: it counts toward that
entity's obligation and uses up its offset allowance for the year. A caller therefore
surrenders only for an entity its token names (``entities``), as it executes only its own
migration; otherwise any holder of units could spend another entity's offset limit, or
read its figures in the refusal.
"""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway import demo_security
from gateway.demo_migration import PilotEntity, pilot_entity, record_entity, seed_registries
from registry_bridge.schema import LedgerEvent
from tests.integration.security.conftest import SecureGateway

VICTIM = pilot_entity("steel-a", "steel", 2023, 12_000_000)
ACTOR = pilot_entity("steel-b", "steel", 2023, 13_000_000)


@pytest.fixture
def gateway(national_gateway: SecureGateway) -> SecureGateway:
    return national_gateway


def _surrender(
    actor: PilotEntity, for_entity: str, request_id: str
) -> gateway_pb2.SurrenderRequest:
    """Ten of ``actor``'s own Shenzhen allowances, surrendered for ``for_entity``."""
    sza = actor.sza.id
    return gateway_pb2.SurrenderRequest(
        request_id=request_id,
        account=model_pb2.AccountRef(registry="shenzhen", account=actor.shenzhen_account),
        units=[
            model_pb2.UnitSelector(
                block=model_pb2.BlockId(
                    program=sza.program.value,
                    serial_start=sza.serial_start,
                    serial_end=sza.serial_start + 9,
                )
            )
        ],
        entity_id=for_entity,
        compliance_year=actor.final_year,
        jurisdiction="shenzhen",
    )


def _events(gateway: SecureGateway) -> int:
    with gateway.server.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(LedgerEvent)).scalar_one()
        )


def test_a_surrender_for_an_entity_the_token_does_not_name_is_refused(
    gateway: SecureGateway,
) -> None:
    for entity in (VICTIM, ACTOR):
        seed_registries(gateway.ports, entity)
    gateway.server.import_registries()
    workdir = gateway.pki.root.parent
    with demo_security.channel(workdir, gateway.target, "regulator") as regulator:
        for entity in (VICTIM, ACTOR):
            record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), entity)
    with demo_security.channel(
        workdir,
        gateway.target,
        "covered_entity",
        accounts=[f"shenzhen:{ACTOR.shenzhen_account}"],
        entities=[ACTOR.entity_id],
    ) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        before = _events(gateway)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Surrender(_surrender(ACTOR, VICTIM.entity_id, "for-them"), timeout=60)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"entity_id: the caller's token does not name entity {VICTIM.entity_id!r}" in (
            caught.value.details() or ""
        )
        assert _events(gateway) == before
        # The same units, for the entity the token names: the caller's own compliance.
        own = stub.Surrender(_surrender(ACTOR, ACTOR.entity_id, "for-us"), timeout=60)
        assert own.name
