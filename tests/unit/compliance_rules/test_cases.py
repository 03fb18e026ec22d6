"""Runs every rule case file and checks each rule has an allowed and a denied case."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from compliance_rules import (
    BUILTIN_PACKS,
    evaluate_listing,
    evaluate_transfer,
    load_builtin,
    parse_listing,
    parse_transfer,
)
from compliance_rules.checks import build_rule
from compliance_rules.loader import BASELINE_PACK, parse_document
from compliance_rules.rules import Scope

CASES_DIR = Path(__file__).parent / "cases"


@dataclass(frozen=True)
class Case:
    file: str
    pack: str
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.file}::{self.doc['name']}"


def _case_files() -> list[Path]:
    return sorted(CASES_DIR.glob("*.cases.yaml"))


def _load_cases() -> list[Case]:
    schema = json.loads((CASES_DIR / "cases.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    cases = []
    for path in _case_files():
        doc = parse_document(path.read_text(encoding="utf-8"))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name} does not match cases.schema.json: {errors}"
        cases += [Case(path.name, doc["pack"], c) for c in doc["cases"]]
    return cases


CASES = _load_cases()


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    violated: frozenset[str]
    evaluated: frozenset[str]
    details: dict[str, Any]
    texts: tuple[str, ...] = ()
    """Every violation's detail, in words."""


def run_case(case: Case) -> Outcome:
    """Evaluates a case and returns what the engine decided."""
    pack = load_builtin(case.pack)
    clock = date.fromisoformat(case.doc["clock"])
    use = case.doc["use"]
    if case.doc.get("kind", "transfer") == "listing":
        listing = evaluate_listing(pack, parse_listing(case.doc["facts"]), clock)
        (entry,) = [u for u in listing.uses if u.use.value == use]
        version = pack.version_for(clock)
        baseline = load_builtin(BASELINE_PACK).version_for(clock)
        evaluated = frozenset(
            s.rule_id
            for s in (*version.rules, *baseline.rules)
            if entry.use in s.uses and build_rule(s).scope is Scope.SUBJECT
        )
        details: dict[str, Any] = {"refused": listing.refused}
        return Outcome(
            entry.eligible,
            frozenset(v.rule_id for v in entry.violations),
            evaluated,
            details,
            tuple(v.detail for v in entry.violations),
        )
    decision = evaluate_transfer(pack, parse_transfer(case.doc["facts"], use), clock)
    details = {k: v for viol in decision.violations for k, v in viol.details}
    return Outcome(
        decision.allowed,
        frozenset(decision.rule_ids),
        frozenset(decision.evaluated_rules),
        details,
        tuple(v.detail for v in decision.violations),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case) -> None:
    outcome = run_case(case)
    expected = case.doc["expected"]
    assert outcome.violated == frozenset(expected["rule_ids"]), outcome
    assert outcome.allowed is expected["allowed"]
    if "refused" in expected:
        assert outcome.details["refused"] is expected["refused"]
    for key, value in expected.get("details", {}).items():
        got = outcome.details[key]
        assert (str(got) if isinstance(got, Decimal | str) else got) == value, key
    if "detail_contains" in expected:
        assert any(expected["detail_contains"] in t for t in outcome.texts), outcome.texts


def test_every_pack_has_a_case_file() -> None:
    packs_with_cases = {c.pack for c in CASES}
    assert set(BUILTIN_PACKS) <= packs_with_cases


def test_every_rule_has_an_allowed_and_a_denied_case() -> None:
    """Coverage is measured on what the engine did, not on what the files claim."""
    allowed: dict[str, list[str]] = defaultdict(list)
    denied: dict[str, list[str]] = defaultdict(list)
    for case in CASES:
        outcome = run_case(case)
        for rule_id in outcome.violated:
            denied[rule_id].append(case.id)
        if outcome.allowed:
            for rule_id in outcome.evaluated:
                allowed[rule_id].append(case.id)
    packs = [load_builtin(n) for n in (*BUILTIN_PACKS, BASELINE_PACK)]
    every_rule = set().union(*(p.rule_ids for p in packs))
    # A use_refused rule refuses every unit by design: it has no allowed case to find, and
    # one that showed up in an allowed decision would be a refusal that failed open.
    refusing = {
        r.rule_id for p in packs for v in p.versions for r in v.rules if r.kind == "use_refused"
    }
    assert not refusing & set(allowed), {r: allowed[r] for r in refusing & set(allowed)}
    missing_allowed = sorted(every_rule - refusing - set(allowed))
    missing_denied = sorted(every_rule - set(denied))
    assert not missing_allowed, f"rules without an allowed case: {missing_allowed}"
    assert not missing_denied, f"rules without a denied case: {missing_denied}"
