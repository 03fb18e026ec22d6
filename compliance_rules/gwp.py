"""GWP tables of the IPCC assessment reports, and how a name finds its report and its gas.

The tables are data (``data/gwp100.yaml``, loaded and schema-checked by ``loader``); this
module only holds their typed form and the name matching, so it does no I/O. Every factor is a
``Decimal``: AR6 gives methane as 27.9, and a limit computed in binary floating point can
refuse a block by a fraction of a tonne.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from compliance_rules.pack import Source


def gas_key(name: str) -> str:
    """The form gas names are compared in: ``"HFC-134a"``, ``"hfc134a"`` -> ``"hfc134a"``."""
    return "".join(c for c in name.casefold() if c.isalnum())


def report_key(name: str) -> str:
    """The form report names are compared in: ``"IPCC AR5"``, ``"ar5"`` -> ``"ar5"``."""
    key = "".join(c for c in name.casefold() if c.isalnum())
    return key.removeprefix("ipcc")


@dataclass(frozen=True)
class GwpReport:
    """One IPCC assessment report's 100-year GWP table."""

    report: str
    """The report's id, ``"AR2"`` (SAR), ``"AR4"``, ``"AR5"`` or ``"AR6"``."""
    title: str
    aliases: tuple[str, ...]
    """Other names a pack or a registry may give it (``"SAR"``, ``"IPCC AR5"``)."""
    source: Source
    table: Mapping[str, Decimal]
    """Gas name as written in the data (``"HFC-134a"``) -> GWP-100, a multiple of CO2."""

    def factor(self, gas: str) -> Decimal | None:
        """The GWP of ``gas`` (any case, hyphens optional), or None when the table has none."""
        wanted = gas_key(gas)
        for name, value in self.table.items():
            if gas_key(name) == wanted:
                return value
        return None


@dataclass(frozen=True)
class GwpCatalog:
    """Every report's table, and the horizon they share."""

    horizon_years: int
    reports: Mapping[str, GwpReport]
    """Report id -> its table."""

    def find(self, name: str) -> GwpReport | None:
        """The report called ``name`` (``"AR5"``, ``"IPCC AR5"``, ``"SAR"``), or None."""
        wanted = report_key(name)
        if not wanted:
            return None
        for report in self.reports.values():
            if wanted in {report_key(report.report), *(report_key(a) for a in report.aliases)}:
                return report
        return None

    @property
    def known(self) -> tuple[str, ...]:
        """The report ids, sorted (for messages)."""
        return tuple(sorted(self.reports))


__all__ = ["GwpCatalog", "GwpReport", "gas_key", "report_key"]
