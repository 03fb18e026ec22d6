"""What an entity's signed migration pins: the account its units land in.

The entity signs its ExecuteMigration request, but the account its units go to comes from
its record, which a regulator or the national registry changes with UpsertCoveredEntity
(unsigned, and no business of the entity's). A request that names the account of the plan the
entity read is refused when the record names another by then, so that a changed record
cannot send the entity's units elsewhere under the entity's own signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway import demo_security
from gateway.demo_migration import (
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
)
from registry_bridge.schema import MigrationRecord, TransferRecord
from tests.integration.security.conftest import (
    SecureGateway,
    row_counts,
    running_secure_gateway,
)

STEEL = pilot_entity("steel-pin", "steel", 2023, 14_000_000)
ACCOUNTS = (f"shenzhen:{STEEL.shenzhen_account}", f"national:{STEEL.national_account}")


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[SecureGateway]:
    pki = demo_security.layout(tmp_path)
    with running_secure_gateway(pki, database_url, also_wired=("national",)) as gateway:
        yield gateway


def _stub(gateway: SecureGateway, role: str, **scope: tuple[str, ...]) -> grpc.Channel:
    return demo_security.channel(gateway.pki.root.parent, gateway.target, role, **scope)


def test_a_migration_signed_for_the_planned_account_is_refused_once_the_record_changed(
    gateway: SecureGateway,
) -> None:
    seed_registries(gateway.ports, STEEL)
    gateway.server.import_registries()
    with _stub(gateway, "regulator") as regulator:
        record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), STEEL)
    with _stub(gateway, "covered_entity", accounts=ACCOUNTS, entities=(STEEL.entity_id,)) as c:
        entity = gateway_pb2_grpc.LinkageGatewayStub(c)
        settle_final_pilot_year(entity, STEEL)
        request = migration_request(STEEL, acknowledged=["CL-MIGRATION-0014"])
        plan = entity.PlanMigration(request, timeout=60)
        assert plan.executable and plan.destination_account == model_pb2.AccountRef(
            registry="national", account=STEEL.national_account
        )
        # What the entity signs for: the account the plan it read names.
        request.destination_account.CopyFrom(plan.destination_account)

        # The national registry records another national account (its own to record).
        changed = gateway_pb2.CoveredEntity()
        with _stub(gateway, "regulator") as regulator:
            changed.CopyFrom(record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), STEEL))
        del changed.accounts[:]
        del changed.years[:]
        changed.accounts.add(registry="national", account="somebody-else")
        national = gateway.token("registry", subject="national-registry", registries=["national"])
        with gateway.channel("registry", national) as registry:
            gateway_pb2_grpc.LinkageGatewayStub(registry).UpsertCoveredEntity(
                gateway_pb2.UpsertCoveredEntityRequest(request_id="redirect", entity=changed),
                timeout=30,
            )
        assert not entity.PlanMigration(request, timeout=60).executable

        before = row_counts(gateway, MigrationRecord, TransferRecord)
        with pytest.raises(grpc.RpcError) as refused:
            entity.ExecuteMigration(
                gateway_pb2.ExecuteMigrationRequest(request_id="migrate-pin", plan=request),
                timeout=120,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CL-MIGRATION-0020" in str(refused.value.details())
        assert row_counts(gateway, MigrationRecord, TransferRecord) == before

        # The record put back, the same signed request (a new signature) carries out.
        with _stub(gateway, "regulator") as regulator:
            record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), STEEL)
        migration = entity.ExecuteMigration(
            gateway_pb2.ExecuteMigrationRequest(request_id="migrate-pin", plan=request),
            timeout=120,
        )
    assert migration.state == "completed", migration.failure_reason
    assert migration.plan.destination_account == plan.destination_account
