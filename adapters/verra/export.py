"""Reading Verra's public VCU export (``transactions.csv``) into typed records.

Each row is one VCU block: issued and still active, or retired/cancelled.  Verra's
export puts retirements and cancellations in one column pair
(``Retirement/Cancellation Date``, ``Retirement Reason``) without telling them apart, so
a row with a date there is recorded as ``RETIRED`` (the reason text is kept), and a row
without one as ``ACTIVE``.

A file is read all or nothing: the first bad row raises ``ExportRowError`` with its
physical line number and nothing is returned.  A row is bad when a cell does not parse,
when the serial's block size differs from ``Quantity Issued``, or when the serial's
project id or vintage differs from the row's ``ID`` or ``Vintage Start``/``Vintage End``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from adapters._csv_export import Row, read_rows
from adapters.verra.serial import parse_serial
from registry_bridge.model import HoldingStatus, UnitBlock

COLUMNS: tuple[str, ...] = (
    "Issuance Date",
    "Sustainable Development Goals",
    "Vintage Start",
    "Vintage End",
    "ID",
    "Name",
    "Country/Area",
    "Project Type",
    "Methodology",
    "Total Vintage Quantity",
    "Quantity Issued",
    "Serial Number",
    "Additional Certifications",
    "Retirement/Cancellation Date",
    "Retirement Beneficiary",
    "Retirement Reason",
    "Retirement Details",
)
"""The columns of Verra's VCU export, all required."""


@dataclass(frozen=True)
class VerraTransaction:
    """One row of the VCU export."""

    line: int
    """Physical line of the file where the row starts."""
    serial: str
    block: UnitBlock
    """The serial's block, with project type, methodology and the additional
    certifications (as labels) filled in from the row."""
    quantity: int
    status: HoldingStatus
    """``ACTIVE`` or ``RETIRED`` (see the module docstring for cancellations)."""
    issuance_date: date
    project_name: str
    country_name: str
    total_vintage_quantity: int
    additional_certifications: tuple[str, ...]
    sustainable_development_goals: tuple[str, ...]
    retirement_date: date | None
    retirement_beneficiary: str
    retirement_reason: str
    retirement_details: str


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split(";") if part.strip())


def _transaction(row: Row) -> VerraTransaction:
    serial = row.required("Serial Number").strip()
    block = row.block("Serial Number", parse_serial)
    quantity = row.quantity("Quantity Issued")
    if quantity != block.quantity:
        raise row.error(
            "Quantity Issued",
            f"{quantity} differs from the {block.quantity} units of serial block "
            f"{block.id.serial_start}-{block.id.serial_end}",
        )
    project_id = row.required("ID").strip()
    if project_id != block.project_id:
        raise row.error(
            "ID", f"{project_id!r} differs from the serial's project {block.project_id!r}"
        )
    for column, expected in (
        ("Vintage Start", block.vintage_start),
        ("Vintage End", block.vintage_end),
    ):
        if row.iso_date(column) != expected:
            raise row.error(
                column, f"{row.text(column)!r} differs from the serial's {expected.isoformat()}"
            )
    certifications = _split(row.text("Additional Certifications"))
    retirement_date = row.optional_date("Retirement/Cancellation Date")
    return VerraTransaction(
        line=row.line,
        serial=serial,
        block=dataclasses.replace(
            block,
            project_type=row.text("Project Type"),
            methodology=row.text("Methodology"),
            labels=frozenset(certifications),
        ),
        quantity=quantity,
        status=HoldingStatus.ACTIVE if retirement_date is None else HoldingStatus.RETIRED,
        issuance_date=row.iso_date("Issuance Date"),
        project_name=row.text("Name"),
        country_name=row.text("Country/Area"),
        total_vintage_quantity=row.quantity("Total Vintage Quantity"),
        additional_certifications=certifications,
        sustainable_development_goals=_split(row.text("Sustainable Development Goals")),
        retirement_date=retirement_date,
        retirement_beneficiary=row.text("Retirement Beneficiary"),
        retirement_reason=row.text("Retirement Reason"),
        retirement_details=row.text("Retirement Details"),
    )


def parse_transactions(
    lines: Iterable[str], source: str = "<stream>"
) -> tuple[VerraTransaction, ...]:
    """Read a VCU export from text.

    Args:
        lines: The CSV text, e.g. a file opened with ``newline=""``.
        source: Name used in errors.

    Returns:
        Every row, in file order.

    Raises:
        ExportFormatError: The header or CSV structure is bad.
        ExportRowError: A row is bad; nothing is returned.
    """
    return tuple(_transaction(row) for row in read_rows(lines, source, COLUMNS))


def read_transactions(path: str | os.PathLike[str]) -> tuple[VerraTransaction, ...]:
    """Read a VCU export file (UTF-8, an optional byte-order mark is skipped).

    Args:
        path: The CSV file.

    Returns:
        Every row, in file order.

    Raises:
        ExportFormatError: The header or CSV structure is bad.
        ExportRowError: A row is bad; nothing is returned.
        OSError: The file cannot be opened.
    """
    with open(path, newline="", encoding="utf-8-sig") as stream:
        return parse_transactions(stream, os.fspath(path))
