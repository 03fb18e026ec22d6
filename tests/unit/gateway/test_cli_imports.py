"""What each kind of ``carbonlink`` command loads: only what it runs.

An auditor verifying a bundle offline, an operator's script calling the gateway, and
anyone asking for ``--help`` wait for every module the command imports.  None of them
should load the server stack: the database layer, the bridge and its rules gate, the
servicer, the emulators, the demo or the bench.  Only the commands that run them do.
Parsing alone (``--help``, a usage error) loads none of the client stack either: gRPC,
the generated messages, cryptography or the rules engine load in the handler that uses
them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters._pb.carbonlink.v1 import model_pb2
from adapters.registry import REGISTRIES
from adapters.serials import REGISTRY_IDS
from gateway.cli import build_parser
from gateway.cli_client import TRANSFER_STATE_NAMES, USE_STATE_NAMES
from registry_bridge import merkle
from registry_bridge.audit import Bundle, BundleEvent, TraceStatement
from registry_bridge.event_log import canonical_json
from registry_bridge.model import BlockId, Program
from registry_bridge.signed_note import Checkpoint, NoteSigner, generate_private_key_pem
from tests.imports import SQL_STACK, Probe, loaded, probe

SERVER_STACK = (
    *SQL_STACK,
    "registry_bridge.bridge",
    "registry_bridge.ledger",
    "registry_bridge.rules_gate",
    "registry_bridge.provenance",
    "gateway.server",
    "gateway.servicer",
    "gateway.demo",
    "adapters.emulator_core",
    "bench.runner",
    "prometheus_client",
    "grpc_health.v1.health",
)
"""What only serve, demo, emulate, registry import and bench need."""

CLIENT_STACK = (
    "grpc",
    "google.protobuf",
    "cryptography",
    "jsonschema",
    "compliance_rules",
    "structlog",
)
"""What a command's handler may need, and parsing never does."""

_DEAD_GATEWAY = ["--insecure", "--target", "127.0.0.1:1", "--timeout", "0.5"]
"""Nothing listens there: the command fails at its call, having loaded all it needs."""


def _run(argv: list[str]) -> tuple[int, Probe]:
    """Run ``carbonlink ARGV`` in a new interpreter: its exit code, output and modules."""
    ran = probe(
        "from gateway.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(f'exit {code}')"
    )
    *output, exit_line = ran.output.splitlines()
    return int(exit_line.removeprefix("exit ")), Probe("\n".join(output), ran.modules)


def _bundle_and_key(tmp_path: Path) -> tuple[Path, str]:
    """An honest one-event audit bundle on disk, and the log key that signed it."""
    signer = NoteSigner.from_pem("test.example/log", generate_private_key_pem())
    block = {"program": "VCS", "serial_series": "", "serial_start": 100, "serial_end": 199}
    body: dict[str, Any] = {"kind": "issuance", "block": block, "origin": block, "row": 1}
    body |= {"registry": "verra", "account": "a", "status": "active", "mirror": False, "index": 0}
    payload = canonical_json(body)
    root = merkle.root_from_leaves([hashlib.sha256(b"\x00" + payload).digest()])
    query = BlockId(Program.VCS, "", 100, 199)
    bundle = Bundle(
        registry="verra",
        serial="",
        query=query,
        checkpoint=signer.sign(Checkpoint(signer.name, 1, root)),
        log_key=signer.verifier.encode(),
        events=(BundleEvent(0, payload, ()),),
        trace_notes=(signer.sign_body(TraceStatement(signer.name, 1, root, query, (0,)).body()),),
    )
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle.to_json()))
    return path, signer.verifier.encode()


def _parsers(parser: argparse.ArgumentParser, argv: list[str]) -> Iterator[list[str]]:
    """``argv`` and the argument vector of each subcommand under it, at any depth."""
    yield argv
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, [*argv, name])


def _command_groups() -> list[list[list[str]]]:
    """Per top-level command, its argument vector and each of its subcommands'."""
    groups: dict[str, list[list[str]]] = {}
    for argv in _parsers(build_parser(), []):
        if argv:
            groups.setdefault(argv[0], []).append(argv)
    return list(groups.values())


def _parse_all(argvs: list[list[str]]) -> tuple[list[int], frozenset[str]]:
    """Run ``carbonlink ARGV`` for each of ``argvs`` in one new interpreter, which only
    parses (each asks for help or is a usage error): their exit codes and its modules."""
    ran = probe(
        "import contextlib, io\n"
        "from gateway.cli import main\n"
        "codes = []\n"
        f"for argv in {argvs!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            codes.append(main(argv))\n"
        "        except SystemExit as exc:\n"
        "            codes.append(exc.code)\n"
        "print(codes)"
    )
    return json.loads(ran.output), ran.modules


def test_the_top_level_help_loads_no_client_stack() -> None:
    codes, modules = _parse_all([["--help"]])
    assert codes == [0]
    assert loaded(modules, CLIENT_STACK) == []


@pytest.mark.parametrize("group", _command_groups(), ids=lambda group: group[0][0])
def test_a_command_groups_help_loads_no_client_stack(group: list[list[str]]) -> None:
    codes, modules = _parse_all([[*argv, "--help"] for argv in group])
    assert codes == [0] * len(group)
    assert loaded(modules, CLIENT_STACK) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["transfer"],
        ["transfer", "submit", "--from", "hkmo:a", "--block", "VCS:1-2"],  # no --to
        ["use", "list", "--holder", "hkmo:a", "--state", "no-such-state"],
        ["migrate", "plan", "--entity", "e", "--destination-account", "shenzhen:a"],
        ["rules", "evaluate", "--pack", "hkmo"],
        ["audit", "verify"],
        ["certs", "token", "DIR"],
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
def test_a_usage_error_loads_no_client_stack(argv: list[str]) -> None:
    codes, modules = _parse_all([argv])
    assert codes == [2]
    assert loaded(modules, CLIENT_STACK) == []


def test_help_loads_no_command() -> None:
    code, ran = _run(["--help"])
    assert code == 0 and "transfer" in ran.output
    assert loaded(ran.modules, SERVER_STACK) == []


def test_parsing_a_serial_loads_no_server_code() -> None:
    code, ran = _run(
        [
            "serial",
            "parse",
            "--registry",
            "verra",
            "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0",
        ]
    )
    assert code == 0 and "115597313" in ran.output
    assert loaded(ran.modules, SERVER_STACK) == []
    assert loaded(ran.modules, CLIENT_STACK) == []


def test_offline_verification_loads_no_database_code(tmp_path: Path) -> None:
    bundle, key = _bundle_and_key(tmp_path)
    code, ran = _run(["audit", "verify", str(bundle), "--log-key", key])
    assert code == 0 and ran.output.startswith("OK: 1 events verified")
    assert loaded(ran.modules, SERVER_STACK) == []
    # It checks signatures (cryptography) and asks no gateway: no gRPC, no messages.
    no_call = ("grpc", "google.protobuf", "adapters._pb", "jsonschema", "compliance_rules")
    assert loaded(ran.modules, no_call) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["transfer", "list"],
        ["trace", "--block", "VCS:100-199"],
        ["migrate", "get", "migrations/m-1"],
        ["project", "list", "PROJECT", "--jurisdiction", "shenzhen"],
        ["project", "get", "listings/l-1"],
        ["entity", "import", "ENTITIES"],
        [
            "surrender",
            "--account",
            "shenzhen:a",
            "--block",
            "SZA:1-2",
            "--entity",
            "e",
            "--year",
            "2023",
            "--jurisdiction",
            "shenzhen",
        ],
        ["use", "get", "uses/u-1"],
        ["use", "list", "--kind", "surrender", "--holder", "shenzhen:a"],
    ],
    ids=[
        "transfer",
        "trace",
        "migrate",
        "project",
        "project-get",
        "entity",
        "surrender",
        "use-get",
        "use-list",
    ],
)
def test_a_client_command_loads_no_server_code(tmp_path: Path, argv: list[str]) -> None:
    project = tmp_path / "project.yaml"
    project.write_text("program: VCS\nproject_id: p-1\n")
    entities = tmp_path / "entities.json"
    entity = {"entity_id": "e-1", "sector": "steel", "gases": ["CO2"], "accounts": {}}
    entities.write_text(json.dumps({"entities": [entity]}))
    files = {"PROJECT": str(project), "ENTITIES": str(entities)}
    code, ran = _run([files.get(a, a) for a in argv] + _DEAD_GATEWAY)
    assert code == 1  # UNAVAILABLE: it got as far as calling the gateway
    assert loaded(ran.modules, SERVER_STACK) == []


def test_rules_commands_load_the_engine_but_no_server_code() -> None:
    code, ran = _run(["rules", "validate", "shenzhen"])
    assert code == 0
    assert loaded(ran.modules, ("compliance_rules.engine",)) == ["compliance_rules.engine"]
    assert loaded(ran.modules, SERVER_STACK) == []


def test_an_offline_listing_loads_no_server_code(tmp_path: Path) -> None:
    # It reads the project as `project list` does and converts it as ListProject does, from
    # the modules the gateway shares with its clients, never the gate or the database.
    project = tmp_path / "project.yaml"
    project.write_text(
        "program: VCS\nproject_id: p-1\ncountry: BR\n"
        "crediting_period_start: 2024-01-01\ncrediting_period_end: 2024-12-31\n"
    )
    argv = ["rules", "evaluate", "--pack", "hkmo", "--listing", "--facts", str(project)]
    code, ran = _run([*argv, "--clock", "2026-11-26"])
    assert code == 0 and ran.output.startswith("LISTABLE"), ran.output
    assert loaded(ran.modules, SERVER_STACK) == []


def test_serve_loads_the_server_stack_when_it_runs(tmp_path: Path) -> None:
    # The probe's own check: a command that needs the stack does load it.
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"\xff\xfe")
    code, ran = _run(["serve", "--insecure", "--config", str(config)])
    assert code == 2
    assert {"gateway.server", "sqlalchemy"} <= ran.modules


def test_the_registry_commands_offer_every_registry() -> None:
    # `emulate` and `registry import` name the registries by their serial codecs' ids, so
    # that parsing loads no registry table (its clients load gRPC): the same registries.
    assert sorted(REGISTRY_IDS) == sorted(REGISTRIES)


def test_the_state_choices_are_the_apis_states() -> None:
    # `transfer list --state` and `use list --state` spell the generated enums' values out,
    # so that parsing loads no generated messages: the same values, in the same order.
    def values(enum: Any, prefix: str) -> tuple[str, ...]:
        names = (value.name for value in enum.DESCRIPTOR.values)
        return tuple(n.removeprefix(prefix).lower() for n in names if n != f"{prefix}UNSPECIFIED")

    assert values(model_pb2.TransferState, "TRANSFER_STATE_") == TRANSFER_STATE_NAMES
    assert values(model_pb2.UseState, "USE_STATE_") == USE_STATE_NAMES
