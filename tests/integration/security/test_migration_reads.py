"""Who reads a migration, over a real secure gateway: mutual TLS, tokens, signed instructions.

A Shenzhen steel entity settles its final pilot year and migrates to the national ETS
through its own channel (a covered-entity token naming it and its two accounts, every
instruction signed with its key). Then each party asks for the migration by name: the
entity, the auditor and the regulator read it; anyone else is answered NOT_FOUND, word for
word as for a migration that does not exist, so a name tells a stranger nothing. The
gateway has no call that lists migrations, so GetMigration is the only read there is.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest
import sqlalchemy as sa
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from gateway import demo_security
from gateway.demo_migration import (
    PilotEntity,
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
)
from registry_bridge.schema import TransferRecord
from tests.integration.security.conftest import SecureGateway

STEEL = pilot_entity("steel-a", "steel", 2023, 12_000_000)
STEEL_ACCOUNTS = (f"shenzhen:{STEEL.shenzhen_account}", f"national:{STEEL.national_account}")
OTHER = pilot_entity("steel-b", "steel", 2023, 13_000_000)
OTHER_ACCOUNTS = (f"shenzhen:{OTHER.shenzhen_account}", f"national:{OTHER.national_account}")


@pytest.fixture
def gateway(national_gateway: SecureGateway) -> SecureGateway:
    return national_gateway


def _party(
    gateway: SecureGateway,
    role: str,
    accounts: Sequence[str] = (),
    entities: Sequence[str] = (),
) -> grpc.Channel:
    """A channel of ``role``: its client certificate, a token naming ``accounts`` and
    ``entities``, and its instructions signed with its key."""
    workdir = gateway.pki.root.parent
    return demo_security.channel(
        workdir, gateway.target, role, accounts=accounts, entities=entities
    )


def _migrate(gateway: SecureGateway, entity: PilotEntity, accounts: Sequence[str]) -> str:
    """The regulator records the entity; the entity settles its final year and migrates.

    Returns the migration's name.
    """
    seed_registries(gateway.ports, entity)
    gateway.server.import_registries()
    with _party(gateway, "regulator") as regulator:
        record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), entity)
    with _party(gateway, "covered_entity", accounts, (entity.entity_id,)) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        settle_final_pilot_year(stub, entity)
        migration: gateway_pb2.Migration = stub.ExecuteMigration(
            gateway_pb2.ExecuteMigrationRequest(
                request_id=f"migrate-{entity.entity_id}",
                plan=migration_request(entity, acknowledged=["CL-MIGRATION-0014"]),
            ),
            timeout=120,
        )
    assert migration.state == "completed", migration.failure_reason
    return migration.name


def test_a_migration_is_read_by_its_entity_the_auditor_and_the_regulator_only(
    gateway: SecureGateway,
) -> None:
    name = _migrate(gateway, STEEL, STEEL_ACCOUNTS)
    missing = "migrations/" + "0" * 32

    def not_found(stub: gateway_pb2_grpc.LinkageGatewayStub, asked: str) -> tuple[object, ...]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetMigration(gateway_pb2.GetMigrationRequest(name=asked), timeout=10)
        status = rpc_status.from_call(caught.value)
        details = () if status is None else tuple(status.details)
        return caught.value.code(), caught.value.details(), details

    def reads(role: str, accounts: Sequence[str], entities: Sequence[str]) -> bool:
        with _party(gateway, role, accounts, entities) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            absent = not_found(stub, missing)
            assert absent == (grpc.StatusCode.NOT_FOUND, f"{missing} not found", ())
            try:
                found = stub.GetMigration(gateway_pb2.GetMigrationRequest(name=name), timeout=10)
            except grpc.RpcError:
                # Answered as the migration that does not exist is: code, words and details.
                assert not_found(stub, name) == (
                    grpc.StatusCode.NOT_FOUND,
                    f"{name} not found",
                    (),
                )
                return False
            assert found.name == name and found.state == "completed"
            assert found.plan.entity_id == STEEL.entity_id
            return True

    parties = {
        "the entity": ("covered_entity", STEEL_ACCOUNTS, [STEEL.entity_id]),
        "another entity": ("covered_entity", OTHER_ACCOUNTS, [OTHER.entity_id]),
        # Migrations are read by entity, not by account: the accounts alone are not enough.
        "the entity's accounts, not the entity": ("covered_entity", STEEL_ACCOUNTS, []),
        "an exchange operator": ("exchange_operator", ["hkmo:hk-seller"], []),
        "an issuer": ("issuer", [], []),
        "a registry": ("registry", [], []),
        "the auditor": ("auditor", [], []),
        "the regulator": ("regulator", [], []),
    }
    seen = {who: reads(*party) for who, party in parties.items()}
    assert seen == {
        "the entity": True,
        "another entity": False,
        "the entity's accounts, not the entity": False,
        "an exchange operator": False,
        "an issuer": False,
        "a registry": False,
        "the auditor": True,
        "the regulator": True,
    }


def test_each_entity_reads_its_own_migration_and_not_the_others(gateway: SecureGateway) -> None:
    steel = _migrate(gateway, STEEL, STEEL_ACCOUNTS)
    other = _migrate(gateway, OTHER, OTHER_ACCOUNTS)
    for entity, accounts, own, foreign in [
        (STEEL, STEEL_ACCOUNTS, steel, other),
        (OTHER, OTHER_ACCOUNTS, other, steel),
    ]:
        with _party(gateway, "covered_entity", accounts, [entity.entity_id]) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            found = stub.GetMigration(gateway_pb2.GetMigrationRequest(name=own), timeout=10)
            assert found.plan.entity_id == entity.entity_id
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetMigration(gateway_pb2.GetMigrationRequest(name=foreign), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == f"{foreign} not found"


def test_entities_of_one_token_subject_share_request_ids_and_a_reuse_names_nothing(
    gateway: SecureGateway,
) -> None:
    """Request ids are scoped per token subject, and the demo's PKI gives every covered
    entity the same one: reusing another entity's id (the CLI's default is guessable:
    entity and years) is refused without naming its migration."""
    steel = _migrate(gateway, STEEL, STEEL_ACCOUNTS)
    seed_registries(gateway.ports, OTHER)
    gateway.server.import_registries()
    with _party(gateway, "regulator") as regulator:
        record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), OTHER)
    with _party(gateway, "covered_entity", OTHER_ACCOUNTS, [OTHER.entity_id]) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        settle_final_pilot_year(stub, OTHER)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ExecuteMigration(
                gateway_pb2.ExecuteMigrationRequest(
                    request_id=f"migrate-{STEEL.entity_id}",
                    plan=migration_request(OTHER, acknowledged=["CL-MIGRATION-0014"]),
                ),
                timeout=120,
            )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    details = caught.value.details() or ""
    assert f"'migrate-{STEEL.entity_id}' was already used" in details
    assert steel.split("/")[-1] not in details


def test_an_entity_of_its_own_subject_migrates_under_a_request_id_another_used(
    gateway: SecureGateway,
) -> None:
    """Another subject is another caller: the id the first entity took blocks nothing of
    the second's, and the second's migration requests its transfers in its own space."""
    steel = _migrate(gateway, STEEL, STEEL_ACCOUNTS)
    seed_registries(gateway.ports, OTHER)
    gateway.server.import_registries()
    with _party(gateway, "regulator") as regulator:
        record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), OTHER)
    with gateway.party(
        "covered_entity", "steel-b-desk", OTHER_ACCOUNTS, [OTHER.entity_id]
    ) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        settle_final_pilot_year(stub, OTHER)
        other: gateway_pb2.Migration = stub.ExecuteMigration(
            gateway_pb2.ExecuteMigrationRequest(
                request_id=f"migrate-{STEEL.entity_id}",
                plan=migration_request(OTHER, acknowledged=["CL-MIGRATION-0014"]),
            ),
            timeout=120,
        )
    assert other.state == "completed", other.failure_reason
    assert other.name != steel and other.plan.entity_id == OTHER.entity_id
    transfer_ids = [name.split("/")[-1] for name in other.transfers]
    assert transfer_ids
    with gateway.server.engine.connect() as connection:
        callers = connection.execute(
            sa.select(TransferRecord.caller).where(TransferRecord.id.in_(transfer_ids))
        ).scalars()
        assert set(callers) == {"steel-b-desk"}
