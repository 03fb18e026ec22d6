"""Reading Gold Standard's public credit exports (``issuances.csv``, ``retirements.csv``).

Both files list one credit block per row under a GS serial; the retirement file adds the
retirement date, note, use case and using entity.  ``Credit Status`` gives the status:
``Issued`` (``ACTIVE``) in the issuance file, ``Retired`` or ``Canceled`` in the
retirement file.  A retired row must have a retirement date; the export gives none for
cancelled rows.

The block's vintage is the serial's calendar year (see ``adapters.gold_standard.serial``);
the row's monitoring period is kept on the record.

A file is read all or nothing: the first bad row raises ``ExportRowError`` with its
physical line number (retirement notes span lines, so it is the line where the record
starts) and nothing is returned.  A row is bad when a cell does not parse, when the
serial's block size differs from ``Quantity``, or when the serial's project or vintage
differs from the row's ``GSID`` or ``Vintage``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from adapters._csv_export import Row, read_rows
from adapters.gold_standard.serial import parse_serial
from registry_bridge.model import HoldingStatus, UnitBlock

ISSUANCE_COLUMNS: tuple[str, ...] = (
    "Vintage",
    "Credit Status",
    "Quantity",
    "GSID",
    "Project Name",
    "Project Developer",
    "Country",
    "Project Type",
    "Methodology",
    "Programme of Activities",
    "POA GSID",
    "Product Type",
    "Issuance Date",
    "Monitoring Period Start",
    "Monitoring Period End",
    "Serial Number",
    "Label",
    "Article Six Authorization",
)
"""Columns of the issuance export, all required."""

RETIREMENT_COLUMNS: tuple[str, ...] = (
    *ISSUANCE_COLUMNS,
    "Retirement Date",
    "Note",
    "Aeroplane Operator Name",
    "Use Case",
    "Using Entity",
)
"""Columns of the retirement export, all required (in another order than listed)."""

_ISSUED = {"Issued": HoldingStatus.ACTIVE}
_RETIRED = {
    "Retired": HoldingStatus.RETIRED,
    "Canceled": HoldingStatus.CANCELLED,
    "Cancelled": HoldingStatus.CANCELLED,
}
# The export writes the POA id as a float ("11191.0"): a pandas artefact, not a fraction.
_GSID = re.compile(r"([0-9]+)(?:\.0)?")


@dataclass(frozen=True)
class GoldStandardCredit:
    """One row of an issuance or retirement export."""

    line: int
    """Physical line of the file where the row starts."""
    serial: str
    block: UnitBlock
    """The serial's block, with project type, methodology and labels from the row."""
    quantity: int
    status: HoldingStatus
    """``ACTIVE`` (issued), ``RETIRED`` or ``CANCELLED``."""
    gsid: str
    project_name: str
    project_developer: str
    country_name: str
    programme_of_activities: str
    """``VPA`` or ``Standalone``."""
    poa_gsid: str
    """GSID of the programme of activities, ``""`` for a standalone project."""
    product_type: str
    issuance_date: date
    monitoring_period_start: date | None
    monitoring_period_end: date | None
    labels: tuple[str, ...]
    article_six_authorization: str
    retirement_date: date | None = None
    note: str = ""
    aeroplane_operator: str = ""
    use_case: str = ""
    using_entity: str = ""


def _gsid(row: Row, column: str, *, required: bool) -> str:
    value = row.text(column).strip()
    if not value and not required:
        return ""
    match = _GSID.fullmatch(value)
    if match is None:
        raise row.error(column, f"{value!r} is not a GSID")
    return match.group(1)


def _credit(row: Row, statuses: dict[str, HoldingStatus], retirement: bool) -> GoldStandardCredit:
    serial = row.required("Serial Number").strip()
    block = row.block("Serial Number", parse_serial)
    quantity = row.quantity("Quantity")
    if quantity != block.quantity:
        raise row.error(
            "Quantity",
            f"{quantity} differs from the {block.quantity} units of serial block "
            f"{block.id.serial_start}-{block.id.serial_end}",
        )
    status_text = row.required("Credit Status").strip()
    status = statuses.get(status_text)
    if status is None:
        raise row.error(
            "Credit Status", f"{status_text!r} is not one of {', '.join(statuses)} in this file"
        )
    gsid = _gsid(row, "GSID", required=True)
    if f"GS{gsid}" != block.project_id:
        raise row.error("GSID", f"{gsid!r} differs from the serial's project {block.project_id!r}")
    vintage = row.required("Vintage").strip()
    if vintage != str(block.vintage_start.year):
        raise row.error(
            "Vintage", f"{vintage!r} differs from the serial's vintage {block.vintage_start.year}"
        )
    retirement_date = row.optional_date("Retirement Date") if retirement else None
    if status is HoldingStatus.RETIRED and retirement_date is None:
        # Cancellations carry no date in the export; retirements always do.
        raise row.error("Retirement Date", "is empty for a retired block")
    labels = tuple(part.strip() for part in row.text("Label").split(",") if part.strip())
    return GoldStandardCredit(
        line=row.line,
        serial=serial,
        block=dataclasses.replace(
            block,
            project_type=row.text("Project Type"),
            methodology=row.text("Methodology"),
            labels=frozenset(labels),
        ),
        quantity=quantity,
        status=status,
        gsid=gsid,
        project_name=row.text("Project Name"),
        project_developer=row.text("Project Developer"),
        country_name=row.text("Country"),
        programme_of_activities=row.text("Programme of Activities"),
        poa_gsid=_gsid(row, "POA GSID", required=False),
        product_type=row.text("Product Type"),
        issuance_date=row.iso_date("Issuance Date"),
        monitoring_period_start=row.optional_date("Monitoring Period Start"),
        monitoring_period_end=row.optional_date("Monitoring Period End"),
        labels=labels,
        article_six_authorization=row.text("Article Six Authorization"),
        retirement_date=retirement_date,
        note=row.text("Note") if retirement else "",
        aeroplane_operator=row.text("Aeroplane Operator Name") if retirement else "",
        use_case=row.text("Use Case") if retirement else "",
        using_entity=row.text("Using Entity") if retirement else "",
    )


def parse_issuances(
    lines: Iterable[str], source: str = "<stream>"
) -> tuple[GoldStandardCredit, ...]:
    """Read an issuance export from text.

    Args:
        lines: The CSV text, e.g. a file opened with ``newline=""``.
        source: Name used in errors.

    Returns:
        Every row, in file order.

    Raises:
        ExportFormatError: The header or CSV structure is bad.
        ExportRowError: A row is bad; nothing is returned.
    """
    rows = read_rows(lines, source, ISSUANCE_COLUMNS)
    return tuple(_credit(row, _ISSUED, retirement=False) for row in rows)


def parse_retirements(
    lines: Iterable[str], source: str = "<stream>"
) -> tuple[GoldStandardCredit, ...]:
    """Read a retirement export from text.

    Args:
        lines: The CSV text, e.g. a file opened with ``newline=""``.
        source: Name used in errors.

    Returns:
        Every row, in file order.

    Raises:
        ExportFormatError: The header or CSV structure is bad.
        ExportRowError: A row is bad; nothing is returned.
    """
    rows = read_rows(lines, source, RETIREMENT_COLUMNS)
    return tuple(_credit(row, _RETIRED, retirement=True) for row in rows)


def read_issuances(path: str | os.PathLike[str]) -> tuple[GoldStandardCredit, ...]:
    """Read an issuance export file (UTF-8, an optional byte-order mark is skipped).

    Raises:
        ExportFormatError: The header or CSV structure is bad.
        ExportRowError: A row is bad; nothing is returned.
        OSError: The file cannot be opened.
    """
    with open(path, newline="", encoding="utf-8-sig") as stream:
        return parse_issuances(stream, os.fspath(path))


def read_retirements(path: str | os.PathLike[str]) -> tuple[GoldStandardCredit, ...]:
    """Read a retirement export file (UTF-8, an optional byte-order mark is skipped).

    Raises:
        ExportFormatError: The header or CSV structure is bad.
        ExportRowError: A row is bad; nothing is returned.
        OSError: The file cannot be opened.
    """
    with open(path, newline="", encoding="utf-8-sig") as stream:
        return parse_retirements(stream, os.fspath(path))
