"""``carbonlink entity import`` and ``carbonlink migrate plan|execute`` against a gateway."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.cli import main
from gateway.demo_migration import pilot_entity, seed_registries, settle_final_pilot_year
from registry_bridge.covered_entities import ComplianceYear, CoveredEntity, entity_to_json
from tests.integration.gateway.conftest import LinkedRegistries, LiveGateway, linked_registries
from tests.integration.gateway.test_crash_recovery import _gateway


@pytest.fixture
def pilot() -> Iterator[LinkedRegistries]:
    with linked_registries(wired=("shenzhen", "national")) as linked:
        yield linked


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_import_plan_and_execute_from_the_command_line(
    database_url: str,
    pilot: LinkedRegistries,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    steel = pilot_entity("steel-cli", "steel", 2023, 6_000_000)
    seed_registries(pilot.ports, steel)
    export = tmp_path / "entities.json"
    record = CoveredEntity(
        entity_id=steel.entity_id,
        display_name=steel.display_name,
        sector="steel",
        gases=("CO2",),
        accounts={"shenzhen": steel.shenzhen_account, "national": steel.national_account},
        years=(ComplianceYear("shenzhen", 2023, 50_000, 50_000),),
    )
    export.write_text(json.dumps({"entities": [entity_to_json(record)]}))
    with _gateway(database_url, pilot) as (_, target):
        common = ["--target", target, "--insecure"]
        assert main(["entity", "import", str(export), *common]) == 0
        with grpc.insecure_channel(target) as channel:
            settle_final_pilot_year(gateway_pb2_grpc.LinkageGatewayStub(channel), steel)
        capsys.readouterr()
        args = ["--entity", "steel-cli", "--to", "national", "--from-year", "2024", "--json"]
        assert main(["migrate", "plan", *args, *common]) == 1  # the SZA cancellation waits
        waiting = json.loads(capsys.readouterr().out)
        assert [v["ruleId"] for v in waiting["blockingViolations"]] == ["CL-MIGRATION-0015"]
        args += ["--acknowledge", "CL-MIGRATION-0014"]
        assert main(["migrate", "plan", *args, *common]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["executable"] is True
        assert {d["action"] for d in plan["dispositions"]} == {
            "cancel",
            "transfer",
            "keep_for_sale",
        }
        assert main(["migrate", "execute", *args, *common]) == 0
        first = json.loads(capsys.readouterr().out)
        assert first["state"] == "completed"
        # Re-running the command resumes the same migration (derived request id).
        assert main(["migrate", "execute", *args, *common]) == 0
        again = json.loads(capsys.readouterr().out)
        assert again["name"] == first["name"] and again["steps"] == first["steps"]
        # A blocked plan exits non-zero.
        blocked = ["--entity", "steel-cli", "--to", "national", "--from-year", "2023"]
        assert main(["migrate", "plan", *blocked, *common]) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_command_line_names_an_entity_the_pilot_registry_does_not_know(
    database_url: str,
    pilot: LinkedRegistries,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Recorded at the gateway, owing nothing, but never seen by the Shenzhen registry.
    ghost = CoveredEntity(
        entity_id="ghost-cli",
        display_name="Ghost Co.",
        sector="steel",
        gases=("CO2",),
        accounts={"shenzhen": "sz-ghost-cli", "national": "cn-ghost-cli"},
        years=(ComplianceYear("shenzhen", 2023, 0, 0),),
    )
    export = tmp_path / "entities.json"
    export.write_text(json.dumps({"entities": [entity_to_json(ghost)]}))
    unknown = (
        "CL-MIGRATION-0018: the shenzhen registry knows no account sz-ghost-cli "
        "(recorded for ghost-cli): it holds no units there"
    )
    with _gateway(database_url, pilot) as (_, target):
        common = ["--target", target, "--insecure"]
        assert main(["entity", "import", str(export), *common]) == 0
        capsys.readouterr()
        args = ["--entity", "ghost-cli", "--from-year", "2024", *common]
        assert main(["migrate", "plan", *args]) == 1
        assert f"BLOCKED {unknown}" in capsys.readouterr().out
        assert main(["migrate", "execute", *args]) == 1
        refused = capsys.readouterr().err
        assert refused.startswith("carbonlink: FAILED_PRECONDITION: the migration is blocked: ")
        assert unknown in refused
        # An entity the gateway has no record of is not found, by name.
        assert main(["migrate", "plan", "--entity", "nobody", "--from-year", "2024", *common]) == 1
        assert capsys.readouterr().err == "carbonlink: NOT_FOUND: entities/nobody not found\n"


def test_an_import_file_with_a_bad_entity_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = CoveredEntity(
        entity_id="fine-co",
        display_name="Fine Co.",
        sector="steel",
        gases=("CO2",),
        accounts={"shenzhen": "sz-fine"},
        years=(ComplianceYear("shenzhen", 2023, 1_000, 1_000),),
    )
    bad = dataclasses.replace(
        good,
        entity_id="bad-co",
        display_name="Bad Co.",
        accounts={"shenzhen": "sz-bad"},
        years=(ComplianceYear("shenzhen", 2023, -5, 0),),
    )
    export = tmp_path / "entities.json"
    export.write_text(json.dumps({"entities": [entity_to_json(good), entity_to_json(bad)]}))
    # No gateway listens: the file is refused before any call.
    argv = ["entity", "import", str(export), "--target", "127.0.0.1:1", "--insecure"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nothing imported: entities[1] (bad-co)" in err
    assert "entity.years[0].verified_emissions: must not be negative" in err


def test_an_import_file_with_an_amount_past_int64_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # JSON holds any integer; the API's int64 could not carry this one.
    huge = CoveredEntity(
        entity_id="huge-co",
        display_name="Huge Co.",
        sector="steel",
        gases=("CO2",),
        accounts={"shenzhen": "sz-huge"},
        years=(ComplianceYear("shenzhen", 2023, 2**63, 2**63 - 1),),
    )
    export = tmp_path / "entities.json"
    export.write_text(json.dumps({"entities": [entity_to_json(huge)]}))
    argv = ["entity", "import", str(export), "--target", "127.0.0.1:1", "--insecure"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nothing imported: entities[0] (huge-co)" in err
    assert f"entity.years[0].verified_emissions: is above the largest, {2**63 - 1}" in err
    assert "allowances_due" not in err


def test_execute_with_a_long_entity_id_derives_a_request_id_the_gateway_takes(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    # 120 characters: a valid entity id, but "migrate-{id}-shenzhen-national-2025" is not
    # a valid request id. The refusal must be about the entity, which is unknown here.
    entity = "e" * 120
    argv = ["migrate", "execute", "--entity", entity, "--from-year", "2025"]
    assert main([*argv, "--target", live_gateway.target, "--insecure"]) == 1
    assert capsys.readouterr().err == f"carbonlink: NOT_FOUND: entities/{entity} not found\n"


def _steel_export(tmp_path: Path, entity_ids: list[str]) -> tuple[list[CoveredEntity], Path]:
    """Steel entities of ``entity_ids`` (Shenzhen accounts sz-0, sz-1...) in an export."""
    entities = [
        CoveredEntity(
            entity_id=entity_id,
            display_name="Co.",
            sector="steel",
            gases=("CO2",),
            accounts={"shenzhen": f"sz-{i}"},
            years=(ComplianceYear("shenzhen", 2023, 10, 10),),
        )
        for i, entity_id in enumerate(entity_ids)
    ]
    export = tmp_path / "entities.json"
    export.write_text(json.dumps({"entities": [entity_to_json(e) for e in entities]}))
    return entities, export


def test_an_import_with_a_long_entity_id_imports_every_entity(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "{batch}:{entity id}" past 128 characters was refused by the gateway after the
    # entities before it were recorded: half a file imported.
    entities, export = _steel_export(tmp_path, ["short-co", "l" * 120])
    argv = ["entity", "import", str(export), "--target", live_gateway.target, "--insecure"]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(argv) == 0  # a second run records them again, refused by nothing
    for entity in entities:
        plan = live_gateway.stub.PlanMigration(
            gateway_pb2.PlanMigrationRequest(
                entity_id=entity.entity_id,
                from_jurisdiction="shenzhen",
                to_jurisdiction="national",
                first_year=2024,
            ),
            timeout=30,
        )
        assert plan.verified_emissions == 10


def test_import_with_json_prints_one_document_of_every_entity_recorded(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, export = _steel_export(tmp_path, ["json-a", "json-b"])
    capsys.readouterr()
    argv = ["entity", "import", str(export), "--target", live_gateway.target, "--insecure"]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [e["entityId"] for e in printed["entities"]] == ["json-a", "json-b"]
    assert printed["entities"][0]["accounts"] == [{"registry": "shenzhen", "account": "sz-0"}]
