"""``carbonlink migrate plan|execute|get`` against a secure gateway, as a covered entity runs
them: mutual TLS, a token file naming the entity and its accounts, and its signing key.

ExecuteMigration is a signed instruction: the command signs it with ``--signing-key`` as
``transfer submit`` does, and without a key it is refused before any call, saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2_grpc, model_pb2
from gateway import demo_security
from gateway.cli import main
from gateway.demo_migration import (
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
)
from tests.integration.security.conftest import SecureGateway

STEEL = pilot_entity("steel-cli", "steel", 2023, 14_000_000)
STEEL_ACCOUNTS = (f"shenzhen:{STEEL.shenzhen_account}", f"national:{STEEL.national_account}")


@pytest.fixture
def gateway(national_gateway: SecureGateway) -> SecureGateway:
    return national_gateway


def _settled_entity(gateway: SecureGateway) -> model_pb2.BlockId:
    """The regulator records the entity; the entity settles its final pilot year.

    Returns the Shenzhen mirror of the entity's CCER (the part not surrendered migrates).
    """
    seed_registries(gateway.ports, STEEL)
    gateway.server.import_registries()
    workdir = gateway.pki.root.parent
    with demo_security.channel(workdir, gateway.target, "regulator") as regulator:
        record_entity(gateway_pb2_grpc.LinkageGatewayStub(regulator), STEEL)
    with demo_security.channel(
        workdir,
        gateway.target,
        "covered_entity",
        accounts=STEEL_ACCOUNTS,
        entities=(STEEL.entity_id,),
    ) as channel:
        return settle_final_pilot_year(gateway_pb2_grpc.LinkageGatewayStub(channel), STEEL)


def _entity_options(gateway: SecureGateway, tmp_path: Path) -> list[str]:
    """The options of the entity's commands: its certificate and a token from `certs token`
    naming it and its accounts (instructions need --signing-key as well)."""
    token = tmp_path / "token"
    mint = ["certs", "token", str(gateway.pki.root), "--role", "covered_entity"]
    mint += ["--entity", STEEL.entity_id, "--out", str(token)]
    for account in STEEL_ACCOUNTS:
        mint += ["--account", account]
    assert main(mint) == 0
    secure = ["--target", gateway.target, "--tls-dir", str(gateway.pki.root)]
    return [*secure, "--client", "covered_entity", "--token-file", str(token)]


def _printed_json(out: str) -> dict[str, object]:
    """The JSON document a command printed (the in-process gateway's logs share stdout)."""
    document, _ = json.JSONDecoder().raw_decode(out[out.index("{\n") :])
    assert isinstance(document, dict)
    return document


def test_migrate_execute_signs_its_instruction_with_the_signing_key(
    gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _settled_entity(gateway)
    secure = _entity_options(gateway, tmp_path)
    migration = ["--entity", STEEL.entity_id, "--from-year", str(STEEL.first_national_year)]
    migration += ["--acknowledge", "CL-MIGRATION-0014", "--json", *secure]
    capsys.readouterr()

    # Unsigned: refused before any call, naming the option; nothing was started.
    assert main(["migrate", "execute", *migration]) == 2
    assert "ExecuteMigration is an instruction: give --signing-key" in capsys.readouterr().err
    assert main(["migrate", "plan", *migration]) == 0
    assert _printed_json(capsys.readouterr().out)["executable"] is True

    signing_key = ["--signing-key", str(gateway.pki.instruction_key("covered_entity"))]
    assert main(["migrate", "execute", *migration, *signing_key]) == 0
    executed = _printed_json(capsys.readouterr().out)
    assert executed["state"] == "completed"
    assert main(["migrate", "get", str(executed["name"]), "--json", *secure]) == 0
    assert _printed_json(capsys.readouterr().out)["state"] == "completed"


def test_migrate_names_a_mirror_block_by_its_series_and_takes_the_timeout_given(
    gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = _settled_entity(gateway)
    secure = _entity_options(gateway, tmp_path)
    signing_key = ["--signing-key", str(gateway.pki.instruction_key("covered_entity"))]
    migration = ["--entity", STEEL.entity_id, "--from-year", str(STEEL.first_national_year)]
    migration += ["--acknowledge", "CL-MIGRATION-0014", *secure]
    capsys.readouterr()
    # The CCER left to migrate are the Shenzhen mirror's, not the national CCER of the
    # same numbers: each line names the mirror's series.
    left = f"CCER/shenzhen-mirror {mirror.serial_start + 4_000}-{mirror.serial_end}"
    assert mirror.serial_series == "shenzhen-mirror"
    assert main(["migrate", "plan", *migration]) == 0
    assert f"  transfer       {left}: " in capsys.readouterr().out
    assert main(["migrate", "execute", *migration, *signing_key]) == 0
    executed = capsys.readouterr().out
    moved = f": transfer 1000 {left} at shenzhen/{STEEL.shenzhen_account} -> national/"
    assert moved in executed
    name = executed[executed.index("migrations/") :].split()[0]
    # `migrate get` waits --timeout, as every client command does.
    assert main(["migrate", "get", name, *secure, "--timeout", "0.000001"]) == 1
    assert "carbonlink: DEADLINE_EXCEEDED" in capsys.readouterr().err
    assert main(["migrate", "get", name, *secure]) == 0
    assert moved in capsys.readouterr().out


def test_migrate_pins_the_destination_account_the_plan_showed(
    gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _settled_entity(gateway)
    secure = _entity_options(gateway, tmp_path)
    signing_key = ["--signing-key", str(gateway.pki.instruction_key("covered_entity"))]
    migration = ["--entity", STEEL.entity_id, "--from-year", str(STEEL.first_national_year)]
    migration += ["--acknowledge", "CL-MIGRATION-0014", *secure]
    capsys.readouterr()
    shown = f"national:{STEEL.national_account}"
    assert main(["migrate", "plan", *migration]) == 0
    # The plan says how to pin the account it shows.
    assert f"--destination-account {shown}" in capsys.readouterr().out

    # Pinned to another account than the entity's record names: blocked, nothing done.
    other = ["--destination-account", "national:someone-else"]
    assert main(["migrate", "plan", *migration, *other, "--json"]) == 1
    blocked = _printed_json(capsys.readouterr().out)
    assert blocked["executable"] is False
    violations = blocked["blockingViolations"]
    assert isinstance(violations, list)
    rules = [v["ruleId"] for v in violations]
    assert "CL-MIGRATION-0020" in rules
    assert main(["migrate", "execute", *migration, *other, *signing_key]) == 1
    refused = capsys.readouterr()
    assert "the migration is blocked: CL-MIGRATION-0020" in refused.err

    # Pinned to the account shown (under a new request id: the refused one keeps its
    # answer): it migrates.
    pinned = ["--destination-account", shown, "--request-id", "steel-cli-pinned"]
    assert main(["migrate", "execute", *migration, *pinned, *signing_key, "--json"]) == 0
    assert _printed_json(capsys.readouterr().out)["state"] == "completed"


def test_migrate_refuses_a_destination_account_not_registry_colon_account(
    gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secure = _entity_options(gateway, tmp_path)
    migration = ["--entity", STEEL.entity_id, "--from-year", "2025", *secure]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "plan", *migration, "--destination-account", "national"])
    assert exited.value.code == 2
    assert "'national' is not REGISTRY:ACCOUNT" in capsys.readouterr().err
