"""The rule protocol, the evaluation context and the deny-overrides combinator.

Definitions (``checks``), data (packs), combining (here) and storage (``loader``) are kept
apart so that each can change without the others.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from compliance_rules.decision import Violation
from compliance_rules.facts import Block, HoldingStatus, Period, Project, TransferFacts, Use
from compliance_rules.pack import ComplianceCycle, Confidence, PackVersion, Source


class Scope(enum.Enum):
    """What a rule needs to see, which decides whether a listing can evaluate it."""

    SUBJECT = "subject"
    """Project and period only: evaluated for transfers and for listings."""
    BLOCK = "block"
    """Unit-level facts (authorization, adjustment, gas, labels): transfers only."""
    REQUEST = "request"
    """The whole request (entity, known blocks): transfers only."""


@dataclass(frozen=True)
class Subject:
    """What one block (or, for a listing, one monitoring period) is about."""

    project: Project
    vintage: Period
    block: Block | None = None


@dataclass(frozen=True)
class Context:
    """Everything a rule may look at. No clock call happens inside a rule: ``clock`` is it."""

    use: Use
    subjects: tuple[Subject, ...]
    clock: date
    version: PackVersion
    destination_country: str
    facts: TransferFacts | None = None
    """``None`` for a listing."""
    cycle: ComplianceCycle | None = None
    """The pack's compliance cycle holding the request's compliance year, if it declares one:
    the years surrendered together, which rules on a unit's year compare against."""
    released: frozenset[tuple[str, HoldingStatus]] = frozenset()
    """(label, status) pairs the scheme releases for the request's year: a unit carrying the
    label whose own holding has the status is not taken for used (a notice lets units
    cancelled without being used count again)."""

    @classmethod
    def for_transfer(
        cls,
        facts: TransferFacts,
        clock: date,
        version: PackVersion,
        cycle: ComplianceCycle | None = None,
        released: frozenset[tuple[str, HoldingStatus]] = frozenset(),
    ) -> Context:
        """A context over the blocks of a transfer."""
        subjects = tuple(Subject(b.project, b.vintage, b) for b in facts.blocks)
        return cls(
            facts.use, subjects, clock, version, facts.destination_country, facts, cycle, released
        )


class Rule(Protocol):
    """A check: facts in, violations out (an empty list means the rule holds)."""

    @property
    def rule_id(self) -> str:
        """Stable id, e.g. ``CR-SZ-0001``."""
        ...

    @property
    def scope(self) -> Scope:
        """What the rule needs to see."""
        ...

    @property
    def unconfirmed_params(self) -> tuple[str, ...]:
        """Unconfirmed pack figures the rule relies on."""
        ...

    def evaluate(self, ctx: Context) -> list[Violation]:
        """Every violation of this rule in ``ctx``."""
        ...


ENGINE_SOURCE = Source(
    document="carbonlink DESIGN.md",
    clause="Rules (compliance_rules): rules fail closed; decisions list every violation",
    confidence=Confidence.CONFIRMED,
)

EMPTY_RULE_SET = "CR-ENGINE-0001"
USE_NOT_SUPPORTED = "CR-ENGINE-0002"
NO_BLOCKS = "CR-ENGINE-0003"
CYCLE_CLOSED = "CR-ENGINE-0004"
"""A use for a compliance cycle's year decided after the cycle closed at its deadline; the
violation carries the cycle's own source."""


class AllOf:
    """Deny-overrides: runs every rule, collects every violation; no rules means deny.

    An empty rule list fails closed with an :data:`EMPTY_RULE_SET` violation, because a use
    that no rule speaks to is a use the pack does not allow, not one it allows by default.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)

    def evaluate(self, ctx: Context) -> list[Violation]:
        """All violations of all rules, in a stable order independent of the facts' order."""
        if not self.rules:
            return [
                Violation(
                    rule_id=EMPTY_RULE_SET,
                    message="No rule of the pack applies: the request is refused (fail closed)",
                    source=ENGINE_SOURCE,
                    detail=f"no rules in force for use {ctx.use.value!r}",
                )
            ]
        found: list[Violation] = []
        for rule in self.rules:
            found.extend(rule.evaluate(ctx))
        return sorted(found, key=Violation.sort_key)
