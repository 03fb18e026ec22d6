"""A migration request as the gateway reads it from PlanMigration and ExecuteMigration."""

from __future__ import annotations

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway.migration_api import MAX_ACKNOWLEDGED_WARNINGS, entity_from_pb, request_from_pb
from registry_bridge.errors import InvalidRequest
from registry_bridge.transfers import AccountRef

CODES = ["CL-MIGRATION-0014", "CL-MIGRATION-0016", "CL-MIGRATION-0017"]


def _plan(acknowledged: list[str]) -> gateway_pb2.PlanMigrationRequest:
    return gateway_pb2.PlanMigrationRequest(
        entity_id="steel-01",
        from_jurisdiction="shenzhen",
        to_jurisdiction="national",
        first_year=2026,
        acknowledged_warnings=acknowledged,
    )


def test_up_to_the_cap_of_acknowledged_warnings_repeats_included_is_read() -> None:
    acknowledged = [CODES[i % len(CODES)] for i in range(MAX_ACKNOWLEDGED_WARNINGS)]

    request = request_from_pb(_plan(acknowledged))

    assert request.acknowledged == frozenset(CODES)


@pytest.mark.parametrize(
    ("count", "path"),
    [(MAX_ACKNOWLEDGED_WARNINGS + 1, ""), (1_000_000, ""), (MAX_ACKNOWLEDGED_WARNINGS + 1, "plan")],
)
def test_more_acknowledged_warnings_than_the_cap_are_refused_by_the_field(
    count: int, path: str
) -> None:
    # Repeats of one good code count: the cap is on the work a request asks for.
    field = f"{path}.acknowledged_warnings" if path else "acknowledged_warnings"

    with pytest.raises(InvalidRequest) as refused:
        request_from_pb(_plan([CODES[0]] * count), path)

    assert str(refused.value) == (
        f"{field}: holds more than {MAX_ACKNOWLEDGED_WARNINGS} warning codes"
    )
    assert [v.field for v in refused.value.violations] == [field]


def test_past_the_cap_bad_codes_are_not_each_named() -> None:
    with pytest.raises(InvalidRequest) as refused:
        request_from_pb(_plan(["no"] * 100_000))

    assert len(refused.value.violations) == 1
    assert len(str(refused.value)) < 200


def _entity(**fields: object) -> gateway_pb2.CoveredEntity:
    entity = gateway_pb2.CoveredEntity(entity_id="steel-01", sector="steel", gases=["CO2"])
    for name, value in fields.items():
        getattr(entity, name).extend(value)
    return entity


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"accounts": [model_pb2.AccountRef(registry="vera", account="a")] * 101},
            "entity: at most 100 accounts and years",
        ),
        (
            {"years": [gateway_pb2.ComplianceYear(jurisdiction="x")] * 101},
            "entity: at most 100 accounts and years",
        ),
        ({"gases": ["H2O"] * 101}, "entity.gases: holds more than 100 gases"),
    ],
    ids=["accounts", "years", "gases"],
)
def test_an_entity_past_a_cap_is_refused_once_not_for_each_entry(
    fields: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        entity_from_pb(_entity(**fields))

    assert str(refused.value) == named


def test_a_destination_account_is_read_when_given_and_refused_by_its_field_when_bad() -> None:
    plan = _plan([])
    assert request_from_pb(plan).destination is None
    plan.destination_account.CopyFrom(model_pb2.AccountRef(registry="national", account="cn-1"))
    request = request_from_pb(plan, "plan")
    assert request.destination == AccountRef("national", "cn-1")
    assert request.canonical()["destination"] == {"registry": "national", "account": "cn-1"}
    plan.destination_account.registry = "nowhere"
    plan.destination_account.account = ""
    with pytest.raises(InvalidRequest) as refused:
        request_from_pb(plan, "plan")
    assert [v.field for v in refused.value.violations] == [
        "plan.destination_account.registry",
        "plan.destination_account.account",
    ]
