"""ListProject: a foreign issuer asks to list a project in a domestic market."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway.cli import main
from gateway.cli_project import _JURISDICTIONS
from registry_bridge.projects import DatabaseProjectRecords
from registry_bridge.rules_gate import PACK_BY_REGISTRY
from tests.integration.gateway.conftest import LiveGateway

LANDFILL = model_pb2.Project(
    program="VCS",
    project_id="5955",
    project_type="Waste handling and disposal",
    methodology="VMR0016",
    country="BR",
    start_date="2024-07-20",
    crediting_period_start="2024-07-20",
    crediting_period_end="2031-07-19",
)

SZA_PROJECT = model_pb2.Project(
    program="SZA",
    project_id="SZA-2023",
    country="CN",
    region="Guangdong/Shenzhen",
    start_date="2023-01-01",
    crediting_period_start="2023-01-01",
    crediting_period_end="2023-12-31",
)


def _ask(
    gateway: LiveGateway, request_id: str, project: model_pb2.Project, where: str = "shenzhen"
) -> gateway_pb2.ListProjectResponse:
    reply: gateway_pb2.ListProjectResponse = gateway.stub.ListProject(
        gateway_pb2.ListProjectRequest(request_id=request_id, project=project, jurisdiction=where),
        timeout=30,
    )
    return reply


def test_eligible_uses_are_listed_and_the_answer_is_idempotent(live_gateway: LiveGateway) -> None:
    reply = _ask(live_gateway, "listing-1", LANDFILL)
    assert reply.listed
    uses = {e.use: e.decision.allowed for e in reply.eligibility}
    assert uses["listing"] is True
    assert uses["voluntary_retirement"] is True
    assert _ask(live_gateway, "listing-1", LANDFILL) == reply
    other = model_pb2.Project()
    other.CopyFrom(LANDFILL)
    other.project_id = "5956"
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, "listing-1", other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_reductions_issued_under_another_program_are_refused(live_gateway: LiveGateway) -> None:
    project = model_pb2.Project()
    project.CopyFrom(LANDFILL)
    project.other_registrations.append(
        model_pb2.ProjectRegistration(
            program="CCER",
            project_id="CCER-1",
            issued_period_start="2025-01-01",
            issued_period_end="2025-12-31",
        )
    )
    reply = _ask(live_gateway, "listing-2", project)
    assert not reply.listed
    assert [v.rule_id for v in reply.refusals] == ["CR-DC-0002"]


def test_bad_dates_and_places_are_named(live_gateway: LiveGateway) -> None:
    project = model_pb2.Project()
    project.CopyFrom(LANDFILL)
    project.start_date = "20-07-2024"
    project.country = "Brazil"
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, "listing-3", project)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "project.start_date" in details
    assert "project.country" in details
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, "listing-4", LANDFILL, where="atlantis")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "jurisdiction" in (caught.value.details() or "")


@pytest.mark.parametrize("country", ["br", "12", "B1", "Br"])
def test_a_country_that_is_not_an_iso_code_is_refused_and_nothing_recorded(
    live_gateway: LiveGateway, country: str
) -> None:
    # Registries spell a host country as two upper-case letters (every serial codec checks
    # it): a listing's "br" would never match its units' BR, nor an authorization's host.
    project = model_pb2.Project()
    project.CopyFrom(LANDFILL)
    project.country = country
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, f"listing-country-{country}", project)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "project.country" in (caught.value.details() or "")
    assert DatabaseProjectRecords(live_gateway.server.bridge.sessions).get("VCS", "5955") is None

    project.country = "KH"
    project.authorization.CopyFrom(
        model_pb2.Authorization(
            letter_id="LoA-1", host_country=country, authorized_uses=["voluntary_retirement"]
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, f"listing-host-{country}", project)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "project.authorization.host_country" in (caught.value.details() or "")
    assert DatabaseProjectRecords(live_gateway.server.bridge.sessions).get("VCS", "5955") is None


def test_a_listed_projects_facts_are_recorded_for_its_transfers(live_gateway: LiveGateway) -> None:
    project = model_pb2.Project()
    project.CopyFrom(LANDFILL)
    project.construction_start = "2023-11-02"
    project.gec_status = "none"
    assert _ask(live_gateway, "listing-5", project).listed
    recorded = DatabaseProjectRecords(live_gateway.server.bridge.sessions).get("VCS", "5955")
    assert recorded is not None
    assert recorded.construction_start == date(2023, 11, 2)
    assert recorded.gec_status == "none"
    refused = model_pb2.Project()
    refused.CopyFrom(project)
    refused.project_id = "5999"
    refused.gec_status = "sold"
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, "listing-6", refused)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "project.gec_status" in (caught.value.details() or "")
    assert DatabaseProjectRecords(live_gateway.server.bridge.sessions).get("VCS", "5999") is None


def test_an_issuer_lists_a_project_from_the_command_line(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", live_gateway.target, "--insecure"]
    landfill = tmp_path / "landfill.yaml"
    landfill.write_text(
        "program: VCS\nproject_id: '5955'\nproject_type: Waste handling and disposal\n"
        "methodology: VMR0016\ncountry: BR\nstart_date: 2024-07-20\n"
        "crediting_period_start: 2024-07-20\ncrediting_period_end: 2031-07-19\n"
    )
    argv = ["project", "list", str(landfill), "--jurisdiction", "shenzhen"]
    assert main([*argv, "--as-of", "2026-11-26", *target]) == 0
    out = capsys.readouterr().out
    assert ": listed" in out and "voluntary_retirement: eligible" in out
    # Issued under CCER for part of the same period: refused, with the rule.
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        landfill.read_text().replace("project_id: '5955'", "project_id: '5957'")
        + "other_registrations:\n  - {program: CCER, project_id: CCER-1,\n"
        "     issued_period_start: 2025-01-01, issued_period_end: 2025-12-31}\n"
    )
    argv = ["project", "list", str(twice), "--jurisdiction", "shenzhen"]
    assert main([*argv, "--as-of", "2026-11-26", *target]) == 1
    assert "refused CR-DC-0002" in capsys.readouterr().out
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("program: VCS\nproject_idd: '1'\n")
    assert main(["project", "list", str(wrong), "--jurisdiction", "shenzhen", *target]) == 2
    assert "project_idd" in capsys.readouterr().err


def test_a_program_longer_than_the_ledger_stores_is_refused_by_its_field(
    live_gateway: LiveGateway,
) -> None:
    project = model_pb2.Project()
    project.CopyFrom(LANDFILL)
    project.program = "VCS-" + "X" * 20
    with pytest.raises(grpc.RpcError) as caught:
        _ask(live_gateway, "listing-long-program", project)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "project.program" in (caught.value.details() or "")


def test_the_command_line_offers_every_jurisdiction_the_server_lists_in(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI's choices were shenzhen, guangdong and national while the server also lists
    # in the Hong Kong/Macau venues and the Belt-and-Road registries: an issuer could not
    # ask for either from the command line.
    assert set(_JURISDICTIONS) == set(PACK_BY_REGISTRY)
    landfill = tmp_path / "landfill.yaml"
    landfill.write_text(
        "program: VCS\nproject_id: '5955'\nproject_type: Waste handling and disposal\n"
        "methodology: VMR0016\ncountry: BR\nstart_date: 2024-07-20\n"
        "crediting_period_start: 2024-07-20\ncrediting_period_end: 2031-07-19\n"
    )
    target = ["--target", live_gateway.target, "--insecure", "--as-of", "2026-11-26"]
    for where in ("hkmo", "bri"):
        argv = ["project", "list", str(landfill), "--jurisdiction", where, *target]
        assert main(argv) in (0, 1)
        out = capsys.readouterr().out
        assert out.startswith("listings/"), out


CAMBODIAN_SOLAR = model_pb2.Project(
    program="BRI-ITMO",
    project_id="KH-SOLAR-1",
    project_type="solar",
    country="KH",
    start_date="2024-01-01",
    crediting_period_start="2024-01-01",
    crediting_period_end="2030-12-31",
    authorization=model_pb2.Authorization(
        letter_id="LoA-KH-1", host_country="KH", authorized_uses=["ndc", "oimp"]
    ),
)

THAI_LETTER_SOLAR = model_pb2.Project()
THAI_LETTER_SOLAR.CopyFrom(CAMBODIAN_SOLAR)
THAI_LETTER_SOLAR.project_id = "KH-SOLAR-2"
THAI_LETTER_SOLAR.authorization.letter_id = "LoA-TH-1"
THAI_LETTER_SOLAR.authorization.host_country = "TH"


def test_each_use_says_which_rules_every_transfer_is_still_checked_against(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A use is eligible only subject to the rules on facts each unit carries: the
    # authorization, the corresponding adjustment, the gas. Without them, a Cambodian
    # project read "eligible" for every use, whatever letter its units would carry.
    reply = _ask(live_gateway, "listing-conditions", CAMBODIAN_SOLAR, where="bri")
    assert reply.eligibility
    for use in reply.eligibility:
        conditions = {c.rule_id: c for c in use.conditions}
        assert {"CR-A6-0002", "CR-A6-0003", "CR-A6-0004"} <= set(conditions), use
        authorization = conditions["CR-A6-0002"]
        assert "authorized by the host Party" in authorization.message
        assert "2/CMA.3" in authorization.source
    project = tmp_path / "solar.json"
    project.write_text(json_format.MessageToJson(CAMBODIAN_SOLAR))
    target = ["--target", live_gateway.target, "--insecure", "--as-of", "2026-11-26"]
    main(["project", "list", str(project), "--jurisdiction", "bri", *target])
    out = capsys.readouterr().out
    assert "voluntary_retirement: eligible, subject to each transfer's check of" in out, out
    assert "CR-A6-0002: An ITMO may be transferred only once authorized" in out, out


def test_a_program_the_listing_rules_do_not_accept_is_refused_and_not_recorded(
    live_gateway: LiveGateway,
) -> None:
    # CR-SZ-0009: Shenzhen takes VCS, GS, CCER, SZ-CI and BRI-ITMO for listing, not its
    # own allowances. An SZA "project" read as listed because SZA are eligible for
    # compliance, and its facts were then recorded for its transfers.
    reply = _ask(live_gateway, "listing-sza", SZA_PROJECT)
    assert not reply.listed
    assert [v.rule_id for v in reply.refusals] == ["CR-SZ-0009"]
    uses = {e.use: e.decision for e in reply.eligibility}
    assert not any(d.allowed for d in uses.values())
    # Every use says why it is not eligible: the listing's refusal.
    assert "CR-SZ-0009" in [v.rule_id for v in uses["compliance"].violations]
    assert (
        DatabaseProjectRecords(live_gateway.server.bridge.sessions).get("SZA", "SZA-2023") is None
    )


def test_no_project_is_listed_where_no_listing_rules_are_in_force(
    live_gateway: LiveGateway,
) -> None:
    # Shenzhen took no foreign projects before its 2023 plan: its pack then has only
    # compliance rules, and a listing no rule admits is refused (fail closed).
    reply: gateway_pb2.ListProjectResponse = live_gateway.stub.ListProject(
        gateway_pb2.ListProjectRequest(
            request_id="listing-before-the-plan",
            project=LANDFILL,
            jurisdiction="shenzhen",
            as_of="2023-01-01",
        ),
        timeout=30,
    )
    assert not reply.listed
    assert [v.rule_id for v in reply.refusals] == ["CR-ENGINE-0002"]


def _ask_for_day(
    gateway: LiveGateway, request_id: str, as_of: str
) -> gateway_pb2.ListProjectResponse:
    reply: gateway_pb2.ListProjectResponse = gateway.stub.ListProject(
        gateway_pb2.ListProjectRequest(
            request_id=request_id, project=LANDFILL, jurisdiction="shenzhen", as_of=as_of
        ),
        timeout=30,
    )
    return reply


def test_a_decision_for_another_day_is_answered_but_binds_nothing(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    # A refusal asked for a past day (Shenzhen before its 2023 plan refuses every listing)
    # became the project's standing: its units were refused in Shenzhen today, by rules no
    # longer in force. And a listing asked for a day of the caller's choosing lifted a
    # refusal taken by today's rules. Only a decision for the gateway's today binds now.
    records = DatabaseProjectRecords(live_gateway.server.bridge.sessions)
    before_the_plan = _ask_for_day(live_gateway, "listing-2023", "2023-01-01")
    assert not before_the_plan.listed and not before_the_plan.binding
    assert records.refused("VCS", "5955", "shenzhen") is None
    assert records.get("VCS", "5955") is None  # nor are the facts recorded
    read = live_gateway.stub.GetListing(
        gateway_pb2.GetListingRequest(name=before_the_plan.name), timeout=30
    )
    assert (read.as_of, read.listed, read.binding) == ("2023-01-01", False, False)
    target = ["--target", live_gateway.target, "--insecure"]
    assert main(["project", "get", read.name, *target]) == 1
    assert "not binding: decided by the rules of another day" in capsys.readouterr().out

    today = live_gateway.server.bridge.today()
    listed = _ask(live_gateway, "listing-today", LANDFILL)
    assert listed.listed and listed.binding
    assert records.get("VCS", "5955") is not None
    # Asked again for the past day, and for a day to come: today's listing stands.
    assert not _ask_for_day(live_gateway, "listing-2023-again", "2023-01-01").binding
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert not _ask_for_day(live_gateway, "listing-tomorrow", tomorrow).binding
    assert records.refused("VCS", "5955", "shenzhen") is None

    # Today's own date, given explicitly, binds as an empty one does.
    explicit = _ask_for_day(live_gateway, "listing-today-explicit", today.isoformat())
    assert explicit.binding


def test_a_refusal_for_another_day_does_not_replace_a_binding_one_as_the_standing(
    live_gateway: LiveGateway,
) -> None:
    records = DatabaseProjectRecords(live_gateway.server.bridge.sessions)
    refused = _ask(live_gateway, "listing-thai-today", THAI_LETTER_SOLAR, where="bri")
    assert not refused.listed and refused.binding
    assert records.refused("BRI-ITMO", "KH-SOLAR-2", "bri") is not None
    # The same refusal under whichever day's rules: asked for another day, it binds nothing,
    # and today's binding refusal stays the standing.
    later = live_gateway.stub.ListProject(
        gateway_pb2.ListProjectRequest(
            request_id="listing-thai-other-day",
            project=THAI_LETTER_SOLAR,
            jurisdiction="bri",
            as_of="2025-06-01",
        ),
        timeout=30,
    )
    assert not later.binding
    standing = records.refused("BRI-ITMO", "KH-SOLAR-2", "bri")
    assert standing is not None and standing.listing_id == refused.name.removeprefix("listings/")


def test_a_letter_of_authorization_from_another_country_is_refused_at_listing(
    live_gateway: LiveGateway,
) -> None:
    # A Cambodian project declared with Thailand's letter was listed, eligible for every use
    # subject to CR-A6-0002: only each transfer of its units found that the letter does not
    # authorize them. The letter's country is known at listing: the listing is refused then.
    reply = _ask(live_gateway, "listing-thai-letter", THAI_LETTER_SOLAR, where="bri")
    assert not reply.listed
    assert [v.rule_id for v in reply.refusals] == ["CR-A6-0002"]
    (refusal,) = reply.refusals
    assert "letter LoA-TH-1 is from TH, but the project is hosted in KH" in refusal.message
    assert "2/CMA.3" in refusal.source
    for use in reply.eligibility:
        assert not use.decision.allowed, use
        assert "CR-A6-0002" in [v.rule_id for v in use.decision.violations], use
    # Recorded as answered, and read back so; the project's facts are not recorded for
    # its transfers.
    read = live_gateway.stub.GetListing(gateway_pb2.GetListingRequest(name=reply.name), timeout=30)
    assert not read.listed
    assert list(read.refusals) == list(reply.refusals)
    assert list(read.eligibility) == list(reply.eligibility)
    assert read.project == THAI_LETTER_SOLAR
    records = DatabaseProjectRecords(live_gateway.server.bridge.sessions)
    assert records.get("BRI-ITMO", "KH-SOLAR-2") is None
    # The host's own letter lists the same project.
    assert _ask(live_gateway, "listing-khmer-letter", CAMBODIAN_SOLAR, where="bri").listed


def test_a_listing_reads_back_with_its_facts_outcome_requester_and_time(
    live_gateway: LiveGateway,
) -> None:
    listed = _ask(live_gateway, "listing-read-back", CAMBODIAN_SOLAR, where="bri")
    read = live_gateway.stub.GetListing(gateway_pb2.GetListingRequest(name=listed.name), timeout=30)
    assert read.name == listed.name
    assert read.project == CAMBODIAN_SOLAR
    today = live_gateway.server.bridge.today().isoformat()
    assert (read.jurisdiction, read.as_of, read.binding) == ("bri", today, True)
    assert listed.binding
    assert read.listed == listed.listed
    assert list(read.eligibility) == list(listed.eligibility)
    assert list(read.refusals) == list(listed.refusals)
    assert read.requested_by == ""  # an insecure gateway's one local caller
    assert read.create_time.seconds > 0
    assert read.pack_versions

    # A refused listing reads back as refused, and changes nothing else.
    refused = _ask(live_gateway, "listing-read-back-sza", SZA_PROJECT)
    again = live_gateway.stub.GetListing(
        gateway_pb2.GetListingRequest(name=refused.name), timeout=30
    )
    assert not again.listed
    assert [v.rule_id for v in again.refusals] == ["CR-SZ-0009"]
    # The repeat of a request reads the same listing, not a second one.
    assert _ask(live_gateway, "listing-read-back", CAMBODIAN_SOLAR, where="bri").name == listed.name

    for name in ("listings/", "transfers/abc", "listings/" + "f" * 32, "listings/a\nb"):
        with pytest.raises(grpc.RpcError) as caught:
            live_gateway.stub.GetListing(gateway_pb2.GetListingRequest(name=name), timeout=30)
        expected = (
            grpc.StatusCode.NOT_FOUND
            if name.endswith("f" * 32)
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        assert caught.value.code() == expected, name


def test_a_listing_reads_back_from_the_command_line(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    # GetListing had no command: an issuer told "listings/{id}" by `project list` could not
    # read that listing again without writing a gRPC client.
    target = ["--target", live_gateway.target, "--insecure"]
    listed = _ask(live_gateway, "listing-cli-read", CAMBODIAN_SOLAR, where="bri")
    assert main(["project", "get", listed.name, *target]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{listed.name}: listed"), out
    today = live_gateway.server.bridge.today().isoformat()
    assert f"BRI-ITMO project KH-SOLAR-1 in bri as of {today}" in out, out
    assert "not binding" not in out, out
    assert "requested by (insecure gateway: no caller)" in out, out
    assert "voluntary_retirement: eligible, subject to each transfer's check of" in out, out
    assert "CR-A6-0002: An ITMO may be transferred only once authorized" in out, out
    # The bare id names it too, and --json prints the whole resource.
    listing_id = listed.name.removeprefix("listings/")
    assert main(["project", "get", listing_id, "--json", *target]) == 0
    read = json_format.Parse(capsys.readouterr().out, gateway_pb2.Listing())
    assert read == live_gateway.stub.GetListing(
        gateway_pb2.GetListingRequest(name=listed.name), timeout=30
    )
    assert read.project == CAMBODIAN_SOLAR and read.create_time.seconds > 0

    # A refused listing reads back refused, with its rule, and exits 1 as `project list` did.
    refused = _ask(live_gateway, "listing-cli-read-sza", SZA_PROJECT)
    assert main(["project", "get", refused.name, *target]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{refused.name}: REFUSED"), out
    assert "refused CR-SZ-0009" in out, out

    # A listing nobody recorded is NOT_FOUND, a malformed name the server's own error.
    assert main(["project", "get", "listings/" + "f" * 32, *target]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["project", "get", "transfers/abc", *target]) == 2
    assert "listings/ID" in capsys.readouterr().err


GANSU_WIND = model_pb2.Project(
    program="CCER",
    project_id="GS-WIND-1",
    project_type="wind",
    country="CN",
    # ISO 3166-2, as registries write it: Gansu, on Shenzhen's renewable origin list.
    region="CN-GS",
    start_date="2016-03-01",
    construction_start="2015-06-01",
    crediting_period_start="2024-01-01",
    crediting_period_end="2024-12-31",
)


@pytest.mark.parametrize(
    ("project", "jurisdiction", "as_of"),
    [
        (SZA_PROJECT, "shenzhen", "2026-11-26"),
        (LANDFILL, "shenzhen", "2023-01-01"),
        (LANDFILL, "shenzhen", "2026-11-26"),
        (CAMBODIAN_SOLAR, "bri", "2026-11-26"),
        (LANDFILL, "hkmo", "2026-11-26"),
        (GANSU_WIND, "shenzhen", "2026-11-26"),
        (THAI_LETTER_SOLAR, "bri", "2026-11-26"),
    ],
    ids=["sza", "shenzhen-before-its-plan", "vcs", "bri", "hkmo", "iso-region", "foreign-letter"],
)
def test_the_offline_listing_answer_is_the_gateways(
    live_gateway: LiveGateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    project: model_pb2.Project,
    jurisdiction: str,
    as_of: str,
) -> None:
    # `rules evaluate --listing` said LISTABLE for a project the gateway refused: it did
    # not decide by the market's own listing rules (Shenzhen before its 2023 plan has none,
    # so the gateway refuses with CR-ENGINE-0002). It also read its own document, converted
    # apart from ListProject's: a region in ISO form (CN-GS) was placed by the gateway only.
    # Now it reads the file `project list` sends, converted as ListProject converts it.
    reply: gateway_pb2.ListProjectResponse = live_gateway.stub.ListProject(
        gateway_pb2.ListProjectRequest(
            request_id=f"offline-{jurisdiction}-{as_of}-{project.project_id}",
            project=project,
            jurisdiction=jurisdiction,
            as_of=as_of,
        ),
        timeout=30,
    )
    facts = tmp_path / "project.json"
    facts.write_text(json_format.MessageToJson(project))
    argv = ["rules", "evaluate", "--pack", PACK_BY_REGISTRY[jurisdiction]]
    code = main([*argv, "--listing", "--facts", str(facts), "--clock", as_of, "--json"])
    offline = json.loads(capsys.readouterr().out)

    assert code == (0 if reply.listed else 1)
    assert offline["refused"] is not reply.listed
    assert [v["rule_id"] for v in offline["refusals"]] == [v.rule_id for v in reply.refusals]
    assert {
        u["use"]: (u["eligible"], [v["rule_id"] for v in u["violations"]], u["conditions"])
        for u in offline["uses"]
    } == {
        e.use: (
            e.decision.allowed,
            [v.rule_id for v in e.decision.violations],
            [c.rule_id for c in e.conditions],
        )
        for e in reply.eligibility
    }
