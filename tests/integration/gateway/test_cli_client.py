"""`carbonlink transfer submit|get|list` and `carbonlink retire` against a running gateway."""

from __future__ import annotations

import json

import pytest

from adapters.serials import format_serial, parse_serial
from gateway.cli import main
from tests.integration.gateway.conftest import VERRA_SERIAL, LiveGateway


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
    assert transfer["instruction"]["settlement"] == {"currency": "HKD", "amount": "8250.00"}
    mirror = transfer["creditedBlocks"][0]["id"]

    code, out, _ = _run(capsys, "transfer", "get", transfer["name"], "--target", target)
    assert code == 0
    assert out.strip() == f"{transfer['name']} COMPLETED"

    code, out, _ = _run(
        capsys, "transfer", "list", "--state", "completed", "--target", target, "--json"
    )
    assert [t["name"] for t in json.loads(out)["transfers"]] == [transfer["name"]]

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
