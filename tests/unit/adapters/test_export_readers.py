"""Verra and Gold Standard export readers: typed rows, line numbers, all-or-nothing."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from adapters.gold_standard import export as gs_export
from adapters.serial_errors import ExportFormatError, ExportRowError
from adapters.verra import export as verra_export
from registry_bridge.model import HoldingStatus, Program

Asset = Callable[[str, str], Path]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_verra_transactions(registry_asset: Asset) -> None:
    rows = verra_export.read_transactions(registry_asset("verra", "transactions.csv"))

    assert len(rows) == 140
    assert [r.line for r in rows] == list(range(2, 142))
    assert all(r.block.program is Program.VCS and r.quantity == r.block.quantity for r in rows)
    first = rows[0]
    assert first.serial.startswith("19385-941467007-941467431-VCS-VCU-1507")
    assert (first.quantity, first.total_vintage_quantity) == (425, 1454054)
    assert (first.status, first.retirement_date) == (HoldingStatus.RETIRED, date(2026, 4, 10))
    assert first.block.methodology == "VM0015"
    assert first.block.labels == frozenset({"CCB-No Distinction"})
    third = rows[2]
    assert (third.quantity, third.retirement_beneficiary) == (
        28571,
        "Lindblad Expeditions Family of Companies",
    )
    statuses = [r.status for r in rows]
    assert (statuses.count(HoldingStatus.ACTIVE), statuses.count(HoldingStatus.RETIRED)) == (
        40,
        100,
    )
    assert all((r.retirement_date is None) == (r.status is HoldingStatus.ACTIVE) for r in rows)


def test_gold_standard_issuances(registry_asset: Asset) -> None:
    rows = gs_export.read_issuances(registry_asset("gold-standard", "issuances.csv"))

    assert len(rows) == 70
    assert all(r.status is HoldingStatus.ACTIVE for r in rows)
    first = rows[0]
    assert (first.line, first.quantity, first.gsid, first.poa_gsid) == (2, 19149, "11236", "11191")
    assert first.block.id.serial_series == "30307"
    assert first.issuance_date == date(2026, 4, 13)
    assert (first.monitoring_period_start, first.monitoring_period_end) == (
        date(2024, 1, 1),
        date(2024, 12, 8),
    )
    assert first.retirement_date is None


def test_gold_standard_retirements_count_lines_of_multi_line_notes(registry_asset: Asset) -> None:
    path = registry_asset("gold-standard", "retirements.csv")

    rows = gs_export.read_retirements(path)

    assert len(rows) == 70
    # The first notes end in a line break inside quotes: each of those records spans two
    # physical lines, so the second record starts on line 4.
    assert [r.line for r in rows[:3]] == [2, 4, 6]
    physical = _lines(path)
    assert all(physical[r.line - 1].startswith(f"{r.block.vintage_start.year},") for r in rows)
    assert rows[0].note.startswith("Retirement on behalf of Hilti Corporation")
    assert rows[0].using_entity == "Hilti Corporation"
    cancelled = [r for r in rows if r.status is HoldingStatus.CANCELLED]
    assert len(cancelled) == 3
    assert all(r.retirement_date is None for r in cancelled)
    retired = [r for r in rows if r.status is HoldingStatus.RETIRED]
    assert len(retired) == 67
    assert all(r.retirement_date is not None for r in retired)


def _replace_in_line(lines: list[str], line: int, old: str, new: str) -> list[str]:
    assert old in lines[line - 1]
    changed = list(lines)
    changed[line - 1] = changed[line - 1].replace(old, new, 1)
    return changed


def test_verra_quantity_not_matching_the_serial_is_a_bad_row(registry_asset: Asset) -> None:
    lines = _replace_in_line(
        _lines(registry_asset("verra", "transactions.csv")), 4, '"28,571"', '"28,572"'
    )

    with pytest.raises(ExportRowError) as caught:
        verra_export.parse_transactions(lines, "transactions.csv")

    error = caught.value
    assert (error.source, error.line, error.column) == ("transactions.csv", 4, "Quantity Issued")
    assert "28572 differs from the 28571 units" in str(error)
    assert str(error).startswith("transactions.csv:4:")


def test_verra_malformed_serial_is_a_bad_row_naming_the_segment(registry_asset: Asset) -> None:
    lines = _replace_in_line(
        _lines(registry_asset("verra", "transactions.csv")), 140, "-VCU-", "-VCX-"
    )

    with pytest.raises(ExportRowError) as caught:
        verra_export.parse_transactions(lines, "transactions.csv")

    assert (caught.value.line, caught.value.column) == (140, "Serial Number")
    assert "segment 5 (unit_type)" in caught.value.reason


def test_verra_vintage_column_must_match_the_serial(registry_asset: Asset) -> None:
    lines = _replace_in_line(
        _lines(registry_asset("verra", "transactions.csv")),
        2,
        "2020-01-01,2020-12-31",
        "2020-01-02,2020-12-31",
    )

    with pytest.raises(ExportRowError) as caught:
        verra_export.parse_transactions(lines)

    assert (caught.value.line, caught.value.column) == (2, "Vintage Start")


def test_gold_standard_bad_row_after_multi_line_records_has_its_physical_line(
    registry_asset: Asset,
) -> None:
    path = registry_asset("gold-standard", "retirements.csv")
    rows = gs_export.read_retirements(path)
    target = rows[10]
    lines = _replace_in_line(_lines(path), target.line, f",{target.quantity},", ",1,")

    with pytest.raises(ExportRowError) as caught:
        gs_export.parse_retirements(lines, "retirements.csv")

    assert target.line > 11  # earlier notes spanned lines: the record index is not the line
    assert (caught.value.line, caught.value.column) == (target.line, "Quantity")


@pytest.mark.parametrize(
    ("old", "new", "column"),
    [
        (",Issued,", ",Retired,", "Credit Status"),
        (",11236,", ",11237,", "GSID"),
        ("2024,Issued", "2023,Issued", "Vintage"),
        (",19149,", ",19 149,", "Quantity"),
        ("2026-04-13T12:35:58.842275", "13/04/2026", "Issuance Date"),
        (",11191.0,", ",11191.5,", "POA GSID"),
    ],
)
def test_gold_standard_issuance_bad_cells(
    registry_asset: Asset, old: str, new: str, column: str
) -> None:
    lines = _replace_in_line(_lines(registry_asset("gold-standard", "issuances.csv")), 2, old, new)

    with pytest.raises(ExportRowError) as caught:
        gs_export.parse_issuances(lines, "issuances.csv")

    assert (caught.value.line, caught.value.column) == (2, column)


def test_missing_column_is_reported_on_the_header_line() -> None:
    text = "Vintage,Quantity\n2024,5\n"

    with pytest.raises(ExportFormatError) as caught:
        gs_export.parse_issuances(io.StringIO(text), "x.csv")

    assert not isinstance(caught.value, ExportRowError)
    assert (caught.value.line, caught.value.column) == (1, "Credit Status")


def test_record_with_wrong_field_count(registry_asset: Asset) -> None:
    lines = [*_lines(registry_asset("verra", "transactions.csv"))[:3], "2026-04-03,,oops\n"]

    with pytest.raises(ExportRowError) as caught:
        verra_export.parse_transactions(lines)

    assert caught.value.line == 4
    assert "3 fields" in caught.value.reason


def test_reader_returns_nothing_when_a_late_row_is_bad(
    registry_asset: Asset, tmp_path: Path
) -> None:
    lines = _lines(registry_asset("verra", "transactions.csv"))
    bad = tmp_path / "transactions.csv"
    bad.write_text("".join(lines) + lines[1].replace("-VCS-", "-VCX-"), encoding="utf-8")
    result: tuple[verra_export.VerraTransaction, ...] | None = None

    with pytest.raises(ExportRowError) as caught:
        result = verra_export.read_transactions(bad)

    assert result is None
    assert caught.value.line == 142
    assert caught.value.source == str(bad)


def test_byte_order_mark_and_blank_lines_are_tolerated(
    registry_asset: Asset, tmp_path: Path
) -> None:
    lines = _lines(registry_asset("gold-standard", "issuances.csv"))
    path = tmp_path / "issuances.csv"
    path.write_text("\ufeff" + "".join(lines[:3]) + "\n" + "".join(lines[3:5]), encoding="utf-8")

    rows = gs_export.read_issuances(path)

    assert [r.line for r in rows] == [2, 3, 5, 6]
