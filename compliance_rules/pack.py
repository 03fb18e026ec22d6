"""Typed, immutable form of a loaded rule pack (the data; loading lives in ``loader``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from compliance_rules.errors import NoVersionInForceError
from compliance_rules.facts import Use

if TYPE_CHECKING:
    # NOTE(compliance_rules): annotations only; gwp imports Source from this module.
    from compliance_rules.gwp import GwpCatalog, GwpReport


class Confidence(enum.StrEnum):
    """How well a figure is sourced (RULES-REFERENCE tags C, S and U)."""

    CONFIRMED = "confirmed"
    """C: seen in the cited excerpt or file."""
    SECONDARY = "secondary"
    """S: only a secondary source (news, law-firm note, mirror of an official text)."""
    UNCONFIRMED = "unconfirmed"
    """U: not found, or found only in part; never to be presented as fact."""


@dataclass(frozen=True)
class Source:
    """Where a rule or figure comes from."""

    document: str
    clause: str
    confidence: Confidence
    url: str = ""

    def __str__(self) -> str:
        return f"{self.document}, {self.clause}"


@dataclass(frozen=True)
class Parameter:
    """A named figure of a pack version, with how sure we are of it."""

    name: str
    value: object
    """``None`` when the figure is unknown; rules may not reference an unknown figure."""
    confidence: Confidence
    note: str
    source: Source | None = None


@dataclass(frozen=True)
class GwpBasis:
    """The GWP table a pack version converts non-CO2 gases with."""

    report: str
    """The IPCC assessment report as the pack names it, e.g. ``"IPCC AR5"``."""
    horizon_years: int
    confidence: Confidence
    """How sure the pack is that the scheme uses this report (not the values' sourcing)."""
    note: str
    values: GwpReport
    """The report's values, from the package's GWP data (``data/gwp100.yaml``)."""
    catalog: GwpCatalog
    """Every report's values: a block converted with another report is re-expressed."""


@dataclass(frozen=True)
class RuleSpec:
    """One rule as written in a pack, parameters resolved."""

    rule_id: str
    kind: str
    message: str
    source: Source
    uses: frozenset[Use]
    params: Mapping[str, object]
    unconfirmed_params: tuple[str, ...] = ()
    """Names of the unconfirmed pack parameters this rule's figures come from."""


class Disposition(enum.StrEnum):
    """What happens to a migrating entity's remaining holding of one program."""

    KEEP_FOR_SALE = "keep_for_sale"
    """The units stay in the entity's pilot account, to be sold on the local market."""
    CANCEL = "cancel"
    """The units are cancelled at their registry (terminal)."""
    TRANSFER = "transfer"
    """The units move to the entity's account in the destination scheme's registry."""


@dataclass(frozen=True)
class MigrationRules:
    """How a covered entity leaves this scheme for ``destination`` (a pack version's section).

    Every figure keeps the parameter it came from, so a plan can say which of its
    dispositions rest on an unconfirmed figure.
    """

    destination: str
    """The scheme entities move to, e.g. ``"national"``."""
    source: Source
    dispositions: Mapping[str, Disposition]
    """Program (``"SZA"``, ``"CCER"``...) -> what happens to remaining units of it."""
    sectors: Mapping[str, int | None]
    """Sector -> first compliance year the destination covers it; None when unconfirmed."""
    parameters: Mapping[str, str]
    """Program or ``"sectors"`` -> name of the pack parameter the figure came from."""
    unconfirmed: frozenset[str]
    """Programs (and ``"sectors"``) whose figure comes from an unconfirmed parameter."""


@dataclass(frozen=True)
class PackVersion:
    """The rules of a pack in force from ``effective_from`` until the next version."""

    effective_from: date
    description: str
    uses: frozenset[Use]
    parameters: Mapping[str, Parameter]
    gwp: GwpBasis
    rules: tuple[RuleSpec, ...]
    migration: MigrationRules | None = None
    """How entities leave this scheme, where the version says so."""


@dataclass(frozen=True)
class ComplianceCycle:
    """Compliance years a scheme had surrendered together, by one deadline.

    A decision for one of these years is made under the pack version in force on
    ``rules_on``: the rules the cycle was complied under, by default those in force on its
    surrender deadline. A year outside every cycle is decided under the version in force on
    its own last day. A cycle is declared where that default is wrong, e.g. a scheme whose
    first rules came into force after the years they governed (the national ETS's 2019-2020
    cycle, under measures of 2021), or whose units are still used for a phase after the
    next phase's rules are in force (CORSIA's 2024-2026 phase, cancelled until 2028).
    """

    name: str
    """How decisions name the cycle, e.g. among the unconfirmed figures they rest on."""
    first_year: int
    last_year: int
    surrender_deadline: date
    rules_on: date
    """The day whose version decides the cycle's years: ``surrender_deadline`` unless the
    pack names another (never later than the deadline)."""
    closes_at_deadline: bool
    """True when units used for the cycle after ``surrender_deadline`` no longer count
    toward it, so such a use is refused; False when the deadline only places the rules (a
    late surrender is then the regulator's matter, not the gateway's refusal)."""
    confidence: Confidence
    """How sure the pack is of the cycle as a whole (its years and its deadline)."""
    note: str
    source: Source

    def holds(self, compliance_year: int) -> bool:
        """Whether ``compliance_year`` is one of the cycle's years."""
        return self.first_year <= compliance_year <= self.last_year

    def closed_on(self, day: date) -> bool:
        """Whether a use for the cycle decided on ``day`` comes after the cycle has closed."""
        return self.closes_at_deadline and day > self.surrender_deadline


@dataclass(frozen=True)
class RulePack:
    """A scheme's rule pack: versions in ascending ``effective_from`` order."""

    name: str
    title: str
    rule_id_prefix: str
    baseline: bool
    """True for the baseline pack whose rules apply under every scheme pack."""
    versions: tuple[PackVersion, ...]
    origin: str
    """Where the pack was loaded from (for messages)."""
    cycles: tuple[ComplianceCycle, ...] = ()
    """Compliance cycles whose years are decided at the cycle's surrender deadline."""

    def version_for(self, day: date) -> PackVersion:
        """The version in force on ``day``.

        Args:
            day: The date the decision is made for.

        Returns:
            The latest version whose ``effective_from`` is on or before ``day``.

        Raises:
            NoVersionInForceError: ``day`` is before the first version.
        """
        in_force = [v for v in self.versions if v.effective_from <= day]
        if not in_force:
            raise NoVersionInForceError(
                f"pack {self.name} has no version in force on {day.isoformat()} "
                f"(first version: {self.versions[0].effective_from.isoformat()})"
            )
        return in_force[-1]

    def cycle_for(self, compliance_year: int) -> ComplianceCycle | None:
        """The declared compliance cycle holding ``compliance_year``, if any."""
        return next((c for c in self.cycles if c.holds(compliance_year)), None)

    def decision_day(self, compliance_year: int) -> date:
        """The day whose rules govern a compliance year's obligations.

        Args:
            compliance_year: The year the entity complies for.

        Returns:
            The day the cycle holding the year is decided on (its ``rules_on``), if the
            pack declares one; otherwise the year's last day.
        """
        cycle = self.cycle_for(compliance_year)
        return date(compliance_year, 12, 31) if cycle is None else cycle.rules_on

    def version_for_year(self, compliance_year: int) -> PackVersion:
        """The version that governs a compliance year (see :meth:`decision_day`).

        Raises:
            NoVersionInForceError: No version is in force on the year's decision day.
        """
        return self.version_for(self.decision_day(compliance_year))

    @property
    def rule_ids(self) -> frozenset[str]:
        """Every rule id of every version."""
        return frozenset(r.rule_id for v in self.versions for r in v.rules)
