"""Whose covered-entity records a registry maintains, over a real secure gateway.

A registry's token names the registries it stands for (``registries: ["shenzhen"]``),
and a registry records only what is its own: the entities under its jurisdiction, their
compliance years in its scheme and their accounts with it.  Otherwise the Shenzhen
registry could rewrite a national ETS entity's verified emissions, or any registry the
national account a migrating entity's units land in.  Regulators record anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from sqlalchemy.orm import Session

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway import demo_security
from gateway.cli import main
from registry_bridge.covered_entities import CoveredEntity
from registry_bridge.entities import get_entity
from registry_bridge.errors import NotFound
from registry_bridge.schema import EntityYearWithdrawalRecord, IdempotencyRecord
from tests.integration.security.conftest import SecureGateway, row_counts, running_secure_gateway


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[SecureGateway]:
    with running_secure_gateway(demo_security.layout(tmp_path), database_url) as gateway:
        yield gateway


def _entity(
    entity_id: str,
    accounts: Sequence[tuple[str, str]],
    years: Sequence[tuple[str, int, int]],
    sector: str = "steel",
) -> gateway_pb2.CoveredEntity:
    """An entity with ``(registry, account)`` accounts and ``(jurisdiction, year,
    verified emissions)`` years (allowances due as emitted)."""
    return gateway_pb2.CoveredEntity(
        entity_id=entity_id,
        display_name=entity_id,
        sector=sector,
        gases=["CO2"],
        accounts=[model_pb2.AccountRef(registry=r, account=a) for r, a in accounts],
        years=[
            gateway_pb2.ComplianceYear(
                jurisdiction=j, compliance_year=y, verified_emissions=e, allowances_due=e
            )
            for j, y, e in years
        ],
    )


def _upsert(
    gateway: SecureGateway,
    token: str,
    role: str,
    request_id: str,
    entity: gateway_pb2.CoveredEntity,
) -> gateway_pb2.CoveredEntity:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway.channel(role, token))
    reply: gateway_pb2.CoveredEntity = stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(request_id=request_id, entity=entity), timeout=30
    )
    return reply


def _registry(gateway: SecureGateway, *registries: str) -> str:
    return gateway.token(
        "registry", subject=f"registry-{'-'.join(registries)}", registries=registries
    )


def _recorded(gateway: SecureGateway, entity_id: str) -> CoveredEntity:
    with Session(gateway.server.engine) as session:
        return get_entity(session, entity_id)


def _refused(
    gateway: SecureGateway, token: str, entity: gateway_pb2.CoveredEntity
) -> grpc.RpcError:
    """Upsert ``entity`` with a registry's ``token``, expecting a refusal that changes
    nothing: neither the entity's record nor any stored answer."""
    before = _recorded(gateway, entity.entity_id), row_counts(gateway, IdempotencyRecord)
    with pytest.raises(grpc.RpcError) as refused:
        _upsert(gateway, token, "registry", "refused", entity)
    assert (_recorded(gateway, entity.entity_id), row_counts(gateway, IdempotencyRecord)) == before
    return refused.value


SHENZHEN_STEEL = _entity("sz-steel", [("shenzhen", "sz-steel-1")], [("shenzhen", 2024, 9_000)])
NATIONAL_POWER = _entity(
    "cn-power", [("national", "cn-power-1")], [("national", 2024, 4_000_000)], sector="power"
)


def test_a_registry_records_and_corrects_the_entities_of_its_own_jurisdiction(
    gateway: SecureGateway,
) -> None:
    shenzhen = _registry(gateway, "shenzhen")
    _upsert(gateway, shenzhen, "registry", "sz-1", SHENZHEN_STEEL)
    corrected = _entity("sz-steel", [("shenzhen", "sz-steel-2")], [("shenzhen", 2024, 9_500)])
    reply = _upsert(gateway, shenzhen, "registry", "sz-2", corrected)

    assert [(a.registry, a.account) for a in reply.accounts] == [("shenzhen", "sz-steel-2")]
    assert [(y.jurisdiction, y.verified_emissions) for y in reply.years] == [("shenzhen", 9_500)]


def test_a_registry_may_not_touch_an_entity_of_another_jurisdiction(
    gateway: SecureGateway,
) -> None:
    _upsert(gateway, gateway.token("regulator"), "regulator", "cn-power", NATIONAL_POWER)
    # Its verified emissions halved, by the Shenzhen registry, through a Shenzhen year only.
    rewrite = _entity("cn-power", [("shenzhen", "cn-power-sz")], [("shenzhen", 2024, 2_000_000)])

    refused = _refused(gateway, _registry(gateway, "shenzhen"), rewrite)

    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "entity.entity_id" in str(refused.details())
    assert "national" in str(refused.details()) and "shenzhen" in str(refused.details())


def test_a_registry_may_not_move_its_entity_into_another_jurisdiction(
    gateway: SecureGateway,
) -> None:
    shenzhen = _registry(gateway, "shenzhen")
    _upsert(gateway, shenzhen, "registry", "sz-1", SHENZHEN_STEEL)

    national_year = _entity(
        "sz-steel",
        [("shenzhen", "sz-steel-1")],
        [("shenzhen", 2024, 9_000), ("national", 2025, 1)],
    )
    refused = _refused(gateway, shenzhen, national_year)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "entity.years[1].jurisdiction" in str(refused.details())

    # The account a migration's units land in is the national registry's to record.
    destination = _entity("sz-steel", [("shenzhen", "sz-steel-1"), ("national", "elsewhere")], [])
    refused = _refused(gateway, shenzhen, destination)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "entity.accounts[1].registry" in str(refused.details())


def test_a_registry_may_not_move_an_entity_out_of_another_jurisdiction(
    gateway: SecureGateway,
) -> None:
    regulator = gateway.token("regulator")
    both = _entity(
        "sz-migrant",
        [("shenzhen", "sz-migrant-1"), ("national", "cn-migrant-1")],
        [("shenzhen", 2024, 9_000)],
    )
    _upsert(gateway, regulator, "regulator", "migrant", both)

    # The national registry maintains the entity's national account, not its Shenzhen one.
    national = _registry(gateway, "national")
    _upsert(
        gateway, national, "registry", "cn-1", _entity("sz-migrant", [("national", "cn-2")], [])
    )
    refused = _refused(
        gateway, national, _entity("sz-migrant", [("shenzhen", "somebody-else")], [])
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "entity.accounts[0].registry" in str(refused.details())
    assert _recorded(gateway, "sz-migrant").accounts == {
        "shenzhen": "sz-migrant-1",
        "national": "cn-2",
    }


def test_a_registry_records_a_new_entity_only_under_itself(gateway: SecureGateway) -> None:
    """An entity with neither an account nor a year would be under no registry: its id
    taken, and no registry could record it again."""
    shenzhen = _registry(gateway, "shenzhen")
    with pytest.raises(grpc.RpcError) as refused:
        _upsert(gateway, shenzhen, "registry", "bare", _entity("sz-bare", [], []))

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "entity.accounts" in str(refused.value.details())
    with pytest.raises(NotFound):
        _recorded(gateway, "sz-bare")


def test_a_registry_token_naming_no_registry_records_nothing(gateway: SecureGateway) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _upsert(gateway, gateway.token("registry"), "registry", "anon", SHENZHEN_STEEL)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names no registry" in str(refused.value.details())


def test_a_regulator_records_any_entity_in_any_jurisdiction(gateway: SecureGateway) -> None:
    regulator = gateway.token("regulator")
    _upsert(gateway, _registry(gateway, "shenzhen"), "registry", "sz-1", SHENZHEN_STEEL)
    moved = _entity("sz-steel", [("national", "cn-steel-1")], [("national", 2025, 8_000)])

    reply = _upsert(gateway, regulator, "regulator", "moved", moved)

    assert {y.jurisdiction for y in reply.years} == {"shenzhen", "national"}


def test_certs_token_mints_a_registry_token_for_its_registry(
    gateway: SecureGateway, tmp_path: Path
) -> None:
    out = tmp_path / "token"
    argv = ["certs", "token", str(gateway.pki.root), "--role", "registry", "--out", str(out)]
    assert main([*argv, "--registry", "shenzhen"]) == 0
    shenzhen = out.read_text(encoding="utf-8").strip()

    _upsert(gateway, shenzhen, "registry", "sz-1", SHENZHEN_STEEL)
    refused = _refused(gateway, shenzhen, _entity("sz-steel", [], [("national", 2025, 1)]))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def _withdraw(
    gateway: SecureGateway,
    token: str,
    role: str,
    request_id: str,
    entity_id: str,
    *years: tuple[str, int],
) -> gateway_pb2.CoveredEntity:
    """UpsertCoveredEntity withdrawing the entity's ``(jurisdiction, year)`` ``years``,
    the entity naming only its id."""
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway.channel(role, token))
    reply: gateway_pb2.CoveredEntity = stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id=request_id,
            entity=gateway_pb2.CoveredEntity(entity_id=entity_id),
            withdraw_years=[
                gateway_pb2.ComplianceYearRef(jurisdiction=j, compliance_year=y) for j, y in years
            ],
        ),
        timeout=30,
    )
    return reply


MIGRANT = _entity(
    "sz-leaver",
    [("shenzhen", "sz-leaver-1"), ("national", "cn-leaver-1")],
    [("shenzhen", 2024, 9_000), ("national", 2025, 8_000)],
)


def test_a_registry_withdraws_only_the_years_of_its_own_jurisdiction(
    gateway: SecureGateway,
) -> None:
    """A year a registry may record is the one it may withdraw; the withdrawal keeps who
    withdrew it (the caller's subject)."""
    _upsert(gateway, gateway.token("regulator"), "regulator", "leaver", MIGRANT)
    shenzhen = _registry(gateway, "shenzhen")
    before = (
        _recorded(gateway, "sz-leaver"),
        row_counts(gateway, IdempotencyRecord, EntityYearWithdrawalRecord),
    )
    for token, request_id in ((shenzhen, "sz-w"), (gateway.token("registry"), "anon-w")):
        with pytest.raises(grpc.RpcError) as refused:
            _withdraw(gateway, token, "registry", request_id, "sz-leaver", ("national", 2025))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        details = str(refused.value.details())
        assert "withdraw_years[0].jurisdiction" in details or "names no registry" in details
    # Nor a role that records no entity at all.
    with pytest.raises(grpc.RpcError) as refused:
        _withdraw(
            gateway,
            gateway.token("covered_entity", entities=["sz-leaver"]),
            "covered_entity",
            "entity-w",
            "sz-leaver",
            ("shenzhen", 2024),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        _recorded(gateway, "sz-leaver"),
        row_counts(gateway, IdempotencyRecord, EntityYearWithdrawalRecord),
    ) == before

    national = _registry(gateway, "national")
    reply = _withdraw(gateway, national, "registry", "cn-w", "sz-leaver", ("national", 2025))
    assert [(y.jurisdiction, y.compliance_year) for y in reply.years] == [("shenzhen", 2024)]
    assert [
        (w.year.jurisdiction, w.year.compliance_year, w.year.verified_emissions, w.withdrawn_by)
        for w in reply.withdrawn_years
    ] == [("national", 2025, 8_000, "registry-national")]
    # A regulator withdraws any year.
    regulator = gateway.token("regulator", subject="regulator-1")
    reply = _withdraw(gateway, regulator, "regulator", "reg-w", "sz-leaver", ("shenzhen", 2024))
    assert not reply.years
    assert [(w.year.jurisdiction, w.withdrawn_by) for w in reply.withdrawn_years] == [
        ("national", "registry-national"),
        ("shenzhen", "regulator-1"),
    ]
    # The entity stays under the registries of its accounts: Shenzhen records its year
    # again.
    reply = _upsert(
        gateway,
        shenzhen,
        "registry",
        "sz-again",
        _entity("sz-leaver", [], [("shenzhen", 2024, 9_100)]),
    )
    assert [(y.jurisdiction, y.verified_emissions) for y in reply.years] == [("shenzhen", 9_100)]
    assert len(reply.withdrawn_years) == 2
