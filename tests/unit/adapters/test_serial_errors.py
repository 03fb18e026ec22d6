"""Malformed serials raise SerialFormatError naming the bad segment; unspellable blocks
raise SerialEncodeError naming the attribute."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from adapters import serials
from adapters.serial_errors import (
    RegistryFormatError,
    SerialEncodeError,
    SerialFormatError,
    UnknownRegistryError,
)
from registry_bridge.errors import InvalidRequest
from registry_bridge.model import BlockId, Program, UnitBlock

VCU = "19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
GS = "GS1-1-KE-GS7495-16-2025-30645-608-30350"
ITMO = "VU-ITMO-11-356-2022-0-27-35"
CCER = "CN-CCER-1-250000-20240101-20241231-HI-0001"


def _with(serial: str, index: int, value: str) -> str:
    parts = serial.split("-")
    parts[index - 1] = value
    return "-".join(parts)


MALFORMED = [
    # (registry, serial, segment index, segment name, words the reason must contain)
    ("verra", _with(VCU, 11, "32012019"), 11, "vintage_start", "'32012019' is not a DDMMYYYY"),
    ("verra", _with(VCU, 12, "2020-12-31"), 14, "unexpected", "'31' is past the last segment"),
    ("verra", _with(VCU, 12, "31122019"), 12, "vintage_end", "before the vintage start"),
    ("verra", _with(VCU, 3, "941467006"), 3, "block_end", "below the block start 941467007"),
    ("verra", _with(VCU, 2, "0941467007"), 2, "block_start", "leading zeros"),
    ("verra", _with(VCU, 4, "GS"), 4, "program", "'GS' is not one of VCS"),
    ("verra", _with(VCU, 5, "VCC"), 5, "unit_type", "is not one of VCU"),
    ("verra", _with(VCU, 7, "XER"), 7, "registry_code", "is not one of VER, MER"),
    ("verra", _with(VCU, 8, "et"), 8, "country", "ISO 3166-1 alpha-2"),
    ("verra", _with(VCU, 10, ""), 10, "project_id", "is empty"),
    ("verra", _with(VCU, 13, "2"), 13, "additional_certification", "is not one of 0, 1"),
    ("verra", "19385-941467007", 3, "block_end", "is missing"),
    ("verra", "", 1, "issuance_batch", "the serial is blank"),
    ("verra", _with(VCU, 1, ""), 1, "issuance_batch", "'' is empty"),
    ("gold-standard", _with(GS, 1, "VCS1"), 1, "standard_code", "GS followed by digits"),
    ("gold-standard", _with(GS, 4, "7495"), 4, "project_id", "GS project id"),
    ("gold-standard", _with(GS, 6, "25"), 6, "vintage", "four-digit year"),
    ("gold-standard", _with(GS, 7, "30a45"), 7, "issuance_batch", "decimal number"),
    ("gold-standard", _with(GS, 9, "607"), 9, "block_end", "below the block start 608"),
    ("gold-standard", GS + "-1", 10, "unexpected", "'1' is past the last segment (block_end)"),
    ("bri", _with(ITMO, 2, "CER"), 2, "unit_type", "is not one of ITMO"),
    ("bri", _with(ITMO, 3, "16"), 3, "sectoral_scope", "CDM sectoral scope 1-15"),
    ("bri", _with(ITMO, 3, "0"), 3, "sectoral_scope", "CDM sectoral scope 1-15"),
    ("bri", _with(ITMO, 5, "1850"), 5, "vintage", "from 1900"),
    ("national", _with(CCER, 7, "XX"), 7, "region", "ISO 3166-2:CN province"),
    ("national", _with(CCER, 5, "20240230"), 5, "vintage_start", "is not a YYYYMMDD date"),
    ("national", _with(CCER, 8, "p-1"), 9, "unexpected", "past the last segment"),
    ("national", _with(CCER, 8, "p1"), 8, "project_id", "upper-case letters or digits"),
    ("national", "CEA-2023-5-4", 4, "block_end", "below the block start 5"),
    ("national", "SZA-2017-1-5", 1, "program_code", "'SZA' starts no serial"),
    ("shenzhen", "SZA-17-1-5", 2, "vintage", "four-digit year"),
    ("shenzhen", "SZ-XX-1-2-20230101-20231231-GD-P1", 2, "unit_type", "is not one of CI"),
    ("shenzhen", "GD-PHCER-1-2-20230101-20231231-GD-P1", 1, "program_code", "starts no serial"),
    ("guangdong", "GDEA-2024-1", 4, "block_end", "is missing"),
    ("guangdong", "GD-PHCER-1-2-20230101-20231231-CN-P1", 7, "region", "province"),
    ("hkmo", "SZA-2017-1-5", 1, "program_code", "no program the venues hold"),
    ("hkmo", _with(VCU, 11, "32012019"), 11, "vintage_start", "(as a verra serial)"),
    ("hkmo", _with(ITMO, 8, "26"), 8, "block_end", "below the block start 27"),
]


@pytest.mark.parametrize(("registry", "serial", "index", "name", "reason"), MALFORMED)
def test_malformed_serial_names_the_bad_segment(
    registry: str, serial: str, index: int, name: str, reason: str
) -> None:
    with pytest.raises(SerialFormatError) as caught:
        serials.parse_serial(registry, serial)

    error = caught.value
    assert (error.registry, error.serial, error.segment_index, error.segment_name) == (
        registry,
        serial,
        index,
        name,
    )
    assert reason in error.reason
    assert f"segment {index} ({name})" in str(error)
    assert error.violations[0].field == f"serial.segment[{index}].{name}"


def test_message_quotes_the_segment_as_in_the_issue() -> None:
    with pytest.raises(SerialFormatError) as caught:
        serials.parse_serial("verra", _with(VCU, 11, "32012019"))

    assert "segment 11 (vintage_start) '32012019' is not a DDMMYYYY date" in str(caught.value)


def test_format_errors_are_invalid_requests_and_value_errors() -> None:
    with pytest.raises(SerialFormatError) as caught:
        serials.parse_serial("gold-standard", "GS1")

    assert isinstance(caught.value, RegistryFormatError)
    assert isinstance(caught.value, InvalidRequest)
    assert isinstance(caught.value, ValueError)


def test_hkmo_chains_the_origin_codec_error() -> None:
    with pytest.raises(SerialFormatError) as caught:
        serials.parse_serial("hkmo", _with(GS, 6, "x"))

    assert caught.value.registry == "hkmo"
    cause = caught.value.__cause__
    assert isinstance(cause, SerialFormatError)
    assert cause.registry == "gold-standard"


def test_unknown_registry() -> None:
    with pytest.raises(UnknownRegistryError) as caught:
        serials.parse_serial("toucan", GS)

    assert caught.value.registry == "toucan"
    assert "gold-standard" in str(caught.value)
    with pytest.raises(UnknownRegistryError):
        serials.format_serial("toucan", serials.parse_serial("gold-standard", GS))


def _encode_error(registry: str, block: UnitBlock) -> SerialEncodeError:
    with pytest.raises(SerialEncodeError) as caught:
        serials.format_serial(registry, block)
    return caught.value


def test_gold_standard_refuses_a_vintage_that_is_not_a_calendar_year() -> None:
    block = serials.parse_serial("gold-standard", GS)
    monitoring = dataclasses.replace(block, vintage_start=date(2024, 3, 2))

    assert _encode_error("gold-standard", monitoring).attribute == "vintage_start"


def test_gold_standard_refuses_an_issuance_id_other_than_its_batch() -> None:
    block = dataclasses.replace(serials.parse_serial("gold-standard", GS), issuance_id="1")

    assert _encode_error("gold-standard", block).attribute == "issuance_id"


def test_verra_refuses_a_block_without_its_native_segments() -> None:
    block = dataclasses.replace(serials.parse_serial("verra", VCU), native_attributes=())

    assert _encode_error("verra", block).attribute == "native:vvb_id"


def test_verra_refuses_a_project_id_the_serial_cannot_carry() -> None:
    block = dataclasses.replace(serials.parse_serial("verra", VCU), project_id="VCS-1340")

    error = _encode_error("verra", block)
    assert error.attribute == "unexpected"
    assert isinstance(error.__cause__, SerialFormatError)


def test_verra_refuses_a_block_of_another_program() -> None:
    block = serials.parse_serial("verra", VCU)
    other = dataclasses.replace(block, id=BlockId(Program.GS, "", 1, 2))

    assert _encode_error("verra", other).attribute == "program"


def test_registry_refuses_programs_it_does_not_hold() -> None:
    sza = serials.parse_serial("shenzhen", "SZA-2017-1-5")

    assert _encode_error("guangdong", sza).attribute == "program"
    assert _encode_error("hkmo", sza).attribute == "program"


def test_cn_offset_refuses_a_region_outside_china() -> None:
    block = dataclasses.replace(serials.parse_serial("national", CCER), region="US-CA")

    assert _encode_error("national", block).attribute == "region"


def test_attributes_outside_the_serial_are_not_written() -> None:
    block = serials.parse_serial("verra", VCU)
    enriched = dataclasses.replace(
        block, methodology="VM0015", labels=frozenset({"CORSIA"}), region="Oromia"
    )

    assert serials.format_serial("verra", enriched) == VCU


@pytest.mark.parametrize(("registry", "serial"), [("verra", VCU), ("gold-standard", GS)])
def test_a_serial_past_the_largest_the_ledger_holds_is_invalid(registry: str, serial: str) -> None:
    # As the issue's reviewer sent it: well formed, but no 64-bit integer holds its end.
    huge = serial.replace("941467431", "99999999999999999999999").replace("30350", "9" * 23)
    with pytest.raises(RegistryFormatError, match="above the largest serial") as caught:
        serials.parse_serial(registry, huge)
    assert isinstance(caught.value, InvalidRequest)
    assert [v.field for v in caught.value.violations] == ["serial"]


def test_a_block_past_the_largest_serial_cannot_exist() -> None:
    BlockId(Program.VCS, "", 1, 2**63 - 1)
    with pytest.raises(ValueError, match="above the largest serial"):
        BlockId(Program.VCS, "", 1, 2**63)


def test_a_block_of_every_serial_cannot_exist() -> None:
    # Its quantity, 2**63, is past every 64-bit count that would carry it.
    assert BlockId(Program.VCS, "", 0, 2**63 - 2).quantity == 2**63 - 1
    with pytest.raises(ValueError, match="more units than one block holds"):
        BlockId(Program.VCS, "", 0, 2**63 - 1)
    every = VCU.replace("941467007", "0").replace("941467431", str(2**63 - 1))
    with pytest.raises(RegistryFormatError, match="more units than one block holds") as caught:
        serials.parse_serial("verra", every)
    assert [v.field for v in caught.value.violations] == ["serial"]
