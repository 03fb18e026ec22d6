"""Decisions and violations: the values the engine returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from compliance_rules.facts import BlockRef, Use
from compliance_rules.pack import Source

DetailValue = int | Decimal | str


@dataclass(frozen=True)
class Violation:
    """One violated rule, with where it comes from and what it is about."""

    rule_id: str
    message: str
    """The rule's stable message, from its pack."""
    source: Source
    blocks: tuple[BlockRef, ...] = ()
    """The offending blocks (empty when the violation is about the request as a whole)."""
    detail: str = ""
    """What exactly is wrong in this case, in words."""
    details: tuple[tuple[str, DetailValue], ...] = ()
    """The figures behind the violation, e.g. ``limit``, ``already_used``, ``asked``."""
    unconfirmed_params: tuple[str, ...] = ()
    """Unconfirmed pack figures the rule relied on (``pack:name``), including an unconfirmed
    compliance cycle that chose the rule's version: a reviewer must treat them with care."""

    def sort_key(self) -> tuple[str, tuple[BlockRef, ...], str]:
        """A total order that does not depend on the order the facts were given in."""
        return (self.rule_id, self.blocks, self.detail)

    def detail_value(self, key: str) -> DetailValue:
        """The figure ``key`` of :attr:`details`.

        Raises:
            KeyError: No such figure.
        """
        for name, value in self.details:
            if name == key:
                return value
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (decimals as strings, never floats)."""
        return {
            "rule_id": self.rule_id,
            "message": self.message,
            "source": {
                "document": self.source.document,
                "clause": self.source.clause,
                "confidence": self.source.confidence.value,
                "url": self.source.url,
            },
            "blocks": [
                {
                    "program": b.program,
                    "serial_series": b.serial_series,
                    "serial_start": b.serial_start,
                    "serial_end": b.serial_end,
                }
                for b in self.blocks
            ],
            "detail": self.detail,
            "details": {k: str(v) if isinstance(v, Decimal) else v for k, v in self.details},
            "unconfirmed_params": list(self.unconfirmed_params),
        }


@dataclass(frozen=True)
class Decision:
    """Allow or deny, with every violation (deny-overrides: any violation denies)."""

    allowed: bool
    violations: tuple[Violation, ...]
    pack: str
    pack_version: date
    """``effective_from`` of the pack version the decision used."""
    use: Use
    evaluated_rules: tuple[str, ...]
    """Ids of every rule that was evaluated (passed or not)."""
    unconfirmed_params: tuple[str, ...] = ()
    """Unconfirmed figures any evaluated rule relied on (``pack:name``), and the unconfirmed
    compliance cycle that chose the version, if one did."""
    deferred_rules: tuple[str, ...] = ()
    """Rules that need the entity's compliance year and were not evaluated because the
    request is a transfer toward compliance, not the surrender (``defer_entity_rules``):
    they decide the surrender."""

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """Ids of the violated rules, sorted, without repeats."""
        return tuple(sorted({v.rule_id for v in self.violations}))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "allowed": self.allowed,
            "pack": self.pack,
            "pack_version": self.pack_version.isoformat(),
            "use": self.use.value,
            "violations": [v.to_json() for v in self.violations],
            "evaluated_rules": list(self.evaluated_rules),
            "unconfirmed_params": list(self.unconfirmed_params),
            "deferred_rules": list(self.deferred_rules),
        }


@dataclass(frozen=True)
class UseEligibility:
    """Whether a listed project's units would be eligible for one use."""

    use: Use
    eligible: bool
    violations: tuple[Violation, ...]
    conditions: tuple[str, ...]
    """Rules that depend on unit-level facts (authorization, corresponding adjustment, gas,
    serials, offset limits) and so are checked on each transfer, not at listing."""


@dataclass(frozen=True)
class ListingDecision:
    """The answer to ListProject: per-use eligibility, or a refusal."""

    pack: str
    pack_version: date
    program: str
    project_id: str
    refused: bool
    """True when the project's reductions are already issued under another program for the
    same period (double issuance): no use is eligible then."""
    refusals: tuple[Violation, ...]
    uses: tuple[UseEligibility, ...]

    @property
    def eligible_uses(self) -> tuple[Use, ...]:
        """The uses its units would be eligible for."""
        return tuple(u.use for u in self.uses if u.eligible)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "pack": self.pack,
            "pack_version": self.pack_version.isoformat(),
            "program": self.program,
            "project_id": self.project_id,
            "refused": self.refused,
            "refusals": [v.to_json() for v in self.refusals],
            "uses": [
                {
                    "use": u.use.value,
                    "eligible": u.eligible,
                    "violations": [v.to_json() for v in u.violations],
                    "conditions": list(u.conditions),
                }
                for u in self.uses
            ],
        }


@dataclass(frozen=True)
class OffsetLimitStatus:
    """Where an entity stands against one offset limit of a compliance year."""

    rule_id: str
    limit: int
    """The most tCO2e of offsets the entity may surrender toward this limit."""
    already_used: int
    remaining: int
    programs: tuple[str, ...]
