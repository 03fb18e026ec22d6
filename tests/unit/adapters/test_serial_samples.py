"""Every serial in the real registry exports parses, has the row's quantity and round-trips."""

from __future__ import annotations

import csv
import filecmp
from pathlib import Path

import pytest

from adapters import serials
from registry_bridge.model import Program

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "registries"
SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "registry-samples"

SAMPLES: tuple[tuple[str, str, str, Program], ...] = (
    ("verra", "transactions.csv", "Quantity Issued", Program.VCS),
    ("gold-standard", "issuances.csv", "Quantity", Program.GS),
    ("gold-standard", "retirements.csv", "Quantity", Program.GS),
)


def _rows(registry: str, name: str) -> list[dict[str, str]]:
    with open(ASSETS / registry / name, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _cases() -> list[object]:
    cases: list[object] = []
    for registry, name, quantity_column, program in SAMPLES:
        for index, row in enumerate(_rows(registry, name)):
            quantity = int(row[quantity_column].replace(",", ""))
            cases.append(
                pytest.param(
                    registry, row["Serial Number"], quantity, program, id=f"{name}[{index}]"
                )
            )
    return cases


def test_every_sample_file_has_rows() -> None:
    assert [len(_rows(r, n)) for r, n, _, _ in SAMPLES] == [140, 70, 70]


@pytest.mark.parametrize(("registry", "serial", "quantity", "program"), _cases())
def test_sample_serial_parses_with_row_quantity_and_round_trips(
    registry: str, serial: str, quantity: int, program: Program
) -> None:
    block = serials.parse_serial(registry, serial)

    assert block.program is program
    assert block.quantity == quantity
    assert serials.format_serial(registry, block) == serial
    assert serials.parse_serial(registry, serials.format_serial(registry, block)) == block


@pytest.mark.parametrize(("registry", "serial", "quantity", "program"), _cases())
def test_hkmo_reads_sample_serials_as_their_origin_does(
    registry: str, serial: str, quantity: int, program: Program
) -> None:
    block = serials.parse_serial("hkmo", serial)

    assert block == serials.parse_serial(registry, serial)
    assert block.quantity == quantity
    assert serials.format_serial("hkmo", block) == serial


def test_gold_standard_series_separates_batches_that_restart_at_one() -> None:
    blocks = [
        serials.parse_serial("gold-standard", r["Serial Number"])
        for r in _rows("gold-standard", "issuances.csv")
    ]
    starting_at_one = [b for b in blocks if b.id.serial_start == 1]

    assert len(starting_at_one) > 1
    assert len({b.id.serial_series for b in starting_at_one}) == len(starting_at_one)
    assert not any(
        a.id.overlaps(b.id) for i, a in enumerate(starting_at_one) for b in starting_at_one[i + 1 :]
    )


@pytest.mark.parametrize(
    "relative",
    [
        "verra/transactions.csv",
        "verra/projects.csv",
        "gold-standard/issuances.csv",
        "gold-standard/retirements.csv",
        "gold-standard/projects.csv",
    ],
)
def test_asset_copy_matches_shared_sample(relative: str) -> None:
    original = SHARED / relative
    if not original.is_file():
        pytest.skip(f"shared samples not beside the repository ({original})")
    assert filecmp.cmp(ASSETS / relative, original, shallow=False)
