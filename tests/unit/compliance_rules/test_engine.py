"""Engine behaviour beyond the rule cases: fail-closed, surrenders, listings, invariants."""

from __future__ import annotations

import ast
import dataclasses
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compliance_rules
from compliance_rules import (
    Authorization,
    Block,
    BlockRef,
    CaStatus,
    Confidence,
    EngineInvariantError,
    EntityYear,
    FactsError,
    GecStatus,
    HoldingStatus,
    KnownBlock,
    ListingFacts,
    NoVersionInForceError,
    OffsetUse,
    Period,
    Project,
    Registration,
    RulePack,
    Source,
    TransferFacts,
    Use,
    co2e,
    evaluate_listing,
    evaluate_surrender,
    evaluate_transfer,
    load_builtin,
    offset_limits,
    parse_transfer,
)
from compliance_rules.checks import build_rule
from compliance_rules.loader import load_pack_text
from compliance_rules.pack import RuleSpec
from compliance_rules.rules import (
    CYCLE_CLOSED,
    EMPTY_RULE_SET,
    NO_BLOCKS,
    USE_NOT_SUPPORTED,
    AllOf,
    Context,
    Subject,
)

CLOCK = date(2025, 6, 1)
GANSU_WIND = Project(
    program="CCER",
    project_id="CCER-1",
    country="CN",
    region="Gansu",
    project_type="wind",
    construction_start=date(2015, 1, 1),
)
YEAR = Period(date(2022, 1, 1), date(2022, 12, 31))


def ccer(start: int, end: int, **changes: Any) -> Block:
    block = Block(BlockRef("CCER", "", start, end), GANSU_WIND, YEAR)
    return dataclasses.replace(block, **changes)


def entity(**changes: Any) -> EntityYear:
    base = EntityYear("E-1", 2024, verified_emissions=110_000, allowances_due=100_000)
    return dataclasses.replace(base, **changes)


def test_an_empty_rule_set_fails_closed() -> None:
    version = load_builtin("national").version_for(CLOCK)
    facts = TransferFacts(Use.COMPLIANCE, (ccer(1, 10),), "CN")
    found = AllOf([]).evaluate(Context.for_transfer(facts, CLOCK, version))
    assert [v.rule_id for v in found] == [EMPTY_RULE_SET]


def test_a_request_without_blocks_is_denied() -> None:
    facts = TransferFacts(Use.COMPLIANCE, (), "CN", entity())
    decision = evaluate_transfer(load_builtin("national"), facts, CLOCK)
    assert not decision.allowed
    assert decision.rule_ids == (NO_BLOCKS,)


def test_a_surrender_without_the_entitys_record_names_the_missing_record() -> None:
    # The bridge leaves the entity out when the entity was named but has no record for
    # the year: the refusal must say the record is missing, not ask for what was given.
    facts = TransferFacts(Use.COMPLIANCE, (ccer(1, 10),), "CN")
    decision = evaluate_transfer(load_builtin("shenzhen"), facts, date(2024, 6, 1))

    limit = [v for v in decision.violations if v.rule_id == "CR-SZ-0006"]
    assert limit, decision.rule_ids
    assert "no record of the entity for the compliance year" in limit[0].detail


def test_surrender_over_the_limit_carries_limit_used_and_asked() -> None:
    used = (OffsetUse("CCER", 4_000),)
    decision = evaluate_surrender(
        load_builtin("national"), entity(offsets_surrendered=used), [ccer(1, 1_500)], CLOCK
    )
    assert not decision.allowed
    (violation,) = decision.violations
    assert violation.rule_id == "CR-NAT-0002"
    assert violation.detail_value("limit") == 5_000
    assert violation.detail_value("already_used") == 4_000
    assert violation.detail_value("asked") == 1_500
    assert violation.blocks == (BlockRef("CCER", "", 1, 1_500),)


def test_surrender_within_the_limit_is_allowed() -> None:
    used = (OffsetUse("CCER", 4_000),)
    decision = evaluate_surrender(
        load_builtin("national"), entity(offsets_surrendered=used), [ccer(1, 1_000)], CLOCK
    )
    assert decision.allowed, decision.violations


def test_offset_limits_reports_headroom() -> None:
    used = (OffsetUse("CCER", 1_200), OffsetUse("VCS", 99))
    (status,) = offset_limits(load_builtin("national"), entity(offsets_surrendered=used))
    assert (status.limit, status.already_used, status.remaining) == (5_000, 1_200, 3_800)
    (gd,) = offset_limits(load_builtin("guangdong"), entity(compliance_year=2023))
    assert gd.limit == 10_999  # strictly below 10% of 110,000


@pytest.mark.parametrize("year", [2019, 2020])
def test_the_national_first_cycle_is_decided_under_the_version_in_force_at_its_surrender(
    year: int,
) -> None:
    """The 2019-2020 cycle was surrendered by 31 Dec 2021 under the 2021 measures."""
    pack = load_builtin("national")
    cycle_year = entity(compliance_year=year)
    vintage = Period(date(year, 1, 1), date(year, 12, 31))
    within = evaluate_surrender(pack, cycle_year, [ccer(1, 5_000, vintage=vintage)], CLOCK)
    assert within.allowed, within.violations
    assert within.pack_version == date(2021, 2, 1)
    # The cycle is sourced (secondary): a decision under it carries no unconfirmed figure.
    assert "national:first_compliance_cycle" not in within.unconfirmed_params
    over = evaluate_surrender(pack, cycle_year, [ccer(1, 5_001, vintage=vintage)], CLOCK)
    assert over.rule_ids == ("CR-NAT-0002",)
    (status,) = offset_limits(pack, cycle_year)
    assert (status.limit, status.remaining) == (5_000, 5_000)


def test_the_national_second_cycle_is_declared_with_its_deadline_and_source() -> None:
    pack = load_builtin("national")
    cycle = pack.cycle_for(2021)
    assert cycle is not None
    assert pack.cycle_for(2022) is cycle
    assert (cycle.name, cycle.first_year, cycle.last_year) == (
        "second_compliance_cycle",
        2021,
        2022,
    )
    assert cycle.surrender_deadline == date(2023, 12, 31)
    # Decided under the rules of MEE's surrender notice, before the 2023 CCER measures.
    assert cycle.rules_on == date(2023, 7, 17)
    assert not cycle.closes_at_deadline
    assert cycle.confidence is Confidence.SECONDARY
    assert "237号" in cycle.source.document
    assert cycle.source.confidence is Confidence.SECONDARY
    assert cycle.source.url.startswith("http")
    assert pack.cycle_for(2023) is not cycle


@pytest.mark.parametrize("year", [2021, 2022])
def test_the_national_second_cycle_is_decided_under_the_2021_measures_and_their_5_percent(
    year: int,
) -> None:
    """2021 and 2022 were surrendered by 31 Dec 2023 with pre-2017 CCER, each year within 5%
    of its own allowances due; the 2023 CCER measures' construction date did not apply."""
    pack = load_builtin("national")
    assert pack.decision_day(year) == date(2023, 7, 17)
    cycle_year = entity(compliance_year=year)
    built_2010 = dataclasses.replace(GANSU_WIND, construction_start=date(2010, 6, 1))
    vintage = Period(date(year, 1, 1), date(year, 12, 31))
    legacy = ccer(1, 5_000, project=built_2010, vintage=vintage)
    november = date(2023, 11, 20)  # after the 2023 CCER measures came into force
    within = evaluate_surrender(pack, cycle_year, [legacy], november)
    assert within.allowed, within.violations
    assert within.pack_version == date(2021, 2, 1)
    assert "national:second_compliance_cycle" not in within.unconfirmed_params
    over = evaluate_surrender(
        pack,
        cycle_year,
        [dataclasses.replace(legacy, ref=BlockRef("CCER", "", 1, 5_001))],
        november,
    )
    assert over.rule_ids == ("CR-NAT-0002",)
    assert over.violations[0].detail_value("limit") == 5_000
    (status,) = offset_limits(pack, cycle_year)
    assert (status.limit, status.remaining) == (5_000, 5_000)
    # The deadline does not close the cycle: a late surrender is decided like any other.
    late = evaluate_surrender(pack, cycle_year, [legacy], date(2024, 3, 1))
    assert late.allowed, late.violations
    # The year after the cycle is its own cycle, under rules holding the 2023 measures.
    after = evaluate_surrender(pack, entity(compliance_year=2023), [legacy], november)
    assert after.pack_version == date(2024, 10, 1)
    assert after.rule_ids == ("CR-NAT-0006",)


@pytest.mark.parametrize(
    ("year", "name", "deadline"),
    [
        (2023, "third_compliance_cycle", date(2024, 12, 31)),
        (2024, "fourth_compliance_cycle", date(2025, 12, 31)),
    ],
)
def test_the_national_2023_and_2024_years_are_cycles_of_their_own(
    year: int, name: str, deadline: date
) -> None:
    """From 2023 each year is surrendered by the end of the next (People's Daily, 5 Jan
    2025), under the version in force on that deadline."""
    pack = load_builtin("national")
    cycle = pack.cycle_for(year)
    assert cycle is not None
    assert (cycle.name, cycle.first_year, cycle.last_year) == (name, year, year)
    assert cycle.surrender_deadline == deadline
    assert cycle.rules_on == deadline
    assert pack.decision_day(year) == deadline
    assert pack.version_for_year(year).effective_from == date(2024, 10, 1)
    assert not cycle.closes_at_deadline
    assert cycle.confidence is Confidence.SECONDARY
    assert cycle.source.confidence is Confidence.SECONDARY
    assert cycle.source.url.startswith("http")
    assert pack.cycle_for(2025) is None


def test_the_2023_year_is_decided_under_the_gec_notice_in_force_for_its_surrenders() -> None:
    """2023 was surrendered from Oct to Dec 2024, under the GEC notice of 1 Oct 2024: its own
    last day (under the version of 19 Oct 2023) no longer chooses its rules."""
    pack = load_builtin("national")
    solar_thermal = dataclasses.replace(GANSU_WIND, project_type="solar_thermal")
    traded = ccer(1, 10, project=solar_thermal, gec_status=GecStatus.TRADED)
    decision = evaluate_surrender(pack, entity(compliance_year=2023), [traded], date(2024, 12, 1))
    assert decision.pack_version == date(2024, 10, 1)
    assert decision.rule_ids == ("CR-NAT-0007",)
    assert "national:third_compliance_cycle" not in decision.unconfirmed_params
    # The deadline does not close the cycle: a late surrender is decided like any other.
    late = evaluate_surrender(pack, entity(compliance_year=2023), [ccer(1, 10)], date(2025, 2, 1))
    assert late.allowed, late.violations


def test_national_years_outside_the_cycles_keep_the_years_last_day() -> None:
    pack = load_builtin("national")
    assert pack.decision_day(2025) == date(2025, 12, 31)
    later = evaluate_surrender(pack, entity(compliance_year=2025), [ccer(1, 10)], CLOCK)
    assert later.pack_version == date(2024, 10, 1)
    with pytest.raises(NoVersionInForceError, match="no version in force on 2018-12-31"):
        evaluate_surrender(pack, entity(compliance_year=2018), [ccer(1, 10)], CLOCK)


OLD_CCER = frozenset({"ccer_recorded_before_2017_03_14"})
"""The label a registry gives CCER recorded under the 2012 interim measures."""


@pytest.mark.parametrize("year", [2022, 2023, 2024])
def test_ccer_recorded_before_14_march_2017_offset_national_surrenders_until_2024_ends(
    year: int,
) -> None:
    """MEE's notice of 24 Oct 2023 (item 3): such CCER offset national surrenders until
    31 Dec 2024 and no longer from 1 Jan 2025, whatever year they are surrendered for; the
    2023 measures' construction date never bound them."""
    pack = load_builtin("national")
    built_2010 = dataclasses.replace(GANSU_WIND, construction_start=date(2010, 6, 1))
    vintage = Period(date(2015, 1, 1), date(2015, 12, 31))
    old = ccer(1, 5_000, project=built_2010, vintage=vintage, labels=OLD_CCER)
    obligation = entity(compliance_year=year)
    on_time = evaluate_surrender(pack, obligation, [old], date(2024, 12, 31))
    assert on_time.allowed, on_time.violations
    assert "CR-NAT-0009" in on_time.evaluated_rules
    (late,) = evaluate_surrender(pack, obligation, [old], date(2025, 1, 1)).violations
    assert (late.rule_id, late.blocks) == ("CR-NAT-0009", (old.ref,))
    assert "关于全国温室气体自愿减排交易市场有关工作事项安排的通告" in late.source.document
    assert late.source.confidence is Confidence.SECONDARY
    assert late.source.url.startswith("http")


def test_ccer_not_recorded_before_2017_keep_the_construction_date_and_have_no_last_day() -> None:
    pack = load_builtin("national")
    built_2010 = dataclasses.replace(GANSU_WIND, construction_start=date(2010, 6, 1))
    unlabelled = ccer(1, 10, project=built_2010)
    refused = evaluate_surrender(
        pack, entity(compliance_year=2023), [unlabelled], date(2024, 12, 31)
    )
    assert refused.rule_ids == ("CR-NAT-0006",)
    assert evaluate_surrender(pack, entity(), [ccer(1, 10)], date(2025, 1, 1)).allowed


def test_all_violations_are_returned_across_blocks() -> None:
    hydro = dataclasses.replace(GANSU_WIND, project_type="hydro", country="VN")
    blocks = (ccer(1, 10, project=hydro), ccer(20, 30, gec_status="traded"))
    facts = TransferFacts(Use.COMPLIANCE, blocks, "CN", entity(), ())
    decision = evaluate_transfer(load_builtin("national"), facts, CLOCK)
    assert decision.rule_ids == ("CR-NAT-0003",)
    facts = dataclasses.replace(
        facts, known_blocks=(KnownBlock(BlockRef("CCER", "", 5, 25), HoldingStatus.RETIRED),)
    )
    decision = evaluate_transfer(load_builtin("national"), facts, CLOCK)
    assert decision.rule_ids == ("CR-DC-0003", "CR-NAT-0003")
    assert len([v for v in decision.violations if v.rule_id == "CR-DC-0003"]) == 2


def test_decisions_name_the_unconfirmed_figures_they_rest_on() -> None:
    sza = Block(
        BlockRef("SZA", "", 1, 10),
        Project("SZA", "SZA-2023", "CN", "Guangdong", "Shenzhen"),
        Period(date(2023, 1, 1), date(2023, 12, 31)),
    )
    facts = TransferFacts(Use.COMPLIANCE, (sza,), "CN", entity(compliance_year=2023))
    decision = evaluate_transfer(load_builtin("shenzhen"), facts, CLOCK)
    assert decision.allowed
    assert "shenzhen:offset_limit_share" in decision.unconfirmed_params


def test_listing_refuses_a_project_already_issued_elsewhere() -> None:
    vcs = Project(
        "VCS",
        "1060",
        "CN",
        project_type="wind",
        registrations=(
            Registration("CCER", "CCER-9", (Period(date(2021, 6, 1), date(2021, 8, 1)),)),
        ),
    )
    listing = ListingFacts(vcs, (YEAR, Period(date(2021, 1, 1), date(2021, 12, 31))))
    decision = evaluate_listing(load_builtin("shenzhen"), listing, CLOCK)
    assert decision.refused
    assert decision.eligible_uses == ()
    assert [v.rule_id for v in decision.refusals] == ["CR-DC-0002"]
    clean = ListingFacts(dataclasses.replace(vcs, registrations=()), (YEAR,))
    decision = evaluate_listing(load_builtin("shenzhen"), clean, CLOCK)
    assert not decision.refused
    assert decision.eligible_uses == (Use.LISTING, Use.VOLUNTARY_RETIREMENT)
    compliance = next(u for u in decision.uses if u.use is Use.COMPLIANCE)
    assert "CR-SZ-0006" in compliance.conditions  # offset limits are checked per surrender
    json.dumps(decision.to_json())


def test_co2e_is_exact() -> None:
    assert co2e("SF6", Decimal("0.1"), {"SF6": 23_500}) == Decimal("2350.0")


def test_non_co2_conversion_boundary_and_json_without_floats() -> None:
    pack = load_builtin("national")
    # 10.5 t CH4 at AR4 (25) is 262.5 tCO2e; the pack's AR5 (28) makes it 294.
    under = ccer(1, 262, gas="CH4", gwp_basis="AR4")
    facts = TransferFacts(Use.COMPLIANCE, (under,), "CN", entity())
    assert evaluate_transfer(pack, facts, CLOCK).allowed
    same = ccer(1, 294, gas="CH4", gwp_basis="IPCC AR5")
    assert evaluate_transfer(pack, dataclasses.replace(facts, blocks=(same,)), CLOCK).allowed
    over = ccer(1, 300, gas="N2O", gwp_basis="AR4")  # 300 / 298 t x 265
    view = evaluate_transfer(pack, dataclasses.replace(facts, blocks=(over,)), CLOCK).to_json()
    assert view["allowed"] is False
    (violation,) = view["violations"]
    assert violation["details"] == {
        "gas": "N2O",
        "gas_mass": "1.006711",
        "gwp_basis": "AR4",
        "basis_gwp": "298",
        "pack_gwp_report": "AR5",
        "pack_gwp": "265",
        "co2e": "266.778523",
        "quantity": 300,
    }
    assert "300 tCO2e at AR4 GWP 298 = 1.006711 t N2O" in violation["detail"]
    assert "x 265 (IPCC AR5) = 266.778523 tCO2e, less than the 300 claimed" in violation["detail"]
    json.loads(json.dumps(view), parse_float=lambda _: pytest.fail("float in decision JSON"))


def _ar6_pack() -> RulePack:
    text = (Path(compliance_rules.__file__).parent / "packs" / "hkmo.yaml").read_text()
    return load_pack_text(text.replace("report: IPCC AR5", "report: IPCC AR6"), origin="ar6")


def test_a_decimal_gwp_decides_exactly() -> None:
    """AR6 gives CH4 as 27.9: an AR5 block (28) over-claims by a tenth per tonne of gas."""
    pack = _ar6_pack()
    assert pack.versions[0].gwp.values.factor("ch4") == Decimal("27.9")
    vcs = Project(program="VCS", project_id="1748", country="ID", project_type="landfill_gas")
    block = Block(BlockRef("VCS", "", 1, 28), vcs, YEAR, gas="CH4", gwp_basis="AR5")
    decision = evaluate_transfer(pack, TransferFacts(Use.LISTING, (block,), "HK"), CLOCK)
    (violation,) = decision.violations
    assert violation.detail_value("co2e") == Decimal("27.900000")
    assert violation.detail_value("pack_gwp") == Decimal("27.9")
    ar4 = dataclasses.replace(block, gwp_basis="AR4")  # 25 < 27.9: under-claims
    assert evaluate_transfer(pack, TransferFacts(Use.LISTING, (ar4,), "HK"), CLOCK).allowed


def test_non_co2_without_a_usable_basis_is_refused_with_the_reason() -> None:
    pack = load_builtin("national")
    facts = TransferFacts(Use.COMPLIANCE, (ccer(1, 10, gas="CH4"),), "CN", entity())
    (missing,) = evaluate_transfer(pack, facts, CLOCK).violations
    assert "gives no GWP basis" in missing.detail
    unknown = dataclasses.replace(facts, blocks=(ccer(1, 10, gas="CH4", gwp_basis="AR3"),))
    (v,) = evaluate_transfer(pack, unknown, CLOCK).violations
    assert "'AR3' is not a known IPCC report (known: AR2, AR4, AR5, AR6)" in v.detail
    co2 = dataclasses.replace(facts, blocks=(ccer(1, 10, gas="co2"),))
    assert evaluate_transfer(pack, co2, CLOCK).allowed


def _rule(kind: str, **params: object) -> RuleSpec:
    source = Source("d", "c", Confidence.SECONDARY)
    return RuleSpec("CR-DEMO-0001", kind, "m", source, frozenset(Use), MappingProxyType(params))


def test_a_labelled_units_use_ends_after_its_last_day() -> None:
    """The day compared is the clock (the use's day), inclusive of the last day."""
    spec = _rule("block_label_use_until", programs=("CCER",), label="old", last_day="2024-12-31")
    rule = build_rule(spec)
    version = load_builtin("national").version_for(CLOCK)
    labelled = ccer(1, 10, labels=frozenset({"old"}))
    facts = TransferFacts(Use.COMPLIANCE, (labelled, ccer(20, 30)), "CN", entity())
    assert rule.evaluate(Context.for_transfer(facts, date(2024, 12, 31), version)) == []
    (late,) = rule.evaluate(Context.for_transfer(facts, date(2025, 1, 1), version))
    assert late.blocks == (labelled.ref,)
    assert late.detail_value("last_day") == "2024-12-31"
    assert late.detail_value("decided_on") == "2025-01-01"
    assert "after their last day of use 2024-12-31" in late.detail
    with pytest.raises(EngineInvariantError, match="not a calendar date") as info:
        build_rule(
            dataclasses.replace(
                spec, params=MappingProxyType({"label": "old", "last_day": "2024-02-30"})
            )
        )
    assert isinstance(info.value.__cause__, ValueError)


def test_a_date_window_leaves_out_units_with_an_exempt_label_but_not_a_listing() -> None:
    rule = build_rule(
        _rule(
            "date_window",
            programs=("CCER",),
            field="construction_start",
            after="2012-11-08",
            exempt_labels=("old",),
        )
    )
    version = load_builtin("national").version_for(CLOCK)
    built_2010 = dataclasses.replace(GANSU_WIND, construction_start=date(2010, 6, 1))
    old = ccer(1, 10, project=built_2010, labels=frozenset({"old"}))
    new = ccer(20, 30, project=built_2010)
    facts = TransferFacts(Use.COMPLIANCE, (old, new), "CN", entity())
    (refused,) = rule.evaluate(Context.for_transfer(facts, CLOCK, version))
    assert refused.blocks == (new.ref,)
    # A listing has no units: a project label does not exempt it.
    labelled = dataclasses.replace(built_2010, labels=frozenset({"old"}))
    listing = Context(Use.COMPLIANCE, (Subject(labelled, YEAR),), CLOCK, version, "CN")
    assert [v.rule_id for v in rule.evaluate(listing)] == ["CR-DEMO-0001"]


def _cea(year_from: int, year_to: int) -> Block:
    project = Project("CEA", f"CEA-{year_from}", "CN", project_type="allowance")
    vintage = Period(date(year_from, 1, 1), date(year_to, 12, 31))
    return Block(BlockRef("CEA", "", 1, 1_000), project, vintage)


def test_allowances_are_compared_with_the_cycle_of_the_year_or_the_year_alone() -> None:
    """237号: 2022 allowances count toward 2021 in the cycle; without a cycle (a pack that
    declares none) the year itself ends the period."""
    rule = build_rule(_rule("vintage_within_period", programs=("CEA",)))
    pack = load_builtin("national")
    version = pack.version_for(CLOCK)
    facts = TransferFacts(Use.COMPLIANCE, (_cea(2022, 2022),), "CN", entity(compliance_year=2021))
    in_cycle = Context.for_transfer(facts, CLOCK, version, pack.cycle_for(2021))
    assert rule.evaluate(in_cycle) == []
    (alone,) = rule.evaluate(Context.for_transfer(facts, CLOCK, version))
    assert alone.detail_value("period_last_year") == 2021
    # A cycle that does not hold the year is not the year's period.
    other = Context.for_transfer(facts, CLOCK, version, pack.cycle_for(2024))
    assert [v.detail_value("period_last_year") for v in rule.evaluate(other)] == [2021]


def test_allowances_without_a_compliance_year_fail_closed_or_wait_for_the_surrender() -> None:
    pack = load_builtin("national")
    facts = TransferFacts(Use.COMPLIANCE, (_cea(2024, 2024),), "CN")
    refused = evaluate_transfer(pack, facts, CLOCK)
    (own,) = [v for v in refused.violations if v.rule_id == "CR-NAT-0011"]
    assert "compliance year is required" in own.detail
    deferred = evaluate_transfer(pack, facts, CLOCK, defer_entity_rules=True)
    assert deferred.allowed, deferred.violations
    assert "CR-NAT-0011" in deferred.deferred_rules


FIRST_CYCLE_UNUSED = frozenset({"ccer_cancelled_first_cycle_unused"})
"""The label a registry gives CCER cancelled for the first cycle and not counted there."""


def test_ccer_cancelled_for_the_first_cycle_need_the_year_to_count_again() -> None:
    """Without the compliance year nothing is released: the units fail closed, and their
    own cancellation is a use; a transfer toward compliance leaves the year's rule to the
    surrender, and the cancellation is still a use then (nothing released yet)."""
    pack = load_builtin("national")
    block = ccer(1, 100, labels=FIRST_CYCLE_UNUSED, holding_id="H-1")
    cancelled = KnownBlock(block.ref, HoldingStatus.CANCELLED, "ccer", "H-1")
    facts = TransferFacts(Use.COMPLIANCE, (block,), "CN", known_blocks=(cancelled,))
    refused = evaluate_transfer(pack, facts, CLOCK)
    assert {"CR-NAT-0012", "CR-DC-0003"} <= set(refused.rule_ids)
    (own,) = [v for v in refused.violations if v.rule_id == "CR-NAT-0012"]
    assert "compliance year is required" in own.detail
    deferred = evaluate_transfer(pack, facts, CLOCK, defer_entity_rules=True)
    assert "CR-NAT-0012" in deferred.deferred_rules
    assert deferred.rule_ids == ("CR-DC-0003",)
    for_2022 = dataclasses.replace(facts, entity=entity(compliance_year=2022))
    assert evaluate_transfer(pack, for_2022, date(2023, 11, 20)).allowed


def test_a_reuse_rule_with_years_that_are_not_integers_is_an_engine_invariant_error() -> None:
    spec = _rule(
        "reuse_after_cancellation",
        programs=("CCER",),
        label="x",
        statuses=("cancelled",),
        years=(True,),
    )
    with pytest.raises(EngineInvariantError, match="list of integers"):
        build_rule(spec)


ART_TREES = Project("ART", "TREES-GY-1", "GY", project_type="forestry_sink")


def corsia_unit(**changes: Any) -> Block:
    """A first-phase unit meeting every condition: letter, adjustment, registry tag."""
    block = Block(
        BlockRef("ART", "", 1, 1_000),
        ART_TREES,
        Period(date(2021, 1, 1), date(2021, 12, 31)),
        authorization=Authorization("GY-LoA-1", "GY", frozenset({"corsia"})),
        ca_status=CaStatus.APPLIED,
        labels=frozenset({"corsia_eligible"}),
    )
    return dataclasses.replace(block, **changes)


def test_corsia_declares_its_first_phase_with_the_cancellation_deadline_and_source() -> None:
    pack = load_builtin("corsia")
    cycle = pack.cycle_for(2024)
    assert cycle is not None
    assert pack.cycle_for(2025) is cycle
    assert pack.cycle_for(2026) is cycle
    assert (cycle.name, cycle.first_year, cycle.last_year) == ("first_phase", 2024, 2026)
    assert cycle.surrender_deadline == date(2028, 1, 31)
    # The phase's own rules (its last day's), not the second phase's in force at the deadline.
    assert cycle.rules_on == date(2026, 12, 31)
    assert cycle.closes_at_deadline
    assert cycle.confidence is Confidence.SECONDARY
    assert cycle.source.url.startswith("https://")
    assert pack.cycle_for(2027) is None


@pytest.mark.parametrize("year", [2024, 2025, 2026])
def test_a_first_phase_obligation_is_decided_under_the_first_phase_until_its_deadline(
    year: int,
) -> None:
    pack = load_builtin("corsia")
    facts = TransferFacts(Use.CORSIA, (corsia_unit(),), "CN", compliance_year=year)
    for day in (date(2027, 6, 1), date(2028, 1, 31)):
        decided = evaluate_transfer(pack, facts, day)
        assert decided.allowed, (day, decided.violations)
        assert decided.pack_version == date(2024, 10, 31)


@pytest.mark.parametrize("year", [2024, 2025, 2026])
def test_a_first_phase_obligation_decided_after_its_deadline_is_refused(year: int) -> None:
    pack = load_builtin("corsia")
    unit = corsia_unit()
    facts = TransferFacts(Use.CORSIA, (unit,), "CN", compliance_year=year)
    late = evaluate_transfer(pack, facts, date(2028, 2, 1))
    assert late.rule_ids == (CYCLE_CLOSED,)
    assert late.pack_version == date(2024, 10, 31)
    (closed,) = late.violations
    assert closed.blocks == (unit.ref,)
    cycle = pack.cycle_for(year)
    assert cycle is not None
    assert closed.source == cycle.source
    assert closed.detail == (
        f"corsia first_phase (2024-2026) had to be met by 2028-01-31; a use for {year} "
        "decided on 2028-02-01 is after it"
    )
    assert closed.detail_value("surrender_deadline") == "2028-01-31"
    # The first phase's own conditions are still reported with it, every violation listed.
    untagged = corsia_unit(labels=frozenset())
    bare = TransferFacts(Use.CORSIA, (untagged,), "CN", compliance_year=year)
    assert evaluate_transfer(pack, bare, date(2028, 2, 1)).rule_ids == (
        "CR-CORSIA-0007",
        CYCLE_CLOSED,
    )


def test_the_first_phase_closes_for_an_obligation_named_through_its_entity_too() -> None:
    pack = load_builtin("corsia")
    airline = EntityYear("AIRLINE-1", 2026, verified_emissions=100_000, allowances_due=0)
    late = evaluate_surrender(pack, airline, [corsia_unit()], date(2028, 2, 1))
    # evaluate_surrender asks for compliance use, which the CORSIA pack does not provide.
    assert late.rule_ids == (USE_NOT_SUPPORTED, CYCLE_CLOSED)
    facts = TransferFacts(Use.CORSIA, (corsia_unit(),), "CN", airline)
    assert evaluate_transfer(pack, facts, date(2028, 2, 1)).rule_ids == (CYCLE_CLOSED,)
    assert evaluate_transfer(pack, facts, date(2028, 1, 31)).allowed


@pytest.mark.parametrize("year", [2021, 2022, 2023])
def test_a_pilot_obligation_is_decided_under_the_pilot_rules_until_31_january_2025(
    year: int,
) -> None:
    pack = load_builtin("corsia")
    cycle = pack.cycle_for(year)
    assert cycle is not None
    assert (cycle.name, cycle.surrender_deadline) == ("pilot_phase", date(2025, 1, 31))
    assert cycle.confidence is Confidence.SECONDARY
    pilot_unit = Block(
        BlockRef("VCS", "", 1, 500),
        Project("VCS", "2250", "IN", project_type="solar", start_date=date(2016, 5, 1)),
        Period(date(2019, 1, 1), date(2019, 12, 31)),
    )
    facts = TransferFacts(Use.CORSIA, (pilot_unit,), "CN", compliance_year=year)
    on_time = evaluate_transfer(pack, facts, date(2025, 1, 31))
    assert on_time.allowed, on_time.violations
    assert on_time.pack_version == date(2021, 1, 1)
    assert evaluate_transfer(pack, facts, date(2025, 2, 1)).rule_ids == (CYCLE_CLOSED,)


def test_a_second_phase_obligation_is_not_held_to_the_first_phase_deadline() -> None:
    pack = load_builtin("corsia")
    facts = TransferFacts(Use.CORSIA, (corsia_unit(),), "CN", compliance_year=2027)
    assert evaluate_transfer(pack, facts, date(2028, 2, 1)).rule_ids == ("CR-CORSIA-0008",)


_REFUSING_PACK = """
pack: refusing
title: A phase without an eligibility list
rule_id_prefix: CR-DEMO-
role: scheme
versions:
  - effective_from: 2027-01-01
    description: A phase whose eligible-units list is not in the pack.
    uses: [corsia]
    gwp: {report: IPCC AR5, horizon_years: 100, confidence: unconfirmed, note: n}
    rules:
      - id: CR-DEMO-0001
        kind: use_refused
        message: No eligible-units list for the phase
        source: {document: d, clause: c, confidence: secondary}
        uses: [corsia]
        params: {missing: the phase's eligible-units list}
"""


def test_a_use_refused_rule_refuses_every_unit_and_names_what_is_missing() -> None:
    pack = load_pack_text(_REFUSING_PACK, origin="refusing")
    vcs = Block(BlockRef("VCS", "", 1, 10), Project("VCS", "1748", "ID"), YEAR)
    blocks = (ccer(1, 10), vcs)
    decision = evaluate_transfer(pack, TransferFacts(Use.CORSIA, blocks, "CN"), date(2027, 1, 1))
    assert not decision.allowed
    assert [(v.rule_id, v.blocks) for v in decision.violations] == [
        ("CR-DEMO-0001", (BlockRef("CCER", "", 1, 10),)),
        ("CR-DEMO-0001", (BlockRef("VCS", "", 1, 10),)),
    ]
    assert decision.violations[0].detail == (
        "CCER project CCER-1 (2022-01-01..2022-12-31): no unit can be shown eligible for "
        "corsia under the version in force from 2027-01-01: the pack does not hold the "
        "phase's eligible-units list (refused until it is added)"
    )
    listing = evaluate_listing(pack, ListingFacts(GANSU_WIND, (YEAR,)), date(2027, 1, 1))
    (corsia,) = listing.uses
    assert not corsia.eligible
    assert [v.rule_id for v in corsia.violations] == ["CR-DEMO-0001"]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "blocks"),
        ({"blocks": [{"serial_start": 1}]}, "blocks[0].project"),
        (
            {
                "blocks": [
                    {
                        "serial_start": 1,
                        "serial_end": 0,
                        "vintage_start": "2020-01-01",
                        "vintage_end": "2020-12-31",
                        "project": {"program": "VCS", "project_id": "1", "country": "KE"},
                    }
                ]
            },
            "blocks[0].serial_end",
        ),
        (
            {
                "blocks": [
                    {
                        "serial_start": 1,
                        "serial_end": 2,
                        "quantity": 3,
                        "vintage_start": "2020-01-01",
                        "vintage_end": "2020-12-31",
                        "project": {"program": "VCS", "project_id": "1", "country": "KE"},
                    }
                ]
            },
            "blocks[0].quantity",
        ),
        (
            {
                "blocks": [
                    {
                        "serial_start": 1,
                        "serial_end": 2.0,
                        "vintage_start": "2020-01-01",
                        "vintage_end": "2020-12-31",
                        "project": {"program": "VCS", "project_id": "1", "country": "KE"},
                    }
                ]
            },
            "blocks[0].serial_end",
        ),
        (
            {
                "blocks": [
                    {
                        "serial_start": 1,
                        "serial_end": 2,
                        "vintage_start": "2020-13-01",
                        "vintage_end": "2020-12-31",
                        "project": {"program": "VCS", "project_id": "1", "country": "KE"},
                    }
                ]
            },
            "blocks[0].vintage_start",
        ),
        (
            {
                "blocks": [
                    {
                        "serial_start": 1,
                        "serial_end": 2,
                        "vintage_start": "2020-01-01",
                        "vintage_end": "2020-12-31",
                        "ca_status": "done",
                        "project": {"program": "VCS", "project_id": "1", "country": "KEN"},
                    }
                ]
            },
            "blocks[0].project.country",
        ),
        ({"blocks": [], "entity": {"entity_id": "E"}}, "entity.compliance_year"),
        ({"blocks": [], "compliance_year": 1800}, "compliance_year"),
        (
            {
                "blocks": [],
                "compliance_year": 2023,
                "entity": {
                    "entity_id": "E",
                    "compliance_year": 2024,
                    "verified_emissions": 1,
                    "allowances_due": 1,
                },
            },
            "compliance_year",
        ),
        ({"blocks": [], "colour": "red"}, "colour"),
    ],
)
def test_bad_facts_name_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(FactsError) as info:
        parse_transfer(document, "compliance")
    assert info.value.field == field


_ENTITY_DOC = {
    "entity_id": "E",
    "compliance_year": 2024,
    "verified_emissions": 1,
    "allowances_due": 1,
}


def test_facts_may_name_an_obligation_year_without_an_entity() -> None:
    facts = parse_transfer({"blocks": [], "compliance_year": 2026}, "corsia")
    assert (facts.entity, facts.compliance_year, facts.obligation_year) == (None, 2026, 2026)
    with_entity = parse_transfer({"blocks": [], "entity": {**_ENTITY_DOC}}, "compliance")
    assert (with_entity.compliance_year, with_entity.obligation_year) == (None, 2024)


def test_unknown_use_is_a_facts_error() -> None:
    with pytest.raises(FactsError) as info:
        parse_transfer({"blocks": []}, "hoarding")
    assert info.value.field == "use"


# --- invariants ----------------------------------------------------------------------------

_programs = st.sampled_from(["CCER", "VCS", "CEA", "SZA"])
_types = st.sampled_from(["wind", "hydro", "solar_thermal", "energy_efficiency"])


@st.composite
def _blocks(draw: st.DrawFn) -> Block:
    program = draw(_programs)
    start = draw(st.integers(0, 200))
    end = start + draw(st.integers(0, 60))
    project = Project(
        program,
        draw(st.sampled_from(["P1", "P2"])),
        draw(st.sampled_from(["CN", "KE"])),
        draw(st.sampled_from(["Gansu", "Guangdong"])),
        project_type=draw(_types),
        construction_start=draw(st.sampled_from([None, date(2011, 1, 1), date(2016, 1, 1)])),
    )
    return Block(
        BlockRef(program, "", start, end),
        project,
        YEAR,
        ca_status=draw(st.sampled_from(list(CaStatus))),
        gec_status=draw(st.sampled_from([GecStatus.NONE, GecStatus.TRADED])),
    )


_known = st.builds(
    lambda program, start, length, status: KnownBlock(
        BlockRef(program, "", start, start + length), status
    ),
    _programs,
    st.integers(0, 200),
    st.integers(0, 30),
    st.sampled_from(list(HoldingStatus)),
)


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.lists(_blocks(), min_size=1, max_size=6),
    known=st.lists(_known, max_size=5),
    used=st.integers(0, 6_000),
    pack=st.sampled_from(["national", "shenzhen", "guangdong"]),
    data=st.data(),
)
def test_decision_does_not_depend_on_the_order_of_facts(
    blocks: list[Block], known: list[KnownBlock], used: int, pack: str, data: st.DataObject
) -> None:
    the_entity = entity(offsets_surrendered=(OffsetUse("CCER", used, "CN", "Guangdong"),))
    facts = TransferFacts(Use.COMPLIANCE, tuple(blocks), "CN", the_entity, tuple(known))
    shuffled = dataclasses.replace(
        facts,
        blocks=tuple(data.draw(st.permutations(blocks))),
        known_blocks=tuple(data.draw(st.permutations(known))),
    )
    first = evaluate_transfer(load_builtin(pack), facts, CLOCK)
    second = evaluate_transfer(load_builtin(pack), shuffled, CLOCK)
    assert first == second
    assert first.allowed is (not first.violations)


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(_blocks(), min_size=1, max_size=5), extra=_blocks())
def test_adding_a_block_never_removes_a_violation(blocks: list[Block], extra: Block) -> None:
    """Deny-overrides is monotone: more units can only add reasons to refuse."""
    pack = load_builtin("national")
    facts = TransferFacts(Use.COMPLIANCE, tuple(blocks), "CN", entity())
    before = evaluate_transfer(pack, facts, CLOCK)
    after = evaluate_transfer(pack, dataclasses.replace(facts, blocks=(*blocks, extra)), CLOCK)
    assert set(before.rule_ids) <= set(after.rule_ids)


@given(share_used=st.integers(0, 10_000), asked=st.integers(1, 10_000))
def test_offset_limit_boundary(share_used: int, asked: int) -> None:
    the_entity = entity(offsets_surrendered=(OffsetUse("CCER", share_used),))
    decision = evaluate_surrender(load_builtin("national"), the_entity, [ccer(1, asked)], CLOCK)
    assert ("CR-NAT-0002" in decision.rule_ids) is (share_used + asked > 5_000)


# --- purity and API ------------------------------------------------------------------------

PACKAGE = Path(compliance_rules.__file__).parent


def test_package_imports_nothing_from_the_layers_above() -> None:
    forbidden = ("gateway", "adapters", "registry_bridge", "grpc", "sqlalchemy")
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_rules_never_read_the_clock() -> None:
    for name in ("checks.py", "rules.py", "engine.py"):
        text = (PACKAGE / name).read_text(encoding="utf-8")
        assert "today(" not in text and "now(" not in text, name


def test_public_api_is_pinned() -> None:
    assert sorted(compliance_rules.__all__) == sorted(
        [
            "BUILTIN_PACKS",
            "Authorization",
            "Block",
            "BlockRef",
            "CaStatus",
            "ComplianceRulesError",
            "Confidence",
            "Decision",
            "Disposition",
            "DocumentError",
            "EngineInvariantError",
            "EntityYear",
            "FactsError",
            "GecStatus",
            "HoldingStatus",
            "Issue",
            "KnownBlock",
            "ListingDecision",
            "ListingFacts",
            "MigrationRules",
            "NoVersionInForceError",
            "OffsetLimitStatus",
            "OffsetUse",
            "PackError",
            "PackInvalidError",
            "PackNotFoundError",
            "Period",
            "Project",
            "Registration",
            "RulePack",
            "Source",
            "TransferFacts",
            "Use",
            "UseEligibility",
            "Violation",
            "co2e",
            "evaluate_listing",
            "evaluate_surrender",
            "evaluate_transfer",
            "load_builtin",
            "load_pack",
            "offset_limits",
            "parse_listing",
            "parse_transfer",
        ]
    )
    for name in compliance_rules.__all__:
        assert hasattr(compliance_rules, name)


def test_errors_share_one_root() -> None:
    for name in (
        "DocumentError",
        "FactsError",
        "PackInvalidError",
        "PackNotFoundError",
        "NoVersionInForceError",
        "EngineInvariantError",
    ):
        assert issubclass(getattr(compliance_rules, name), compliance_rules.ComplianceRulesError)


def test_a_listing_the_packs_listing_rules_refuse_is_refused_whatever_else_is_eligible() -> None:
    # SZA are eligible for compliance in Shenzhen but not accepted for listing
    # (CR-SZ-0009): the listing use decides whether the project enters the market.
    sza = Project("SZA", "SZA-2023", "CN", "Guangdong", "Shenzhen")
    decision = evaluate_listing(load_builtin("shenzhen"), ListingFacts(sza, (YEAR,)), CLOCK)
    assert decision.refused
    assert [v.rule_id for v in decision.refusals] == ["CR-SZ-0009"]
    assert decision.eligible_uses == ()
    for use in decision.uses:
        assert "CR-SZ-0009" in [v.rule_id for v in use.violations]


def test_a_market_whose_pack_provides_no_listing_lists_nothing() -> None:
    # Before the 2023 plan the Shenzhen pack has only compliance: no rule admits a
    # project to be held and traded there, so a market lists none (fail closed); the
    # engine asked per use, not as a market, still answers per use.
    ccer_wind = Project("CCER", "CCER-1", "CN", "Guangdong", "Meizhou", project_type="wind")
    facts, day = ListingFacts(ccer_wind, (YEAR,)), date(2023, 1, 1)
    decision = evaluate_listing(load_builtin("shenzhen"), facts, day, market=True)
    assert decision.refused
    assert [v.rule_id for v in decision.refusals] == ["CR-ENGINE-0002"]
    assert decision.eligible_uses == ()
    assert not evaluate_listing(load_builtin("shenzhen"), facts, day).refused
