"""AbandonMigration against a secure gateway: who may give a failed migration up, signed.

Abandoning decides that a migration's remaining steps are never taken, so it is signed as
ExecuteMigration is, the signature covering this method and this request (migration,
request id, reason). The covered entity abandons its own migration, a regulator any;
auditors and the other roles are refused by role, an entity another's migration does not
exist to. Shenzhen refuses every ``Freeze`` here, so the migration's transfer step fails
for good: the case abandoning is for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from gateway import demo_security
from gateway.cli import main
from gateway.demo_migration import (
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
)
from gateway.security.certs import instruction_key_id
from tests.integration.security.conftest import SecureGateway, running_secure_gateway

STEEL = pilot_entity("steel-abandon", "steel", 2023, 15_000_000)
STEEL_ACCOUNTS = (f"shenzhen:{STEEL.shenzhen_account}", f"national:{STEEL.national_account}")
REASON = "Shenzhen refuses to freeze the CCER for good"


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[SecureGateway]:
    """A secure gateway wired to Shenzhen and the national registry, Shenzhen refusing
    every Freeze (the demo's client channels use its PKI, under ``tmp_path``)."""
    pki = demo_security.layout(tmp_path)
    refusing = FaultConfig(refusals=(ScriptedRefusal("Freeze", "FAILED_PRECONDITION", 1_000),))
    with running_secure_gateway(
        pki, database_url, also_wired=("national",), faults={"shenzhen": refusing}
    ) as gateway:
        yield gateway


def _entity_channel(gateway: SecureGateway) -> grpc.Channel:
    """The entity's channel: its token names it and its accounts, and it signs."""
    return demo_security.channel(
        gateway.pki.root.parent,
        gateway.target,
        "covered_entity",
        accounts=STEEL_ACCOUNTS,
        entities=(STEEL.entity_id,),
    )


def _failed_migration(gateway: SecureGateway) -> gateway_pb2.Migration:
    """The regulator records the entity; the entity settles its final pilot year and
    executes its migration, which fails at the transfer step."""
    seed_registries(gateway.ports, STEEL)
    gateway.server.import_registries()
    workdir = gateway.pki.root.parent
    with demo_security.channel(workdir, gateway.target, "regulator") as regulator:
        record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), STEEL)
    with _entity_channel(gateway) as channel:
        entity = gateway_pb2_grpc.LinkageGatewayStub(channel)
        settle_final_pilot_year(entity, STEEL)
        migration: gateway_pb2.Migration = entity.ExecuteMigration(
            gateway_pb2.ExecuteMigrationRequest(
                request_id="migrate-steel-abandon",
                plan=migration_request(STEEL, acknowledged=["CL-MIGRATION-0014"]),
            ),
            timeout=120,
        )
    assert migration.state == "failed", migration.failure_reason
    return migration


def _request(name: str, reason: str = REASON) -> gateway_pb2.AbandonMigrationRequest:
    return gateway_pb2.AbandonMigrationRequest(request_id="abandon-s1", name=name, reason=reason)


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), str(refused.value.details())


def _state(gateway: SecureGateway, name: str) -> str:
    regulator = gateway.stub("regulator", gateway.token("regulator"))
    return str(regulator.GetMigration(gateway_pb2.GetMigrationRequest(name=name)).state)


def test_the_entity_abandons_its_failed_migration_signed_and_no_one_else_but_a_regulator(
    gateway: SecureGateway,
) -> None:
    failed = _failed_migration(gateway)

    def signed_by_role(role: str, entities: tuple[str, ...]) -> grpc.StatusCode:
        request = gateway.signer(role).sign("AbandonMigration", _request(failed.name))
        stub = gateway.stub(role, gateway.token(role, entities=entities))
        code, _ = _refused(lambda: stub.AbandonMigration(request, timeout=30))
        return code

    # Refused by role, whatever they sign: auditors read, the others have no say.
    for role in ("auditor", "exchange_operator", "issuer", "registry"):
        assert signed_by_role(role, (STEEL.entity_id,)) == (grpc.StatusCode.PERMISSION_DENIED), role
    # Another entity's party: the migration does not exist to it.
    assert signed_by_role("covered_entity", ("someone-else",)) == (grpc.StatusCode.NOT_FOUND)

    entity = gateway.stub(
        "covered_entity",
        gateway.token("covered_entity", accounts=STEEL_ACCOUNTS, entities=(STEEL.entity_id,)),
    )
    signer = gateway.signer("covered_entity")
    # Unsigned.
    code, details = _refused(lambda: entity.AbandonMigration(_request(failed.name), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signature" in details
    # Signed for another method: a signature of the same bytes for ExecuteMigration is no
    # abandonment.
    other_method = signer.sign("ExecuteMigration", _request(failed.name))
    code, details = _refused(lambda: entity.AbandonMigration(other_method, timeout=30))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "does not verify" in details
    # Signed, then given another reason: the signature covers the reason.
    altered = _request(failed.name, "the plan changed")
    signer.sign("AbandonMigration", altered)
    altered.reason = REASON
    code, details = _refused(lambda: entity.AbandonMigration(altered, timeout=30))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "does not verify" in details
    assert _state(gateway, failed.name) == "failed"

    signed = signer.sign("AbandonMigration", _request(failed.name))
    abandoned = entity.AbandonMigration(signed, timeout=30)
    assert abandoned.state == "abandoned"
    record = abandoned.abandonment
    assert (record.abandoned_by, record.reason, record.request_id) == (
        "covered_entity",
        REASON,
        "abandon-s1",
    )
    assert record.signature_key_id == instruction_key_id("covered_entity")
    # The same signed request again is a replay; signed anew, it answers the abandoned
    # migration unchanged.
    code, details = _refused(lambda: entity.AbandonMigration(signed, timeout=30))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "replay" in details
    again = entity.AbandonMigration(
        signer.sign("AbandonMigration", _request(failed.name)), timeout=30
    )
    assert again == abandoned


def test_a_regulator_abandons_a_failed_migration_and_the_entity_may_plan_again(
    gateway: SecureGateway,
) -> None:
    failed = _failed_migration(gateway)
    regulator = gateway.stub("regulator", gateway.token("regulator"))
    request = gateway.signer("regulator").sign("AbandonMigration", _request(failed.name))
    abandoned = regulator.AbandonMigration(request, timeout=30)
    assert abandoned.state == "abandoned"
    assert abandoned.abandonment.abandoned_by == "regulator"
    assert abandoned.abandonment.signature_key_id == instruction_key_id("regulator")
    with _entity_channel(gateway) as channel:
        plan = gateway_pb2_grpc.LinkageGatewayStub(channel).PlanMigration(
            migration_request(STEEL, acknowledged=["CL-MIGRATION-0014"]), timeout=60
        )
    assert "CL-MIGRATION-0009" not in [v.rule_id for v in plan.blocking_violations]
    assert [d.action for d in plan.dispositions] == ["keep_for_sale", "transfer"]


def test_migrate_abandon_signs_its_instruction_with_the_signing_key(
    gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = _failed_migration(gateway)
    token = tmp_path / "token"
    mint = ["certs", "token", str(gateway.pki.root), "--role", "covered_entity"]
    assert main([*mint, "--entity", STEEL.entity_id, "--out", str(token)]) == 0
    secure = ["--target", gateway.target, "--tls-dir", str(gateway.pki.root)]
    secure += ["--client", "covered_entity", "--token-file", str(token)]
    abandon = ["migrate", "abandon", failed.name, "--reason", REASON, *secure]
    capsys.readouterr()

    # Unsigned: refused before any call, naming the option; nothing changed.
    assert main(abandon) == 2
    assert "AbandonMigration is an instruction: give --signing-key" in capsys.readouterr().err
    assert _state(gateway, failed.name) == "failed"

    signing_key = ["--signing-key", str(gateway.pki.instruction_key("covered_entity"))]
    assert main([*abandon, *signing_key, "--json"]) == 0
    out = capsys.readouterr().out
    document, _ = json.JSONDecoder().raw_decode(out[out.index("{\n") :])
    assert document["state"] == "abandoned"
    assert document["abandonment"]["abandonedBy"] == "covered_entity"
    assert _state(gateway, failed.name) == "abandoned"
