"""Typed errors of the rules engine, rooted in one base class.

Rule outcomes are never exceptions: a violated rule is a :class:`~compliance_rules.Violation`
value inside a decision. Exceptions are for inputs the engine cannot work with (a malformed
pack, malformed facts) and for broken engine invariants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ComplianceRulesError(Exception):
    """Root of every error raised by ``compliance_rules``."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a document, located by its JSON path (``$.versions[0].rules[1]``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DocumentError(ComplianceRulesError):
    """A YAML or JSON document (pack or facts) is not well-formed or cannot be read."""


class PackError(ComplianceRulesError):
    """A rule pack could not be loaded."""


class PackNotFoundError(PackError):
    """No built-in pack has the name asked for, and no file exists at that path."""


class PackInvalidError(PackError):
    """A rule pack failed validation; ``issues`` lists every problem, not only the first."""

    def __init__(self, source: str, issues: Sequence[Issue]) -> None:
        self.source = source
        self.issues: tuple[Issue, ...] = tuple(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"rule pack {source} is invalid ({len(self.issues)} error(s)):\n{lines}")


class NoVersionInForceError(PackError):
    """The pack has no version in force on the date a decision is made for."""


class FactsError(ComplianceRulesError):
    """The facts given to the engine are malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class EngineInvariantError(ComplianceRulesError):
    """The engine reached a state its own construction should have made impossible."""
