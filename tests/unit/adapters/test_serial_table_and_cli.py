"""The registry table of codecs, the JSON view of a block and ``carbonlink serial parse``."""

from __future__ import annotations

import argparse
import io
import json
from datetime import date

import pytest

from adapters import serials
from gateway import cli_serial
from registry_bridge.model import Authorization, CorrespondingAdjustment, Program

EXAMPLES = {
    # One serial per program per registry, each spelled as documented in its codec.
    "verra": ["9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"],
    "gold-standard": ["GS1-1-KE-GS7495-16-2025-30645-608-30350"],
    "bri": ["VU-ITMO-11-356-2022-0-27-35"],
    "national": ["CEA-2023-1000001-1005000", "CN-CCER-1-250000-20240101-20241231-HI-0001"],
    "shenzhen": [
        "SZA-2017-1-50000",
        "SZ-CI-1001-1500-20230101-20231231-GD-SZCI2023001",
        "CN-CCER-1-250000-20240101-20241231-HI-0001",
    ],
    "guangdong": ["GDEA-2024-300001-310000", "GD-PHCER-1-8000-20220101-20221231-GD-PH440100001"],
    "hkmo": [
        "9660-115597313-115618057-VCU-261-MER-US-14-1060-01012019-31122019-0",
        "GS1-1-KE-GS7495-16-2025-30645-608-30350",
        "VU-ITMO-11-356-2022-0-27-35",
        "CN-CCER-1-250000-20240101-20241231-HI-0001",
        "SZ-CI-1001-1500-20230101-20231231-GD-SZCI2023001",
        "GD-PHCER-1-8000-20220101-20221231-GD-PH440100001",
    ],
}


def test_registry_ids() -> None:
    assert serials.REGISTRY_IDS == (
        "shenzhen",
        "national",
        "guangdong",
        "hkmo",
        "verra",
        "gold-standard",
        "bri",
    )
    assert set(EXAMPLES) == set(serials.REGISTRY_IDS)


@pytest.mark.parametrize(
    ("registry", "serial"), [(r, s) for r, examples in EXAMPLES.items() for s in examples]
)
def test_documented_examples_round_trip(registry: str, serial: str) -> None:
    assert serials.format_serial(registry, serials.parse_serial(registry, serial)) == serial


def test_shenzhen_reads_ccer_as_the_national_registry_does() -> None:
    serial = "CN-CCER-1-250000-20240101-20241231-HI-0001"
    block = serials.parse_serial("shenzhen", serial)

    assert block == serials.parse_serial("national", serial)
    assert block.program is Program.CCER
    assert block.region == "CN-HI"


@pytest.mark.parametrize(
    ("registry", "serial", "program", "quantity", "vintage"),
    [
        (
            "shenzhen",
            "SZA-2017-1-50000",
            Program.SZA,
            50000,
            (date(2017, 1, 1), date(2017, 12, 31)),
        ),
        (
            "national",
            "CEA-2023-1000001-1005000",
            Program.CEA,
            5000,
            (date(2023, 1, 1), date(2023, 12, 31)),
        ),
        (
            "guangdong",
            "GD-PHCER-1-8000-20220101-20221231-GD-PH440100001",
            Program.GD_PHCER,
            8000,
            (date(2022, 1, 1), date(2022, 12, 31)),
        ),
        (
            "bri",
            "VU-ITMO-11-356-2022-0-27-35",
            Program.BRI_ITMO,
            9,
            (date(2022, 1, 1), date(2022, 12, 31)),
        ),
        (
            "verra",
            "9660-115597313-115618057-VCU-261-MER-US-14-1060-01012019-31122019-0",
            Program.VCS,
            20745,
            (date(2019, 1, 1), date(2019, 12, 31)),
        ),
    ],
)
def test_parsed_block_fields(
    registry: str,
    serial: str,
    program: Program,
    quantity: int,
    vintage: tuple[date, date],
) -> None:
    block = serials.parse_serial(registry, serial)

    assert (block.program, block.quantity, (block.vintage_start, block.vintage_end)) == (
        program,
        quantity,
        vintage,
    )


def test_block_to_json() -> None:
    block = serials.parse_serial("gold-standard", "GS1-1-KE-GS7495-16-2025-30645-608-30350")

    view = serials.block_to_json(block)

    assert {
        k: view[k]
        for k in (
            "program",
            "serial_series",
            "serial_start",
            "serial_end",
            "quantity",
            "project_id",
            "vintage_start",
            "vintage_end",
            "country",
        )
    } == {
        "program": "GS",
        "serial_series": "30645",
        "serial_start": 608,
        "serial_end": 30350,
        "quantity": 29743,
        "project_id": "GS7495",
        "vintage_start": "2025-01-01",
        "vintage_end": "2025-12-31",
        "country": "KE",
    }
    assert view["native_attributes"] == {
        "standard_code": "GS1",
        "unit_code": "1",
        "type_code": "16",
    }
    assert json.loads(json.dumps(view)) == view


def test_block_to_json_authorization() -> None:
    import dataclasses

    block = dataclasses.replace(
        serials.parse_serial("bri", "VU-ITMO-11-356-2022-0-27-35"),
        authorization=Authorization("LoA-7", "VU", frozenset({"ndc", "corsia"}), date(2023, 5, 1)),
        corresponding_adjustment=CorrespondingAdjustment.APPLIED,
    )

    view = serials.block_to_json(block)

    assert view["authorization"] == {
        "letter_id": "LoA-7",
        "host_country": "VU",
        "authorized_uses": ["corsia", "ndc"],
        "issued_on": "2023-05-01",
    }
    assert view["corresponding_adjustment"] == "applied"


def _run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="carbonlink")
    cli_serial.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code: int = args.handler(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_parse_json() -> None:
    serial = "19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"

    code, out, err = _run(["serial", "parse", "--registry", "verra", serial, "--json"])

    assert (code, err) == (0, "")
    view = json.loads(out)
    assert view == serials.block_to_json(serials.parse_serial("verra", serial))
    assert (view["quantity"], view["vintage_start"], view["country"]) == (425, "2020-01-01", "ET")


def test_cli_parse_text() -> None:
    code, out, _ = _run(["serial", "parse", "--registry", "shenzhen", "SZA-2017-1-50000"])

    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if len(line.split(None, 1)) == 2)
    assert (lines["program"], lines["quantity"], lines["vintage_end"]) == (
        "SZA",
        "50000",
        "2017-12-31",
    )


def test_cli_malformed_serial_exits_non_zero_with_reason() -> None:
    serial = "19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-32012020-31122020-1"

    code, out, err = _run(["serial", "parse", "--registry", "verra", serial, "--json"])

    assert code == cli_serial.EXIT_INVALID
    assert out == ""
    assert "segment 11 (vintage_start) '32012020' is not a DDMMYYYY date" in err


def test_cli_unknown_registry_exits_non_zero_with_reason() -> None:
    code, out, err = _run(["serial", "parse", "--registry", "toucan", "X-1"])

    assert code == cli_serial.EXIT_INVALID
    assert out == ""
    assert "unknown registry 'toucan'" in err
