"""Pack loading: schema checks, semantic checks, version choice, every error reported."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compliance_rules import (
    BUILTIN_PACKS,
    Block,
    BlockRef,
    Confidence,
    EntityYear,
    NoVersionInForceError,
    PackInvalidError,
    PackNotFoundError,
    Period,
    Project,
    Source,
    TransferFacts,
    Use,
    evaluate_surrender,
    evaluate_transfer,
    load_builtin,
    load_pack,
    offset_limits,
)
from compliance_rules.loader import (
    build_gwp_catalog,
    build_pack,
    load_gwp_catalog,
    pack_schema,
    parse_document,
)
from compliance_rules.rules import CYCLE_CLOSED


def _minimal() -> dict[str, Any]:
    return {
        "pack": "demo",
        "title": "Demo",
        "rule_id_prefix": "CR-DEMO-",
        "role": "scheme",
        "versions": [
            {
                "effective_from": "2020-01-01",
                "description": "first",
                "uses": ["compliance"],
                "parameters": {
                    "share": {"value": Decimal("0.05"), "confidence": "secondary", "note": "n"},
                    "unknown": {"value": None, "confidence": "unconfirmed", "note": "not found"},
                },
                "gwp": {
                    "report": "IPCC AR5",
                    "horizon_years": 100,
                    "confidence": "unconfirmed",
                    "note": "n",
                },
                "rules": [
                    {
                        "id": "CR-DEMO-0001",
                        "kind": "accepted_programs",
                        "message": "m",
                        "source": {"document": "d", "clause": "c", "confidence": "secondary"},
                        "uses": ["compliance"],
                        "params": {"programs": ["CCER"]},
                    },
                    {
                        "id": "CR-DEMO-0002",
                        "kind": "offset_limit",
                        "message": "m",
                        "source": {"document": "d", "clause": "c", "confidence": "secondary"},
                        "uses": ["compliance"],
                        "params": {
                            "basis": "allowances_due",
                            "share": {"param": "share"},
                            "strict": False,
                            "programs": ["CCER"],
                        },
                    },
                ],
            }
        ],
    }


def _issues(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(PackInvalidError) as info:
        build_pack(doc, origin="test")
    return [(i.path, i.message) for i in info.value.issues]


@pytest.mark.parametrize("name", BUILTIN_PACKS)
def test_builtin_packs_load(name: str) -> None:
    pack = load_builtin(name)
    assert pack.name == name
    assert pack.versions == tuple(sorted(pack.versions, key=lambda v: v.effective_from))
    for version in pack.versions:
        assert version.gwp.report.startswith("IPCC AR")
        assert version.gwp.values.factor("CO2") == 1
        assert version.gwp.values.report in version.gwp.catalog.known
        for rule in version.rules:
            assert rule.rule_id.startswith(pack.rule_id_prefix)
            assert rule.source.document and rule.source.clause


def test_minimal_pack_resolves_parameters_to_decimals() -> None:
    pack = build_pack(_minimal(), origin="test")
    (version,) = pack.versions
    assert version.rules[1].params["share"] == Decimal("0.05")
    assert isinstance(version.rules[1].params["share"], Decimal)


def test_reals_in_yaml_are_decimals_never_floats() -> None:
    doc = parse_document("a: 0.1\nb: [1.5, 2]\nc: 2023-01-01\n")
    assert doc == {"a": Decimal("0.1"), "b": [Decimal("1.5"), 2], "c": "2023-01-01"}
    assert parse_document('{"a": 0.1}', json_only=True) == {"a": Decimal("0.1")}


def test_every_schema_error_is_reported_with_its_path() -> None:
    doc = _minimal()
    del doc["title"]
    doc["versions"][0]["rules"][0]["kind"] = "no_such_kind"
    doc["versions"][0]["rules"][1]["id"] = "bad id"
    doc["versions"][0]["gwp"]["table"] = {"CO2": 1}  # values come from the GWP data only
    paths = {path for path, _ in _issues(doc)}
    assert {
        "$",
        "$.versions[0].rules[0].kind",
        "$.versions[0].rules[1].id",
        "$.versions[0].gwp",
    } <= paths


def test_a_gwp_report_must_be_in_the_gwp_data() -> None:
    doc = _minimal()
    doc["versions"][0]["gwp"]["report"] = "IPCC AR3"
    doc["versions"][0]["gwp"]["horizon_years"] = 20
    assert _issues(doc) == [
        (
            "$.versions[0].gwp.report",
            "'IPCC AR3' is not a report of the GWP data (known: AR2, AR4, AR5, AR6)",
        ),
        ("$.versions[0].gwp.horizon_years", "the GWP data holds 100-year values only"),
    ]


def test_the_gwp_data_is_sourced_decimal_and_schema_checked() -> None:
    catalog = load_gwp_catalog()
    assert catalog.known == ("AR2", "AR4", "AR5", "AR6")
    assert catalog.find("SAR") is catalog.find("ipcc ar2") is catalog.reports["AR2"]
    assert catalog.find("TAR") is None and catalog.find("") is None
    for report in catalog.reports.values():
        assert report.source.document and report.source.url
        assert all(isinstance(v, Decimal) for v in report.table.values())
        assert report.factor("CO2") == 1
    assert catalog.reports["AR6"].factor("ch4") == Decimal("27.9")
    assert catalog.reports["AR5"].factor("hfc134a") == 1300
    assert catalog.reports["AR2"].factor("NF3") is None
    doc = parse_document(
        "horizon_years: 100\ncompilation: {document: d, clause: c, confidence: sure}\n"
        "reports: {AR5: {title: t, aliases: [], source: {document: d, clause: c,\n"
        "  confidence: secondary}, table: {CO2: 2, CH4: -1}}}\n"
    )
    with pytest.raises(PackInvalidError) as info:
        build_gwp_catalog(doc, origin="gwp")
    assert {i.path for i in info.value.issues} == {
        "$.compilation.confidence",
        "$.reports.AR5.table.CO2",
        "$.reports.AR5.table.CH4",
    }


def test_semantic_errors_are_all_reported() -> None:
    doc = _minimal()
    version = doc["versions"][0]
    version["effective_from"] = "2020-02-30"
    version["rules"][1]["params"]["share"] = {"param": "nope"}
    version["rules"][1]["id"] = "CR-DEMO-0001"
    version["rules"][0]["uses"] = ["corsia"]
    found = _issues(doc)
    paths = [p for p, _ in found]
    assert "$.versions[0].effective_from" in paths
    assert "$.versions[0].rules[1].params.share" in paths
    assert "$.versions[0].rules[1].id" in paths
    assert "$.versions[0].rules[0].uses" in paths
    assert "$.versions[0].rules" in paths  # no accepted_programs rule left for compliance


def test_a_rule_may_not_use_an_unknown_figure() -> None:
    doc = _minimal()
    doc["versions"][0]["rules"][1]["params"]["share"] = {"param": "unknown"}
    messages = [m for p, m in _issues(doc) if p == "$.versions[0].rules[1].params.share"]
    assert any("unknown" in m for m in messages)


def test_kind_params_are_checked_after_resolution() -> None:
    doc = _minimal()
    doc["versions"][0]["parameters"]["share"]["value"] = Decimal("1.5")
    assert ("$.versions[0].rules[1].params.share") in {p for p, _ in _issues(doc)}


def test_versions_must_ascend() -> None:
    doc = _minimal()
    doc["versions"].append(copy.deepcopy(doc["versions"][0]))
    assert ("$.versions[1].effective_from") in {p for p, _ in _issues(doc)}


def test_unconfirmed_parameters_are_carried_by_rules() -> None:
    pack = load_builtin("shenzhen")
    limit = next(r for r in pack.version_for(date(2023, 12, 31)).rules if r.rule_id == "CR-SZ-0006")
    assert limit.unconfirmed_params == ("offset_limit_programs", "offset_limit_share")
    figure = pack.version_for(date(2023, 12, 31)).parameters["offset_limit_share"]
    assert figure.confidence is Confidence.UNCONFIRMED


def test_every_unknown_figure_is_marked_unconfirmed() -> None:
    for name in BUILTIN_PACKS:
        for version in load_builtin(name).versions:
            for parameter in version.parameters.values():
                if parameter.value is None:
                    assert parameter.confidence is Confidence.UNCONFIRMED, parameter.name


def test_version_for_picks_the_rules_in_force() -> None:
    pack = load_builtin("shenzhen")
    assert pack.version_for(date(2022, 6, 30)).effective_from == date(2015, 6, 2)
    assert pack.version_for(date(2022, 7, 1)).effective_from == date(2022, 7, 1)
    with pytest.raises(NoVersionInForceError):
        pack.version_for(date(2015, 6, 1))


def test_load_pack_by_path_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("pack: [unclosed\n", encoding="utf-8")
    with pytest.raises(PackInvalidError) as info:
        load_pack(str(path))
    assert info.value.issues[0].path == "$"
    assert isinstance(info.value.__cause__, Exception)
    with pytest.raises(PackNotFoundError):
        load_pack(str(tmp_path / "missing.yaml"))
    with pytest.raises(PackNotFoundError):
        load_builtin("atlantis")


def test_schema_is_a_valid_2020_12_schema() -> None:
    assert pack_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _refusing() -> dict[str, Any]:
    """The minimal pack whose compliance use is refused outright instead of listing programs."""
    doc = _minimal()
    doc["versions"][0]["rules"][0] = {
        "id": "CR-DEMO-0001",
        "kind": "use_refused",
        "message": "m",
        "source": {"document": "d", "clause": "c", "confidence": "secondary"},
        "uses": ["compliance"],
        "params": {"missing": "the phase's eligible-units list"},
    }
    return doc


def test_a_use_refused_rule_decides_a_use_in_place_of_accepted_programs() -> None:
    (version,) = build_pack(_refusing(), origin="test").versions
    refusal = version.rules[0]
    assert (refusal.kind, dict(refusal.params)) == (
        "use_refused",
        {"missing": "the phase's eligible-units list"},
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ("$.versions[0].rules[0].params", "'missing' is a required property")),
        ({"missing": ""}, ("$.versions[0].rules[0].params.missing", "'' should be non-empty")),
        (
            {"missing": "the list", "programs": ["VCS"]},
            (
                "$.versions[0].rules[0].params",
                "Additional properties are not allowed ('programs' was unexpected)",
            ),
        ),
        (
            {"missing": 7},
            ("$.versions[0].rules[0].params.missing", "7 is not of type 'string'"),
        ),
        (
            {"missing": {"param": "unknown"}},
            (
                "$.versions[0].rules[0].params.missing",
                "refers to parameter 'unknown' whose value is unknown (null)",
            ),
        ),
    ],
)
def test_use_refused_params_are_refused_naming_what_is_wrong(
    params: dict[str, Any], expected: tuple[str, str]
) -> None:
    doc = _refusing()
    doc["versions"][0]["rules"][0]["params"] = params
    assert expected in _issues(doc)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"label": "old"},
            ("$.versions[0].rules[2].params", "'last_day' is a required property"),
        ),
        (
            {"label": "old", "last_day": "31 Dec 2024"},
            (
                "$.versions[0].rules[2].params.last_day",
                "'31 Dec 2024' does not match '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'",
            ),
        ),
        (
            {"label": "", "last_day": "2024-12-31"},
            ("$.versions[0].rules[2].params.label", "'' should be non-empty"),
        ),
    ],
)
def test_a_label_use_until_rule_needs_a_label_and_a_last_day(
    params: dict[str, Any], expected: tuple[str, str]
) -> None:
    doc = _minimal()
    doc["versions"][0]["rules"].append(
        {
            "id": "CR-DEMO-0003",
            "kind": "block_label_use_until",
            "message": "m",
            "source": {"document": "d", "clause": "c", "confidence": "secondary"},
            "uses": ["compliance"],
            "params": params,
        }
    )
    assert expected in _issues(doc)


def test_a_use_is_not_both_accepted_and_refused() -> None:
    doc = _refusing()
    doc["versions"][0]["rules"].append(
        {**_minimal()["versions"][0]["rules"][0], "id": "CR-DEMO-0003"}
    )
    assert _issues(doc) == [
        (
            "$.versions[0].rules",
            "use 'compliance' has both an accepted_programs and a use_refused rule: "
            "a refused use accepts no program",
        )
    ]


def test_a_use_needs_an_accepted_programs_or_a_use_refused_rule() -> None:
    doc = _refusing()
    doc["versions"][0]["uses"] = ["compliance", "listing"]
    assert _issues(doc) == [
        ("$.versions[0].rules", "no accepted_programs or use_refused rule for use 'listing'")
    ]


def _cycle(**changes: Any) -> dict[str, Any]:
    cycle = {
        "name": "first_cycle",
        "first_year": 2019,
        "last_year": 2020,
        "surrender_deadline": "2021-12-31",
        "closes_at_deadline": False,
        "confidence": "unconfirmed",
        "note": "the scheme's first rules came into force after the years they governed",
        "source": {"document": "d", "clause": "c", "confidence": "secondary"},
    }
    return {**cycle, **changes}


def _with_cycles(*cycles: dict[str, Any]) -> dict[str, Any]:
    """A pack whose first version is in force from 2021-02-01 (5%), the next from 2023 (10%)."""
    doc = _minimal()
    first = doc["versions"][0]
    first["effective_from"] = "2021-02-01"
    second = copy.deepcopy(first)
    second["effective_from"] = "2023-01-01"
    second["parameters"]["share"]["value"] = Decimal("0.10")
    doc["versions"].append(second)
    doc["compliance_cycles"] = list(cycles)
    return doc


def test_a_cycles_years_are_decided_on_its_surrender_deadline() -> None:
    pack = build_pack(_with_cycles(_cycle()), origin="test")
    assert [pack.decision_day(y) for y in (2018, 2019, 2020, 2021, 2022)] == [
        date(2018, 12, 31),
        date(2021, 12, 31),
        date(2021, 12, 31),
        date(2021, 12, 31),
        date(2022, 12, 31),
    ]
    assert pack.version_for_year(2019).effective_from == date(2021, 2, 1)
    assert pack.version_for_year(2023).effective_from == date(2023, 1, 1)
    with pytest.raises(NoVersionInForceError, match="no version in force on 2018-12-31"):
        pack.version_for_year(2018)


def test_a_cycle_naming_its_rules_day_is_decided_on_it_not_on_its_deadline() -> None:
    """A cycle surrendered after a later version came into force keeps its own rules."""
    late = _cycle(first_year=2021, last_year=2022, surrender_deadline="2023-12-31")
    by_deadline = build_pack(_with_cycles(late), origin="test")
    assert by_deadline.decision_day(2022) == date(2023, 12, 31)
    assert by_deadline.version_for_year(2022).effective_from == date(2023, 1, 1)
    pack = build_pack(_with_cycles({**late, "rules_on": "2022-12-31"}), origin="test")
    (cycle,) = pack.cycles
    assert (cycle.rules_on, cycle.surrender_deadline) == (date(2022, 12, 31), date(2023, 12, 31))
    assert pack.decision_day(2021) == pack.decision_day(2022) == date(2022, 12, 31)
    assert pack.version_for_year(2022).effective_from == date(2021, 2, 1)
    year = EntityYear("E-1", 2022, verified_emissions=1_000, allowances_due=1_000)
    (status,) = offset_limits(pack, year)
    assert status.limit == 50  # the 2021 version's 5%, not the 2023 version's 10%


def test_a_cycle_says_whether_it_closes_at_its_deadline() -> None:
    open_cycle, closing = (
        build_pack(_with_cycles(_cycle(closes_at_deadline=flag)), origin="test").cycles[0]
        for flag in (False, True)
    )
    assert not open_cycle.closed_on(date(2030, 1, 1))
    assert not closing.closed_on(date(2021, 12, 31))
    assert closing.closed_on(date(2022, 1, 1))


def test_a_decision_for_a_cycle_year_names_the_cycle_when_it_is_unconfirmed() -> None:
    pack = build_pack(_with_cycles(_cycle()), origin="test")
    project = Project("CCER", "C-1", "CN")
    block = Block(
        BlockRef("CCER", "", 1, 60), project, Period(date(2019, 1, 1), date(2019, 12, 31))
    )
    year = EntityYear("E-1", 2019, verified_emissions=1_000, allowances_due=1_000)
    decision = evaluate_surrender(pack, year, [block], date(2025, 1, 1))
    assert decision.pack_version == date(2021, 2, 1)
    assert decision.rule_ids == ("CR-DEMO-0002",)  # 60 > 5% of 1,000 under the 2021 version
    assert decision.unconfirmed_params == ("demo:first_cycle",)
    assert decision.violations[0].unconfirmed_params == ("demo:first_cycle",)
    (status,) = offset_limits(pack, year)
    assert status.limit == 50
    sourced = build_pack(_with_cycles(_cycle(confidence="secondary")), origin="test")
    assert evaluate_surrender(sourced, year, [block], date(2025, 1, 1)).unconfirmed_params == ()


def _cycle_year_block() -> Block:
    project = Project("CCER", "C-1", "CN")
    return Block(BlockRef("CCER", "", 1, 50), project, Period(date(2019, 1, 1), date(2019, 12, 31)))


def test_a_use_for_a_closing_cycle_is_refused_after_its_deadline_with_the_cycles_source() -> None:
    pack = build_pack(
        _with_cycles(_cycle(closes_at_deadline=True, confidence="secondary")), origin="test"
    )
    year = EntityYear("E-1", 2019, verified_emissions=1_000, allowances_due=1_000)
    block = _cycle_year_block()
    on_the_deadline = evaluate_surrender(pack, year, [block], date(2021, 12, 31))
    assert on_the_deadline.allowed, on_the_deadline.violations
    late = evaluate_surrender(pack, year, [block], date(2022, 1, 1))
    assert late.rule_ids == (CYCLE_CLOSED,)
    assert late.pack_version == date(2021, 2, 1)  # still the cycle's rules, not the clock's
    (closed,) = late.violations
    assert closed.source == Source("d", "c", Confidence.SECONDARY)
    assert closed.blocks == (block.ref,)
    assert "demo first_cycle (2019-2020) had to be met by 2021-12-31" in closed.detail
    assert dict(closed.details) == {
        "cycle": "first_cycle",
        "surrender_deadline": "2021-12-31",
        "decided_on": "2022-01-01",
    }
    assert closed.unconfirmed_params == ()
    # A cycle that does not close decides a late surrender like any other.
    open_pack = build_pack(_with_cycles(_cycle(confidence="secondary")), origin="test")
    assert evaluate_surrender(open_pack, year, [block], date(2030, 1, 1)).allowed


def test_the_closing_of_an_unconfirmed_cycle_says_it_rests_on_it() -> None:
    pack = build_pack(_with_cycles(_cycle(closes_at_deadline=True)), origin="test")
    year = EntityYear("E-1", 2020, verified_emissions=1_000, allowances_due=1_000)
    late = evaluate_surrender(pack, year, [_cycle_year_block()], date(2022, 1, 1))
    (closed,) = late.violations
    assert closed.rule_id == CYCLE_CLOSED
    assert closed.unconfirmed_params == ("demo:first_cycle",)
    assert late.unconfirmed_params == ("demo:first_cycle",)


def test_an_obligation_year_without_an_entity_chooses_the_version_and_closes_the_cycle() -> None:
    pack = build_pack(_with_cycles(_cycle(closes_at_deadline=True)), origin="test")
    block = _cycle_year_block()
    # The year, not the clock, chooses the version: 2023's last day is under the 2023 version.
    named = TransferFacts(Use.COMPLIANCE, (block,), "CN", compliance_year=2023)
    assert evaluate_transfer(pack, named, date(2022, 6, 1)).pack_version == date(2023, 1, 1)
    for_2019 = TransferFacts(Use.COMPLIANCE, (block,), "CN", compliance_year=2019)
    late = evaluate_transfer(pack, for_2019, date(2022, 6, 1))
    assert late.pack_version == date(2021, 2, 1)
    assert CYCLE_CLOSED in late.rule_ids
    with pytest.raises(ValueError, match="compliance_year 2020 differs from the entity's 2019"):
        TransferFacts(
            Use.COMPLIANCE,
            (block,),
            "CN",
            EntityYear("E-1", 2019, verified_emissions=1, allowances_due=1),
            compliance_year=2020,
        )


@pytest.mark.parametrize(
    ("cycles", "expected"),
    [
        (
            [_cycle(first_year=2021, last_year=2020, surrender_deadline="2022-12-31")],
            ("$.compliance_cycles[0].last_year", "2020 is before first_year 2021"),
        ),
        (
            [_cycle(surrender_deadline="2020-12-31")],
            (
                "$.compliance_cycles[0].surrender_deadline",
                "2020-12-31 is not after the cycle's last year (2020): a cycle is surrendered "
                "after its years",
            ),
        ),
        (
            [_cycle(surrender_deadline="2021-01-31")],
            (
                "$.compliance_cycles[0].surrender_deadline",
                "no version is in force on 2021-01-31 (first version: 2021-02-01), so the "
                "cycle's years could not be decided",
            ),
        ),
        (
            [_cycle(surrender_deadline="2021-02-30")],
            (
                "$.compliance_cycles[0].surrender_deadline",
                "'2021-02-30' is not a valid calendar date",
            ),
        ),
        (
            [_cycle(), _cycle(name="second", first_year=2020, last_year=2021)],
            (
                "$.compliance_cycles[1]",
                "years 2020-2021 overlap those of compliance_cycles[0] (2019-2020): a year has "
                "one cycle",
            ),
        ),
        (
            [_cycle(), _cycle(first_year=2021, last_year=2022, surrender_deadline="2023-12-31")],
            ("$.compliance_cycles[1].name", "cycle 'first_cycle' is declared twice"),
        ),
        (
            [{k: v for k, v in _cycle().items() if k != "source"}],
            ("$.compliance_cycles[0]", "'source' is a required property"),
        ),
        (
            [{k: v for k, v in _cycle().items() if k != "closes_at_deadline"}],
            ("$.compliance_cycles[0]", "'closes_at_deadline' is a required property"),
        ),
        (
            [_cycle(rules_on="2022-01-01")],
            (
                "$.compliance_cycles[0].rules_on",
                "2022-01-01 is after the surrender deadline 2021-12-31: a cycle cannot be "
                "decided under rules that came after it closed",
            ),
        ),
        (
            [_cycle(rules_on="2021-01-31")],
            (
                "$.compliance_cycles[0].rules_on",
                "no version is in force on 2021-01-31 (first version: 2021-02-01), so the "
                "cycle's years could not be decided",
            ),
        ),
        (
            [_cycle(rules_on="2021-06-31")],
            ("$.compliance_cycles[0].rules_on", "'2021-06-31' is not a valid calendar date"),
        ),
    ],
)
def test_compliance_cycles_are_checked(
    cycles: list[dict[str, Any]], expected: tuple[str, str]
) -> None:
    assert expected in _issues(_with_cycles(*cycles))
