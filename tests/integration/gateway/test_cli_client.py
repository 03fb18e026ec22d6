"""`carbonlink transfer submit|evaluate|batch|get|list`, `retire`, `surrender` and `use
get|list` against a running gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from adapters._pb.carbonlink.v1 import model_pb2
from adapters.serials import format_serial, parse_serial
from gateway.cli import main
from tests.integration.gateway.conftest import VERRA_SERIAL, LinkedRegistries, LiveGateway
from tests.integration.gateway.test_uses_api import STEEL, pilot_gateway


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--insecure"])  # live_gateway is insecure; test_security covers TLS
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_get_list_and_retire(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    target = live_gateway.target
    origin = parse_serial("verra", VERRA_SERIAL)
    serial = format_serial(
        "verra", origin.with_range(origin.id.serial_start, origin.id.serial_start + 99)
    )
    code, out, err = _run(
        capsys,
        "transfer",
        "submit",
        "--target",
        target,
        "--from",
        "hkmo:hk-seller",
        "--to",
        "shenzhen:buyer",
        "--serial",
        serial,
        "--request-id",
        "cli-1",
        "--currency",
        "HKD",
        "--amount",
        "8250.00",
        "--json",
    )
    assert code == 0, err
    transfer = json.loads(out)
    assert transfer["state"] == "TRANSFER_STATE_COMPLETED"
    # Every field, the unset trade reference too.
    assert transfer["instruction"]["settlement"] == {
        "currency": "HKD",
        "amount": "8250.00",
        "tradeReference": "",
    }
    mirror = transfer["creditedBlocks"][0]["id"]

    code, out, _ = _run(capsys, "transfer", "get", transfer["name"], "--target", target)
    assert code == 0
    assert out.strip() == f"{transfer['name']} COMPLETED"

    code, out, _ = _run(
        capsys, "transfer", "list", "--state", "completed", "--target", target, "--json"
    )
    assert [t["name"] for t in json.loads(out)["transfers"]] == [transfer["name"]]
    # An empty page is an empty list, not a missing key.
    code, out, _ = _run(
        capsys, "transfer", "list", "--state", "rejected", "--target", target, "--json"
    )
    assert json.loads(out) == {"nextPageToken": "", "transfers": []}

    code, out, err = _run(
        capsys,
        "transfer",
        "submit",
        "--target",
        target,
        "--from",
        "hkmo:hk-seller",
        "--to",
        "shenzhen:buyer",
        "--serial",
        "not-a-serial",
    )
    assert code == 1
    assert "INVALID_ARGUMENT" in err

    assert mirror["serialSeries"] == "shenzhen-mirror"
    code, out, err = _run(
        capsys,
        "retire",
        "--target",
        target,
        "--account",
        "hkmo:hk-seller",
        "--serial",
        format_serial("verra", origin.with_range(origin.id.serial_end - 9, origin.id.serial_end)),
        "--beneficiary",
        "Acme Ltd",
        "--claim",
        "2025 flights",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["beneficiary"] == "Acme Ltd"


def test_mirror_units_are_retired_and_returned_by_block(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's journey: the Shenzhen buyer retires part of its mirror units and
    # returns the rest; mirror units have no registry serial, so they are named as blocks.
    target = live_gateway.target
    origin = parse_serial("verra", VERRA_SERIAL).id
    first = f"VCS:{origin.serial_start}-{origin.serial_start + 99}"
    code, out, err = _run(
        capsys, "transfer", "submit", "--target", target, "--json",
        "--from", "hkmo:hk-seller", "--to", "shenzhen:buyer", "--block", first,
    )  # fmt: skip
    assert code == 0, err
    mirror = json.loads(out)["creditedBlocks"][0]["id"]
    start, end = int(mirror["serialStart"]), int(mirror["serialEnd"])
    code, out, err = _run(
        capsys, "retire", "--target", target, "--json", "--account", "shenzhen:buyer",
        "--block", f"VCS/shenzhen-mirror:{start}-{start + 29}", "--beneficiary", "Buyer Co.",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["beneficiary"] == "Buyer Co."
    code, out, err = _run(
        capsys, "transfer", "submit", "--target", target, "--json",
        "--from", "shenzhen:buyer", "--to", "hkmo:hk-buyer",
        "--block", f"VCS/shenzhen-mirror:{start + 30}-{end}",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["state"] == "TRANSFER_STATE_COMPLETED"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transfer", "submit", "--from", "hkmo:a", "--to", "shenzhen:b"], "--serial or --block"),
        (["retire", "--account", "hkmo:a", "--beneficiary", "B"], "--serial or --block"),
        (
            ["surrender", "--account", "shenzhen:a", "--entity", "e", "--year", "2023",
             "--jurisdiction", "shenzhen"],
            "--serial or --block",
        ),
        (
            ["transfer", "submit", "--from", "hkmo:a", "--to", "shenzhen:b", "--block",
             "VCS:1-2", "--amount", "10"],
            "both --currency and --amount",
        ),
    ],
)  # fmt: skip
def test_units_and_settlement_are_checked_before_any_call(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--insecure", "--target", "127.0.0.1:1"]) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_block_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["retire", "--account", "hkmo:a", "--beneficiary", "B", "--block", "VCS:9-1"])
    assert exited.value.code == 2
    assert "serial_end 1 is below serial_start 9" in capsys.readouterr().err


def test_a_listing_longer_than_a_page_says_how_to_read_on(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", live_gateway.target]
    start = parse_serial("verra", VERRA_SERIAL).id.serial_start
    names = []
    for lot in range(3):
        first = start + 10 * lot
        code, out, err = _run(
            capsys,
            "transfer",
            "submit",
            "--from",
            "hkmo:hk-seller",
            "--to",
            "shenzhen:buyer",
            "--block",
            f"VCS:{first}-{first + 9}",
            *target,
        )
        assert code == 0, err
        names.append(out.split()[0])

    # Without --json, a reader shown two of three transfers must learn that there are
    # more and how to ask for them, or the listing reads as complete.
    code, out, _ = _run(capsys, "transfer", "list", "--page-size", "2", *target)
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == names[:2]
    token = lines[-1].split("--page-token ")[-1].strip()
    assert lines[-1].startswith("more:") and token, out
    code, out, _ = _run(
        capsys, "transfer", "list", "--page-size", "2", "--page-token", token, *target
    )
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == names[2:], out
    # --limit, as `use list` names it, is the same flag.
    code, out, _ = _run(capsys, "transfer", "list", "--limit", "2", *target)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[:2]] == names[:2]


def test_surrender_then_read_the_uses_back(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sza = STEEL.sza.id
    with pilot_gateway(database_url) as gateway:
        capsys.readouterr()  # the gateway's start-up log, not a command's output
        target = ["--target", gateway.target]
        code, out, err = _run(
            capsys, "surrender", *target, "--json",
            "--account", f"shenzhen:{STEEL.shenzhen_account}",
            "--block", f"SZA:{sza.serial_start}-{sza.serial_start + 9}",
            "--entity", STEEL.entity_id, "--year", str(STEEL.final_year),
            "--jurisdiction", "shenzhen", "--request-id", "cli-surrender",
        )  # fmt: skip
        assert code == 0, err
        surrendered = json.loads(out)
        assert surrendered["state"] == "USE_STATE_COMPLETED"
        assert (surrendered["kind"], surrendered["entityId"], surrendered["complianceYear"]) == (
            "surrender",
            STEEL.entity_id,
            STEEL.final_year,
        )
        assert int(surrendered["blocks"][0]["quantity"]) == 10
        origin = parse_serial("verra", VERRA_SERIAL).id
        code, out, err = _run(
            capsys, "retire", *target, "--account", "hkmo:hk-seller",
            "--block", f"VCS:{origin.serial_start}-{origin.serial_start + 4}",
            "--beneficiary", "Acme Ltd",
        )  # fmt: skip
        assert code == 0, err
        retired = out.split()[0]
        # A second surrender, summarized.
        code, out, err = _run(
            capsys, "surrender", *target,
            "--account", f"shenzhen:{STEEL.shenzhen_account}",
            "--block", f"SZA:{sza.serial_start + 10}-{sza.serial_start + 19}",
            "--entity", STEEL.entity_id, "--year", str(STEEL.final_year),
            "--jurisdiction", "shenzhen",
        )  # fmt: skip
        assert code == 0, err
        second = out.split()[0]
        assert out.strip() == f"{second} surrendered for {STEEL.entity_id}, shenzhen 2023"

        # use get, by name or bare id: every field, the refusal reason (empty) included.
        code, out, err = _run(capsys, "use", "get", surrendered["name"], *target)
        assert code == 0, err
        read = json.loads(out)
        assert read["refusalReason"] == "" and read["beneficiary"] == ""
        assert json_format.ParseDict(read, model_pb2.UnitUse()) == json_format.ParseDict(
            surrendered, model_pb2.UnitUse()
        )
        code, out, _ = _run(capsys, "use", "get", retired.removeprefix("uses/"), *target)
        assert json.loads(out)["name"] == retired and json.loads(out)["kind"] == "retirement"

        def listed(*filters: str) -> tuple[list[str], str]:
            code, out, err = _run(capsys, "use", "list", *filters, *target)
            assert code == 0, err
            return [u["name"] for u in json.loads(out)["uses"]], err

        everything = [surrendered["name"], retired, second]
        assert listed() == (everything, "")
        assert listed("--kind", "surrender")[0] == [surrendered["name"], second]
        assert listed("--holder", "hkmo:hk-seller")[0] == [retired]
        assert listed("--holder", "shenzhen")[0] == [surrendered["name"], second]
        assert listed("--state", "completed")[0] == everything
        assert listed("--state", "rejected")[0] == []
        # A page that is not the last says how to read on, on stderr: stdout stays JSON.
        first, more = listed("--limit", "2")
        token = more.split("--page-token ")[-1].strip()
        assert first == everything[:2] and more.startswith("more:") and token
        assert listed("--limit", "2", "--page-token", token) == (everything[2:], "")

        code, _, err = _run(capsys, "use", "get", "uses/" + "0" * 32, *target)
        assert code == 1 and "NOT_FOUND" in err
        code, _, err = _run(capsys, "use", "list", "--page-token", "bogus", *target)
        assert code == 1 and "INVALID_ARGUMENT: page_token" in err
        code, _, err = _run(capsys, "use", "list", "--holder", "vera", *target)
        assert code == 1 and "holder.registry: unknown registry 'vera'" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["use", "get", "uses/1", "--json"],
        ["use", "list", "--json"],
        ["use", "resolve", "uses/1", "--retry", "--json"],
    ],
)
def test_use_commands_take_json_as_every_client_command_does(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # They print JSON anyway; a script passing --json to every command is not refused.
    assert main([*argv, "--insecure", "--target", "127.0.0.1:1"]) == 1
    assert capsys.readouterr().err.startswith("carbonlink: UNAVAILABLE")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["use", "list", "--holder", "shenzhen:"], "is not REGISTRY:ACCOUNT or REGISTRY"),
        (["use", "list", "--limit", "0"], "0 is not a page size"),
        (["use", "list", "--page-size", "0"], "0 is not a page size"),
        (["transfer", "list", "--limit", "0"], "0 is not a page size"),
        (["transfer", "list", "--page-size", "-5"], "-5 is not a page size"),
        (["use", "list", "--state", "done"], "invalid choice: 'done'"),
    ],
)
def test_a_bad_use_listing_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--insecure", "--target", "127.0.0.1:1"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _listed_transfers(capsys: pytest.CaptureFixture[str], target: str) -> list[str]:
    code, out, err = _run(capsys, "transfer", "list", "--target", target, "--json")
    assert code == 0, err
    return [t["name"] for t in json.loads(out)["transfers"]]


def test_evaluate_is_a_dry_run_of_the_transfer_instruction(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    target = live_gateway.target
    origin = parse_serial("verra", VERRA_SERIAL).id
    instruction = ["--target", target, "--from", "hkmo:hk-seller", "--to", "shenzhen:buyer"]
    instruction += ["--block", f"VCS:{origin.serial_start}-{origin.serial_start + 9}"]

    code, out, err = _run(capsys, "transfer", "evaluate", *instruction)
    assert code == 0, err
    assert out.startswith("allowed by shenzhen@"), out
    # Denied: exit 1, every violated rule, and in JSON a false `allowed` that is there. For
    # the 2026 obligation, decided by the first phase's rules whatever today is (from 2027
    # the day's rules are the second phase's, which refuse CORSIA use under another rule).
    corsia = ["--use", "corsia", "--compliance-year", "2026"]
    code, out, err = _run(capsys, "transfer", "evaluate", *instruction, *corsia)
    assert code == 1, err
    assert out.startswith("DENIED by ") and "  CR-CORSIA-0006: " in out, out
    code, out, err = _run(capsys, "transfer", "evaluate", *instruction, *corsia, "--json")
    assert code == 1, err
    decision = json.loads(out)["decision"]
    assert decision["allowed"] is False
    assert "CR-CORSIA-0006" in [v["ruleId"] for v in decision["violations"]]
    # Units the source does not hold: denied by the ledger, named.
    code, out, _ = _run(
        capsys, "transfer", "evaluate", "--target", target, "--from", "hkmo:hk-seller",
        "--to", "shenzhen:buyer", "--block", "VCS:1-10",
    )  # fmt: skip
    assert code == 1
    assert "CL-LEDGER-UNKNOWN_UNITS: VCS 1-10: serials from 1 are not in the ledger" in out
    # A dry run moves nothing.
    assert _listed_transfers(capsys, target) == []


def _batch_file(path: Path, *instructions: dict[str, object]) -> Path:
    path.write_text(json.dumps({"transfers": list(instructions)}), encoding="utf-8")
    return path


def _instruction(first: int, last: int, destination: str = "buyer") -> dict[str, object]:
    return {
        "source": {"registry": "hkmo", "account": "hk-seller"},
        "destination": {"registry": "shenzhen", "account": destination},
        "units": [{"block": {"program": "VCS", "serial_start": first, "serial_end": last}}],
        "settlement": {"currency": "HKD", "amount": "1000.00"},
    }


def test_a_batch_file_is_submitted_as_one_batch_each_instruction_on_its_own(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = ["--target", live_gateway.target]
    start = parse_serial("verra", VERRA_SERIAL).id.serial_start
    batch = _batch_file(
        tmp_path / "batch.json",
        {"instruction": _instruction(start, start + 9)},
        {"request_id": "trade-2", "instruction": _instruction(start + 10, start + 19)},
        {"request_id": "trade-3", "instruction": _instruction(1, 10)},
    )
    submit = ["transfer", "batch", str(batch), "--request-id", "day-1", *target]
    code, out, err = _run(capsys, *submit)
    assert code == 1, err  # one of the three is rejected
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [
        ["[0]", "day-1-0:", lines[0].split()[2]],
        ["[1]", "trade-2:", lines[1].split()[2]],
    ]
    assert all(line.endswith(" COMPLETED") for line in lines[:2]), out
    assert lines[2].startswith("[2] trade-3: transfers/") and " REJECTED: " in lines[2], out
    moved = [line.split()[2] for line in lines]
    assert sorted(_listed_transfers(capsys, live_gateway.target)) == sorted(moved)

    # The same command again answers the same transfers, moving nothing more.
    code, out, _ = _run(capsys, *submit, "--json")
    assert code == 1
    results = json.loads(out)["results"]
    assert [r["transfer"]["name"] for r in results] == moved
    # The same request ids with another body: each refused, by its position, nothing moved.
    changed = _batch_file(
        tmp_path / "changed.json",
        {"instruction": _instruction(start + 20, start + 29)},
        {"request_id": "trade-2", "instruction": _instruction(start + 10, start + 19, "other")},
    )
    code, out, _ = _run(capsys, "transfer", "batch", str(changed), "--request-id", "day-1", *target)
    assert code == 1
    assert out.splitlines() == [
        "[0] day-1-0: ALREADY_EXISTS: request_id 'day-1-0' was already used for a different "
        "instruction; use a new request id for a new instruction",
        "[1] trade-2: ALREADY_EXISTS: request_id 'trade-2' was already used for a different "
        "instruction; use a new request id for a new instruction",
    ]
    assert sorted(_listed_transfers(capsys, live_gateway.target)) == sorted(moved)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "batch.json: Failed to load JSON"),
        ('{"transfers": []}', 'batch.json: no instructions in "transfers"'),
        ('{"transfer": []}', 'has no field named "transfer"'),
        ('{"request_id": "b", "transfers": [{}]}', "give the batch's request id with --request-id"),
    ],
)
def test_a_bad_batch_file_is_a_usage_error_before_any_call(
    content: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(content, encoding="utf-8")
    assert main(["transfer", "batch", str(batch), "--insecure", "--target", "127.0.0.1:1"]) == 2
    assert message in capsys.readouterr().err


def test_an_instruction_whose_registry_does_not_answer_says_how_to_follow_it(
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = ["--target", live_gateway.target]
    origin = parse_serial("verra", VERRA_SERIAL).id
    code, out, err = _run(
        capsys, "transfer", "submit", *target, "--json", "--from", "hkmo:hk-seller",
        "--to", "shenzhen:buyer", "--block", f"VCS:{origin.serial_start}-{origin.serial_start + 9}",
    )  # fmt: skip
    assert code == 0, err
    mirror = json.loads(out)["creditedBlocks"][0]["id"]
    # Retiring a mirror retires its origin at Verra, which is down: the use stays pending.
    registries.emulators["verra"].stop()
    # A transfer waiting on Verra is not refused: the command says it goes on, and where
    # to read it.
    code, out, err = _run(
        capsys, "transfer", "submit", *target, "--from", "hkmo:hk-seller",
        "--to", "shenzhen:buyer", "--block",
        f"VCS:{origin.serial_start + 10}-{origin.serial_start + 19}",
    )  # fmt: skip
    summary = out[out.index("transfers/") :]  # after the gateway's warning, logged here
    waiting = summary.split()[0]
    assert code == 1 and summary.startswith(f"{waiting} CHECKED: waiting for a registry"), out
    assert err == (
        f"carbonlink: {waiting} is not final yet: the gateway carries it on by itself; "
        f"`carbonlink transfer get {waiting}` shows where it stands\n"
    )
    retire = ["retire", *target, "--account", "shenzhen:buyer", "--beneficiary", "Acme"]
    retire += ["--block", f"VCS/shenzhen-mirror:{mirror['serialStart']}-{mirror['serialEnd']}"]
    code, _, err = _run(capsys, *retire)
    assert code == 1
    first, advice = err.splitlines()
    assert first.startswith("carbonlink: UNAVAILABLE: registry verra unavailable"), err
    request_id = advice.split("--request-id ")[1].split()[0]
    assert advice == (
        "carbonlink: the request may have been recorded and carried on: run the same command "
        f"with --request-id {request_id} for its outcome (another id would be another request)"
    )
    # Asked again under that id: the same use, still waiting, not a second one.
    code, _, err = _run(capsys, *retire, "--request-id", request_id)
    assert code == 1 and f"--request-id {request_id} " in err, err
    code, out, err = _run(capsys, "use", "list", *target)
    assert code == 0, err
    assert [u["state"] for u in json.loads(out)["uses"]] == ["USE_STATE_PENDING"]


@pytest.mark.parametrize("amount", ["1e3", "1250.505", "-5", "NaN", "01250", "1" * 16])
def test_a_settlement_amount_is_refused_unless_in_plain_digits_to_the_cent(
    amount: str, live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    target = live_gateway.target
    start = parse_serial("verra", VERRA_SERIAL).id.serial_start
    trade = ["--target", target, "--from", "hkmo:hk-seller", "--to", "shenzhen:buyer"]
    trade += ["--block", f"VCS:{start}-{start + 9}", "--currency", "HKD", "--amount", amount]
    for command in ("submit", "evaluate"):
        code, _, err = _run(capsys, "transfer", command, *trade)
        assert code == 1
        assert err.startswith(
            "carbonlink: INVALID_ARGUMENT: instruction.settlement.amount: must be a "
            "non-negative decimal in plain digits"
        ), err
    assert _listed_transfers(capsys, target) == []
    # In plain digits it settles.
    code, out, err = _run(capsys, "transfer", "submit", *trade[:-1], "1250.5", "--json")
    assert code == 0, err
    assert json.loads(out)["instruction"]["settlement"]["amount"] == "1250.5"


def test_a_transfer_to_an_account_not_open_says_so(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    start = parse_serial("verra", VERRA_SERIAL).id.serial_start
    code, out, _ = _run(
        capsys, "transfer", "submit", "--target", live_gateway.target,
        "--from", "hkmo:hk-seller", "--to", "shenzhen:no-such-buyer",
        "--block", f"VCS:{start}-{start + 9}",
    )  # fmt: skip
    assert code == 1
    assert " ROLLED_BACK: " in out
    assert "destination account 'no-such-buyer' is not open at registry shenzhen" in out
