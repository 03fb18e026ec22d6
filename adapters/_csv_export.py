"""Shared reading of registry CSV exports: physical line numbers, typed cell parsing.

Private to ``adapters``.  Registry exports quote free-text fields that may contain line
breaks (Gold Standard retirement notes), so a record's line number is the physical line
where the record starts, taken from ``csv.reader.line_num`` before the record is read.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from adapters.serial_errors import ExportFormatError, ExportRowError, SerialFormatError
from registry_bridge.model import UnitBlock

_QUANTITY = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+")


@dataclass(frozen=True)
class Row:
    """One data record of an export, by column name, with its starting line."""

    source: str
    line: int
    cells: Mapping[str, str]

    def error(self, column: str, reason: str) -> ExportRowError:
        """The error for this row's ``column``."""
        return ExportRowError(source=self.source, line=self.line, column=column, reason=reason)

    def text(self, column: str) -> str:
        """The cell as written."""
        return self.cells[column]

    def required(self, column: str) -> str:
        """The cell, which may not be blank."""
        value = self.cells[column]
        if not value.strip():
            raise self.error(column, "is empty")
        return value

    def quantity(self, column: str) -> int:
        """A positive whole number of tonnes; thousands separators (``1,454,054``) allowed."""
        value = self.required(column).strip()
        if _QUANTITY.fullmatch(value) is None:
            raise self.error(column, f"{value!r} is not a whole number of units")
        number = int(value.replace(",", ""))
        if number <= 0:
            raise self.error(column, f"{value!r} is not a positive quantity")
        return number

    def iso_date(self, column: str) -> date:
        """An ISO date, or the date of an ISO timestamp (``2026-04-13T12:35:58.842275``)."""
        value = self.required(column).strip()
        try:
            return datetime.fromisoformat(value).date()
        except ValueError as exc:
            raise self.error(column, f"{value!r} is not an ISO date ({exc})") from exc

    def optional_date(self, column: str) -> date | None:
        """An ISO date, or ``None`` for a blank cell."""
        return self.iso_date(column) if self.cells[column].strip() else None

    def block(self, column: str, parse: Callable[[str], UnitBlock]) -> UnitBlock:
        """The serial block of ``column``, parsed by the registry's codec."""
        value = self.required(column).strip()
        try:
            return parse(value)
        except SerialFormatError as exc:
            raise self.error(column, str(exc)) from exc


def read_rows(lines: Iterable[str], source: str, required_columns: Sequence[str]) -> Iterator[Row]:
    """Yield the data records of a CSV export.

    Args:
        lines: The file's text, opened with ``newline=""``.
        source: File name for errors.
        required_columns: Columns the header must have.

    Yields:
        Each non-blank record after the header.

    Raises:
        ExportFormatError: The header lacks a column, a record has the wrong number of
            fields, or the text is not valid CSV or UTF-8.
    """
    reader = csv.reader(lines, strict=True)
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            raise ExportFormatError(source=source, line=1, column="", reason="the file is empty")
        missing = [c for c in required_columns if c not in header]
        if missing:
            raise ExportFormatError(
                source=source,
                line=1,
                column=missing[0],
                reason=f"the header lacks the column(s) {', '.join(map(repr, missing))}",
            )
        while True:
            line = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                return
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise ExportRowError(
                    source=source,
                    line=line,
                    column="",
                    reason=f"the record has {len(record)} fields, the header {len(header)}",
                )
            yield Row(source, line, dict(zip(header, record, strict=True)))
    except csv.Error as exc:
        raise ExportFormatError(source=source, line=line, column="", reason=str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise ExportFormatError(
            source=source, line=line, column="", reason=f"not UTF-8 text ({exc})"
        ) from exc
