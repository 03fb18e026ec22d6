"""The ``carbonlink`` command as a shell runs it."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli_serve
from gateway.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, build_parser, main
from registry_bridge.covered_entities import parse_entities, validate_entity


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # As in `carbonlink trace ... | head -3`: the pipe closes before the output is written.
    command = [sys.executable, "-m", "gateway.cli", "rules", "validate"]
    command += ["compliance_rules/packs/national.yaml"] * 200
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


@pytest.fixture
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve points the process's logging at the stderr of the moment: here a capture
    # that closes with the test, which later tests' logging would then write to.
    monkeypatch.setattr(cli_serve, "configure_logging", lambda *_: None)


@pytest.mark.usefixtures("_keep_logging")
def test_serve_names_an_unknown_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite:///{tmp_path}/gateway.db"
    argv = ["serve", "--insecure", "--database-url", database, "--registry", "foo=127.0.0.1:1"]
    assert main(argv) == 2
    assert "configuration error: registries: no adapter for 'foo'" in capsys.readouterr().err


@pytest.mark.usefixtures("_keep_logging")
def test_serve_says_its_address_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        argv = ["serve", "--insecure", "--listen", listen]
        assert main([*argv, "--database-url", f"sqlite:///{tmp_path}/gateway.db"]) == 1
    assert f"cannot start: cannot bind {listen}" in capsys.readouterr().err


def test_an_unknown_transfer_state_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["transfer", "list", "--insecure", "--state", "bogus"])
    assert exited.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


_KEY = "carbonlink.local/provenance+45cd085e+AVsM+MbnAaQza/EX64goODZiYPX/wnaTXYCESSwRtfj2"
_GATEWAY = ["--insecure", "--target", "127.0.0.1:1"]


@pytest.mark.usefixtures("_keep_logging")
@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["audit", "verify", "--log-key", "BIN", "BIN"], "'BIN' is neither a verifier key"),
        (["audit", "consistency", *_GATEWAY, "--log-key", _KEY, "BIN"], "BIN is not UTF-8"),
        (["entity", "import", *_GATEWAY, "BIN"], "BIN: 'utf-8' codec can't decode"),
        (["serve", "--insecure", "--config", "BIN"], "config file BIN: not UTF-8 text"),
        (
            ["reconcile", "--tls-dir", ".", "--token-file", "BIN", "--target", "127.0.0.1:1"],
            "cannot read the TLS or token files",
        ),
    ],
    ids=["log-key", "checkpoint", "entities", "config", "token"],
)
def test_a_file_that_is_not_utf8_text_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    binary = tmp_path / "export.bin"
    binary.write_bytes(b"\xff\xfe\x00binary")
    argv = [str(binary) if a == "BIN" else a for a in argv]
    assert main(argv) == 2
    assert said.replace("BIN", str(binary)) in capsys.readouterr().err


def test_emulate_says_it_cannot_listen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        argv = ["emulate", "verra", "--listen", address, "--data", str(tmp_path / "store")]
        assert main(argv) == 1
    assert f"carbonlink emulate: cannot serve: could not listen on {address}" in (
        capsys.readouterr().err
    )


_EXPORT = Path(__file__).parents[2] / "assets" / "registries" / "verra" / "transactions.csv"


@pytest.mark.parametrize("data", ["a-file", "a-corrupt-store"])
def test_a_store_that_cannot_be_opened_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str
) -> None:
    store = tmp_path / "store"
    if data == "a-file":
        store.write_text("not a directory")
    else:
        store.mkdir()
        (store / "verra.sqlite3").write_text("not a database")
    assert main(["registry", "import", "verra", str(_EXPORT), "--data", str(store)]) == 2
    assert "carbonlink registry import: --data: " in capsys.readouterr().err
    argv = ["emulate", "verra", "--listen", "127.0.0.1:0", "--data", str(store)]
    assert main(argv) == 1
    assert "carbonlink emulate: cannot serve: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["transfer", "list", "--page-size", "99999999999"],
        ["migrate", "plan", "--entity", "e", "--from-year", "99999999999"],
        [
            *["transfer", "submit", "--from", "hkmo:a", "--to", "shenzhen:b"],
            *["--block", "VCS:1-2", "--use", "corsia", "--compliance-year", "-99999999999"],
        ],
    ],
    ids=["page-size", "from-year", "compliance-year"],
)
def test_an_int32_flag_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # Refused before any connection: nothing listens on the target.
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--insecure", "--target", "127.0.0.1:1"])
    assert exited.value.code == 2
    assert "is outside the 32-bit range the API carries" in capsys.readouterr().err


def test_a_project_file_with_an_impossible_date_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Unquoted, YAML reads it as a date itself and fails before the API sees the text.
    project = tmp_path / "project.yaml"
    project.write_text("program: VCS\nproject_id: p-1\nstart_date: 2024-13-45\n")
    argv = ["project", "list", str(project), "--jurisdiction", "shenzhen"]
    assert main([*argv, "--insecure", "--target", "127.0.0.1:1"]) == 2
    assert f"cannot read {project}: month must be in 1..12" in capsys.readouterr().err


def test_emulate_names_a_fault_file_that_is_not_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("unavailable_fraction: [0.5\n")
    argv = ["emulate", "verra", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "store")]
    assert main([*argv, "--faults", str(faults)]) == 2
    assert f"bad fault settings: {faults}: not valid YAML" in capsys.readouterr().err


def test_certs_init_names_a_directory_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    assert main(["certs", "init", str(taken)]) == 2
    assert f"carbonlink certs init: cannot write {taken}" in capsys.readouterr().err


def _subcommands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    """Every command under ``parser``, by its words (``transfer submit``), and its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{path} {name}".strip())
            return
    yield path, parser


@pytest.mark.parametrize(
    "command", ["transfer", "retire", "surrender", "use", "migrate", "entity", "certs"]
)
def test_every_option_of_the_client_commands_says_what_it_is(command: str) -> None:
    # A newcomer reads --help: an option shown bare leaves them guessing its meaning.
    bare = [
        f"{path}: {', '.join(action.option_strings) or action.dest}"
        for path, sub in _subcommands(build_parser(), "")
        if path.split()[0] == command
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert bare == []


def test_the_entity_import_help_shows_a_file_the_command_takes() -> None:
    (load,) = [sub for path, sub in _subcommands(build_parser(), "") if path == "entity import"]
    description = load.description or ""
    example, _ = json.JSONDecoder().raw_decode(description[description.index("{") :])
    entities = parse_entities(example)
    for entity in entities:
        validate_entity(entity)
    assert {"shenzhen", "national"} == set(entities[0].accounts)
    assert entities[0].years[0].compliance_year == 2023


@pytest.mark.parametrize(
    ("ttl", "message"), [("-3600", "-3600 is not a lifetime"), ("1h", "'1h' is not a whole number")]
)
def test_certs_token_refuses_a_lifetime_that_makes_a_dead_token(
    ttl: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["certs", "token", str(tmp_path), "--role", "auditor", "--ttl", ttl])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # An instruction: it may have reached the gateway, so the id to ask after it.
        (
            [
                *("transfer", "submit", "--from", "verra:a", "--to", "shenzhen:b"),
                *("--block", "VCS:1-5", "--request-id", "interrupted-1"),
            ],
            "--request-id interrupted-1",
        ),
        (["transfer", "list"], ""),
        (["trace", "--block", "VCS:1-5"], ""),
    ],
)
def test_ctrl_c_while_the_gateway_answers_is_one_line(argv: list[str], says: str) -> None:
    # A gateway that takes the connection and never answers: the user gives up with Ctrl-C.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        command = [sys.executable, "-m", "gateway.cli", *argv, "--insecure", "--target", target]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        silent.settimeout(60)
        connection, _ = silent.accept()  # the call is under way
        with connection:
            child.send_signal(signal.SIGINT)
            _, stderr_bytes = child.communicate(timeout=60)
    stderr = stderr_bytes.decode()
    assert child.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.rstrip().endswith("carbonlink: interrupted")
    assert says in stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["transfer", "list"],
        ["use", "list"],
        ["migrate", "get", "m"],
        ["project", "get", "listings/x"],
        ["trace", "--block", "VCS:1-5"],
        ["reconciliations"],
        ["registry", "accounts"],
    ],
)
@pytest.mark.parametrize("target", ["127.0.0.1:99999", "", "127.0.0.1", "127.0.0.1:0", "a b:1"])
def test_a_target_that_is_not_host_port_is_a_usage_error(
    argv: list[str], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # gRPC dials port 99999 modulo 65536 (34463: someone else's service, perhaps), and an
    # empty target fails deep in its C core with a stack trace on stderr.
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--target", target, "--insecure"])
    assert exited.value.code == 2
    assert f"argument --target: {target!r} is not HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "", "127.0.0.1", "not-an-address"])
def test_emulate_refuses_an_address_it_cannot_listen_on(
    listen: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["emulate", "verra", "--listen", listen, "--data", str(tmp_path / "store")])
    assert exited.value.code == 2
    assert f"argument --listen: {listen!r} is not HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


_INSTRUCTIONS = [
    ["transfer", "submit", "--from", "verra:a", "--to", "shenzhen:b", "--block", "VCS:1-5"],
    ["transfer", "batch", "batch.json"],
    ["retire", "--account", "verra:a", "--block", "VCS:1-5", "--beneficiary", "b"],
    [
        *("surrender", "--account", "shenzhen:a", "--block", "SZA:1-5", "--entity", "e"),
        *("--year", "2023", "--jurisdiction", "shenzhen"),
    ],
    ["use", "resolve", "uses/u", "--retry"],
    ["migrate", "execute", "--entity", "e", "--from-year", "2025"],
    ["migrate", "abandon", "migrations/m", "--reason", "r"],
    ["entity", "import", "entities.json"],
    ["entity", "withdraw", "e", "--year", "national:2025"],
    ["project", "list", "project.yaml", "--jurisdiction", "shenzhen"],
]


@pytest.mark.parametrize("argv", _INSTRUCTIONS, ids=lambda argv: " ".join(argv[:2]))
def test_an_empty_request_id_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # `--request-id "$ID"` with ID unset: replaced by a new id, every run of the command
    # was another request, the idempotency the flag is given for silently lost.
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--request-id", "", "--insecure"])
    assert exited.value.code == 2
    assert "argument --request-id: an empty request id" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["transfer", "list"], ["use", "list"], ["trace", "--block", "VCS:1-5"]]
)
@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e300", "soon"])
def test_a_timeout_that_is_not_a_wait_is_a_usage_error(
    argv: list[str], timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # gRPC answers each with DEADLINE_EXCEEDED before asking anyone: a gateway too slow,
    # as the user reads it.
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--timeout", timeout, "--insecure"])
    assert exited.value.code == 2
    assert f"argument --timeout: {timeout!r} is not a" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        ("[]", "an array"),
        ('[{"transfers": []}]', "an array"),
        ('"transfers"', "a string"),
        ("5", "a number"),
        ("null", "null"),
        ("true", "true"),
    ],
)
def test_a_batch_file_that_is_not_an_object_says_so(
    document: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # protobuf's parser read "[]" as a batch with no instructions, '"transfers"' as a
    # field named "t", and 5 as "'int' object is not iterable".
    batch = tmp_path / "batch.json"
    batch.write_text(document)
    assert main(["transfer", "batch", str(batch), "--insecure"]) == 2
    assert capsys.readouterr().err.strip() == (
        f'carbonlink transfer batch: {batch}: the batch is a JSON object, {{"transfers": '
        f"[...]}}, not {kind}"
    )


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["certs", "init", ""], "dir"),
        (["certs", "key", "", "--subject", "steel"], "dir"),
        (["registry", "import", "verra", "export.csv", "--data", ""], "--data"),
        (["emulate", "verra", "--listen", "127.0.0.1:0", "--data", ""], "--data"),
    ],
)
def test_an_empty_directory_to_write_is_a_usage_error(
    argv: list[str],
    flag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `--data "$DATA"` with DATA unset read as the current directory: a PKI or a registry
    # store written, or served, wherever the command happened to run.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export.csv").write_text("")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert f"argument {flag}: an empty path" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["export.csv"]
