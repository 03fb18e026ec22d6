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
