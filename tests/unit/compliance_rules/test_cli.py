"""The ``carbonlink rules`` commands, called in-process."""

from __future__ import annotations

import argparse
import io
import json
from datetime import date
from pathlib import Path

import pytest

import compliance_rules
from gateway import cli_rules, rule_names

FACTS = """
entity: {entity_id: E-1, compliance_year: 2024, verified_emissions: 110000,
         allowances_due: 100000}
blocks:
  - serial_start: 1
    serial_end: 6000
    vintage_start: 2022-01-01
    vintage_end: 2022-12-31
    project: {program: CCER, project_id: C-1, country: CN, region: Gansu,
              project_type: wind, construction_start: 2015-01-01}
"""


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="carbonlink")
    cli_rules.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["rules", *argv])


def _run(*argv: str) -> tuple[int, str, str]:
    args = _parse(*argv)
    out, err = io.StringIO(), io.StringIO()
    code: int = args.handler(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_validate_builtin_packs() -> None:
    code, out, err = _run(
        "validate",
        "shenzhen",
        "national",
        "guangdong",
        "hkmo",
        "corsia",
        "article6-bri",
        "baseline",
    )
    assert code == 0, err
    assert out.count("valid (") == 7


def test_validate_reports_every_error_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pack: Bad Name\ntitle: t\nrule_id_prefix: CR-X-\nrole: scheme\n"
        "versions:\n  - {effective_from: 2020-01-01, description: d, uses: [compliance],\n"
        "     gwp: {report: AR5, horizon_years: 100, confidence: sure, note: n},\n"
        "     rules: []}\n",
        encoding="utf-8",
    )
    code, out, err = _run("validate", "shenzhen", str(bad))
    assert code == 1
    assert "shenzhen: valid" in out
    assert "$.pack:" in err
    assert "$.versions[0].gwp.report:" in err
    assert "$.versions[0].gwp.confidence:" in err
    assert "invalid (3 error(s))" in err


def test_validate_unknown_pack(tmp_path: Path) -> None:
    code, _, err = _run("validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "neither a built-in rule pack" in err


def test_a_pack_or_facts_file_that_is_not_utf8_text_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "export.yaml"
    binary.write_bytes(b"\xff\xfe\x00binary")
    code, _, err = _run("validate", str(binary))
    assert code == 1
    assert f"cannot read rule pack {binary}: not UTF-8 text" in err
    code, _, err = _run(
        "evaluate", "--pack", "shenzhen", "--use", "compliance", "--facts", str(binary)
    )
    assert code == 2
    assert f"cannot read {binary}: not UTF-8 text" in err


def test_evaluate_json_denial(tmp_path: Path) -> None:
    facts = tmp_path / "facts.yaml"
    facts.write_text(FACTS, encoding="utf-8")
    code, out, err = _run(
        "evaluate",
        "--pack",
        "national",
        "--use",
        "compliance",
        "--facts",
        str(facts),
        "--clock",
        "2025-06-01",
        "--json",
    )
    assert code == 1, err
    view = json.loads(out)
    assert view["allowed"] is False
    (violation,) = view["violations"]
    assert violation["rule_id"] == "CR-NAT-0002"
    assert violation["source"]["document"]
    assert violation["message"]
    assert violation["details"]["limit"] == 5000
    assert violation["details"]["asked"] == 6000


def test_evaluate_json_facts_allowed(tmp_path: Path) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(
        json.dumps(
            {
                "blocks": [
                    {
                        "serial_start": 1,
                        "serial_end": 10,
                        "vintage_start": "2019-01-01",
                        "vintage_end": "2019-12-31",
                        "project": {"program": "VCS", "project_id": "1060", "country": "ID"},
                    }
                ],
                "destination_country": "HK",
            }
        ),
        encoding="utf-8",
    )
    code, out, err = _run(
        "evaluate",
        "--pack",
        "hkmo",
        "--use",
        "listing",
        "--facts",
        str(facts),
        "--clock",
        "2024-01-01",
    )
    assert code == 0, err
    assert out.startswith("ALLOWED by hkmo")


def test_evaluate_defaults_the_clock_at_the_edge(tmp_path: Path) -> None:
    facts = tmp_path / "facts.yaml"
    facts.write_text(FACTS, encoding="utf-8")
    args = _parse(
        "evaluate",
        "--pack",
        "national",
        "--use",
        "voluntary_retirement",
        "--facts",
        str(facts),
        "--json",
    )
    out = io.StringIO()
    code = cli_rules.handle_evaluate(args, stdout=out, stderr=io.StringIO(), today=date(2025, 1, 1))
    assert code == 1
    assert json.loads(out.getvalue())["violations"][0]["rule_id"] == "CR-ENGINE-0002"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("blocks: [{serial_start: -1}]", "field blocks[0].project"),
        (
            "blocks:\n  - {serial_start: x, serial_end: 2, vintage_start: 2020-01-01,\n"
            "     vintage_end: 2020-01-02, project: {program: VCS, project_id: a, country: KE}}",
            "field blocks[0].serial_start",
        ),
        ("entity: {}\nblocks: []", "field entity."),
        ("blocks: [unclosed", "not valid YAML"),
    ],
)
def test_evaluate_bad_facts_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    facts = tmp_path / "facts.yaml"
    facts.write_text(content, encoding="utf-8")
    code, out, err = _run(
        "evaluate",
        "--pack",
        "national",
        "--use",
        "compliance",
        "--facts",
        str(facts),
        "--clock",
        "2025-06-01",
    )
    assert code == 2
    assert needle in err
    assert out == ""


def test_evaluate_bad_arguments_exit_2(tmp_path: Path) -> None:
    facts = tmp_path / "facts.yaml"
    facts.write_text(FACTS, encoding="utf-8")
    base = ["evaluate", "--facts", str(facts)]
    assert _run(*base, "--pack", "mars", "--use", "compliance")[0] == 2
    assert _run(*base, "--pack", "national", "--use", "hoarding")[0] == 2
    assert _run(*base, "--pack", "national", "--use", "compliance", "--clock", "soon")[0] == 2
    early = tmp_path / "early.yaml"
    # 2018 is before the national ETS's first compliance cycle (2019-2020): no rules govern it.
    early.write_text(FACTS.replace("compliance_year: 2024", "compliance_year: 2018"), "utf-8")
    code, _, err = _run(
        "evaluate",
        "--facts",
        str(early),
        "--pack",
        "national",
        "--use",
        "compliance",
        "--clock",
        "2025-06-01",
    )
    assert code == 2 and "no version in force on 2018-12-31" in err
    missing = _run(
        "evaluate",
        "--pack",
        "national",
        "--use",
        "compliance",
        "--facts",
        str(tmp_path / "none.yaml"),
    )
    assert missing[0] == 2 and "cannot read" in missing[2]


def test_evaluate_decides_the_national_first_cycle_under_the_2021_measures(
    tmp_path: Path,
) -> None:
    facts = tmp_path / "first-cycle.yaml"
    facts.write_text(FACTS.replace("compliance_year: 2024", "compliance_year: 2019"), "utf-8")
    code, out, err = _run(
        "evaluate",
        *("--facts", str(facts), "--pack", "national", "--use", "compliance"),
        *("--clock", "2021-12-01", "--json"),
    )
    assert code == 1, err  # denied on its merits: 6,000 CCER exceed 5% of 100,000 due
    decision = json.loads(out)
    assert decision["pack_version"] == "2021-02-01"
    assert [v["rule_id"] for v in decision["violations"]] == ["CR-NAT-0002"]
    assert "national:first_compliance_cycle" not in decision["unconfirmed_params"]


def _listing(tmp_path: Path, project: str, *argv: str) -> tuple[int, str, str]:
    """``rules evaluate --listing`` of a project file as ``project list`` sends it."""
    facts = tmp_path / "project.yaml"
    facts.write_text(project, encoding="utf-8")
    return _run(
        "evaluate",
        "--facts",
        str(facts),
        "--clock",
        "2024-06-01",
        "--listing",
        "--json",
        *argv,
    )


def test_evaluate_listing(tmp_path: Path) -> None:
    code, out, err = _listing(
        tmp_path,
        "program: VCS\nproject_id: '1060'\ncountry: CN\nproject_type: wind\n"
        "crediting_period_start: 2021-01-01\ncrediting_period_end: 2021-12-31\n"
        "other_registrations:\n  - {program: CCER, project_id: C-9,\n"
        "     issued_period_start: 2021-03-01, issued_period_end: 2021-04-01}\n",
        "--pack",
        "shenzhen",
    )
    assert code == 1, err
    view = json.loads(out)
    assert view["refused"] is True
    assert view["refusals"][0]["rule_id"] == "CR-DC-0002"


def test_a_listed_region_is_placed_as_listproject_places_it(tmp_path: Path) -> None:
    # The command read a listing's region as it was written, the gateway as the packs name
    # places: a wind project declared in CN-GS (Gansu, on Shenzhen's renewable origin list)
    # was not eligible for compliance offline and eligible through ListProject.
    code, out, err = _listing(
        tmp_path,
        "program: CCER\nproject_id: GS-WIND-1\ncountry: CN\nregion: CN-GS\n"
        "project_type: wind\nstart_date: 2016-03-01\nconstruction_start: 2015-06-01\n"
        "crediting_period_start: 2024-01-01\ncrediting_period_end: 2024-12-31\n",
        "--pack",
        "shenzhen",
    )
    assert code == 0, err
    uses = {u["use"]: u for u in json.loads(out)["uses"]}
    assert uses["compliance"]["eligible"] is True, uses["compliance"]


@pytest.mark.parametrize(
    ("project", "needle"),
    [
        (
            "program: VCS\nproject_id: p\ncountry: BR\ncrediting_period_start: 2024-02-01\n"
            "crediting_period_end: 2024-01-01\n",
            "project.crediting_period_end: 2024-01-01 is before crediting_period_start",
        ),
        ("program: VCS\nproject_id: p\ncountry: br\n", "project.country"),
        ("program: VCS\nproject_id: p\nperiods: []\n", "periods"),
        ("- not a project\n", "a project is a mapping of Project's fields"),
    ],
    ids=["period", "country", "unknown-field", "not-a-mapping"],
)
def test_a_bad_listing_is_named_as_listproject_names_it(
    tmp_path: Path, project: str, needle: str
) -> None:
    code, out, err = _listing(tmp_path, project, "--pack", "shenzhen")
    assert (code, out) == (2, ""), err
    assert needle in err, err


def test_use_means_nothing_to_a_listing_and_is_refused_with_it(tmp_path: Path) -> None:
    # A listing is decided for every use of the pack (ListProject takes no use): --use was
    # required with --listing, checked, and then ignored.
    project = "program: VCS\nproject_id: p\ncountry: BR\n"
    code, out, err = _listing(tmp_path, project, "--pack", "hkmo", "--use", "compliance")
    assert (code, out) == (2, ""), err
    assert "--use: means nothing with --listing" in err, err
    code, out, err = _listing(tmp_path, project, "--pack", "hkmo")
    assert code == 1, err  # no crediting period: refused (fail closed), but decided
    assert {u["use"] for u in json.loads(out)["uses"]} == {"listing", "voluntary_retirement"}


def test_a_transfer_still_needs_its_use(tmp_path: Path) -> None:
    facts = tmp_path / "facts.yaml"
    facts.write_text(FACTS, encoding="utf-8")
    code, out, err = _run("evaluate", "--pack", "national", "--facts", str(facts))
    assert (code, out) == (2, ""), err
    assert "--use is required" in err, err


def test_the_readme_example_is_denied_over_the_national_ccer_limit() -> None:
    example = Path(__file__).parents[3] / "compliance_rules/examples/ccer-surrender-national.yaml"
    code, out, _ = _run(
        "evaluate",
        "--pack",
        "national",
        "--use",
        "compliance",
        "--clock",
        "2025-06-30",
        "--facts",
        str(example),
        "--json",
    )
    decision = json.loads(out)
    assert code == 1
    assert decision["allowed"] is False
    (violation,) = decision["violations"]
    assert violation["rule_id"] == "CR-NAT-0002"
    assert violation["details"] == {
        "limit": 5000,
        "already_used": 0,
        "asked": 6000,
        "share": "0.05",
        "basis": "allowances_due",
    }


def test_the_help_lists_the_packs_and_uses_the_engine_knows() -> None:
    # The help's lists are spelt out so that parsing loads no engine: they must stay the
    # engine's own, in its order.
    assert rule_names.BUILTIN_PACKS == compliance_rules.BUILTIN_PACKS
    assert tuple(use.value for use in compliance_rules.Use) == rule_names.USES
