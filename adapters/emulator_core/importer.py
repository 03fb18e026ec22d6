"""Import of a registry's export file into its emulator's store.

The Verra VCU export and the Gold Standard issuance and retirement exports are read with
the serial helper's export readers (a bad row is refused with its line, before anything is
written); each row is issued into the import account, and a retired or cancelled row is
then retired or cancelled (a retirement row inside an already imported issuance retires
that part of it), all in one transaction: a row the registry refuses (an
overlapping serial, say) is reported with its line number and nothing is imported.
Operation ids derive from the serial, so importing a file again changes nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.emulator_core.store import Rejection, Store
from adapters.gold_standard import export as gold_standard_export
from adapters.verra import export as verra_export
from registry_bridge.model import HoldingStatus, UnitBlock

IMPORT_ACCOUNT = "IMPORTED"
"""The account imported units are held in (exports do not name holding accounts)."""


@dataclass(frozen=True)
class ImportRow:
    """One row of an export, as the emulator applies it."""

    line: int
    serial: str
    block: UnitBlock
    status: HoldingStatus
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImportReport:
    """What an import did."""

    rows: int
    imported: int
    """Rows applied now."""
    already_present: int
    """Rows an earlier import of the same data had applied."""


class ImportRowRejected(Exception):
    """The registry refused one row of an export; nothing was imported.

    Attributes:
        line: The row's physical line in the file.
        code: The registry's rejection code.
    """

    def __init__(self, source: str, line: int, code: str, message: str) -> None:
        super().__init__(f"{source}:{line}: {code}: {message}")
        self.line = line
        self.code = code


def _is_gold_standard_retirements(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as stream:
        header = next(csv.reader(stream), [])
    return "Retirement Date" in header


def read_export(registry_id: str, path: Path) -> Sequence[ImportRow]:
    """Read an export of ``registry_id`` into rows.

    Raises:
        ExportFormatError: The file or a row is bad (the error names the line).
        ValueError: The registry has no export format.
        OSError: The file cannot be read.
    """
    if registry_id == "verra":
        return [
            ImportRow(
                t.line,
                t.serial,
                t.block,
                t.status,
                (("beneficiary", t.retirement_beneficiary), ("reason", t.retirement_reason)),
            )
            for t in verra_export.read_transactions(path)
        ]
    if registry_id == "gold-standard":
        credits = (
            gold_standard_export.read_retirements(path)
            if _is_gold_standard_retirements(path)
            else gold_standard_export.read_issuances(path)
        )
        return [
            ImportRow(
                c.line,
                c.serial,
                c.block,
                c.status,
                (("beneficiary", c.using_entity), ("use", c.use_case), ("note", c.note.strip())),
            )
            for c in credits
        ]
    raise ValueError(f"registry {registry_id} has no export format to import")


def import_rows(store: Store, rows: Sequence[ImportRow], source: str) -> ImportReport:
    """Apply ``rows`` to ``store`` in one transaction.

    Raises:
        ImportRowRejected: The registry refused a row; nothing was imported.
    """
    imported = 0
    with store.atomic():
        for row in rows:
            issue_op = f"import:issue:{row.serial}"
            final_op = f"import:{row.status.value}:{row.serial}"
            terminal = row.status in (HoldingStatus.RETIRED, HoldingStatus.CANCELLED)
            # A retirement export names the retired part of a block an issuance export
            # already brought in: retire that part instead of issuing it again.
            issued_before = store.operation(issue_op) is not None
            part_of_issued = terminal and not issued_before and bool(store.find(row.block.id))
            fresh = store.operation(final_op if part_of_issued else issue_op) is None
            try:
                if not part_of_issued:
                    store.issue(issue_op, IMPORT_ACCOUNT, row.block)
                if row.status is HoldingStatus.RETIRED:
                    store.retire(final_op, IMPORT_ACCOUNT, row.block.id, row.details)
                elif row.status is HoldingStatus.CANCELLED:
                    store.cancel(final_op, IMPORT_ACCOUNT, row.block.id, row.details)
            except Rejection as rejection:
                raise ImportRowRejected(
                    source, row.line, rejection.code, rejection.message
                ) from rejection
            imported += fresh
    return ImportReport(len(rows), imported, len(rows) - imported)
