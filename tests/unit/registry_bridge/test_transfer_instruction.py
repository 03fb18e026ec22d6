"""A transfer instruction's canonical form: what its request digest and stored copy are of.

Stored request digests (idempotency) and stored instructions were made before an
instruction could name a compliance year; an instruction without one must keep exactly the
form it had, and one with a year must differ by that field alone.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from registry_bridge.model import BlockId, Program
from registry_bridge.transfers import (
    AccountRef,
    Settlement,
    TransferInstruction,
    body_digest,
    compliance_year_problem,
)

CORSIA = TransferInstruction(
    AccountRef("hkmo", "hk-seller"),
    AccountRef("shenzhen", "airline"),
    (BlockId(Program.VCS, "", 1001, 1100),),
    "corsia",
    Settlement("HKD", Decimal("12.50"), "T-1"),
)
# NOTE(transfers): the form and digest the code gave this instruction before
# compliance_year existed (commit 9f0e117), copied here so a change to either shows.
OLD_FORM = (
    '{"destination":{"account":"airline","registry":"shenzhen"},"intended_use":"corsia",'
    '"settlement":{"amount":"12.50","currency":"HKD","trade_reference":"T-1"},'
    '"source":{"account":"hk-seller","registry":"hkmo"},'
    '"units":[{"program":"VCS","serial_end":1100,"serial_series":"","serial_start":1001}]}'
)
OLD_DIGEST = "58bb26c522f83641ab3e0530e2011dd8f2a63ff92b29f33e6d1d3e2b6d053666"


def _form(instruction: TransferInstruction) -> str:
    return json.dumps(instruction.canonical(), sort_keys=True, separators=(",", ":"))


def test_an_instruction_without_a_compliance_year_keeps_its_old_form_and_digest() -> None:
    assert CORSIA.compliance_year == 0
    assert _form(CORSIA) == OLD_FORM
    assert body_digest(CORSIA.canonical()).hex() == OLD_DIGEST


def test_a_compliance_year_is_part_of_the_form_and_the_digest() -> None:
    for_2026 = TransferInstruction(
        CORSIA.source,
        CORSIA.destination,
        CORSIA.units,
        CORSIA.intended_use,
        CORSIA.settlement,
        compliance_year=2026,
    )
    assert for_2026.canonical() == {**json.loads(OLD_FORM), "compliance_year": 2026}
    # The same request id with another obligation year is another body.
    assert body_digest(for_2026.canonical()).hex() != OLD_DIGEST


def test_a_compliance_year_is_refused_for_any_use_but_corsia() -> None:
    assert compliance_year_problem("holding", 0) is None
    assert compliance_year_problem("corsia", 0) is None
    problem = compliance_year_problem("holding", 2026)
    assert problem is not None
    assert "only for intended use 'corsia'" in problem and "'holding'" in problem


@pytest.mark.parametrize("year", [2020, 2101, -2026, 26])
def test_a_compliance_year_outside_corsia_is_refused(year: int) -> None:
    problem = compliance_year_problem("corsia", year)
    assert problem is not None
    assert f"{year} is not a CORSIA compliance year" in problem
    assert "between 2021 and 2100" in problem


@pytest.mark.parametrize("year", [2021, 2026, 2027, 2100])
def test_a_corsia_compliance_year_in_range_is_accepted(year: int) -> None:
    assert compliance_year_problem("corsia", year) is None
