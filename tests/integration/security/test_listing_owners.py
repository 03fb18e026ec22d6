"""A listed project's facts are its lister's: another issuer cannot replace them.

The facts an issuer declares when listing a project (construction date, GEC status,
registrations under other programs) decide every later transfer of its units, so a
re-listing by anyone else would rewrite the rules applied to units that are not theirs.
Only the first lister, or a regulator, may replace them; and an issuer lists first (or
has refused) only a project whose registry of origin answers that one of the issuer's
accounts there holds, or held, its units.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway.cli import main
from gateway.security.layout import TlsLayout
from registry_bridge.bridge import venue_account
from registry_bridge.port import ListHoldingsRequest, RetireRequest
from registry_bridge.schema import ListingDecisionRecord, ProjectListingRecord
from tests.integration.gateway.test_listing_api import LANDFILL
from tests.integration.security.conftest import (
    SecureGateway,
    running_secure_gateway,
    vcs_serial,
)

# Verra issued units of the landfill (VCS 5955) into the account of its issuer's desk.
LANDFILL_UNITS = vcs_serial(LANDFILL.project_id, 500_000_001)


@pytest.fixture
def gateway(pki: TlsLayout, database_url: str) -> Iterator[SecureGateway]:
    with running_secure_gateway(pki, database_url) as gateway:
        gateway.issue("verra", "verra-desk", LANDFILL_UNITS)
        yield gateway


def _listing(request_id: str, display_name: str) -> gateway_pb2.ListProjectRequest:
    request = gateway_pb2.ListProjectRequest(
        request_id=request_id, project=LANDFILL, jurisdiction="shenzhen"
    )
    request.project.display_name = display_name
    return request


def _stored(gateway: SecureGateway) -> tuple[str, str]:
    """The stored listing's display name and lister."""
    with gateway.server.engine.connect() as connection:
        facts, listed_by = connection.execute(
            sa.select(ProjectListingRecord.facts, ProjectListingRecord.listed_by).where(
                ProjectListingRecord.program == LANDFILL.program,
                ProjectListingRecord.project_id == LANDFILL.project_id,
            )
        ).one()
    return str(json.loads(facts)["display_name"]), str(listed_by)


def _issuer(
    gateway: SecureGateway, subject: str, accounts: Sequence[str] | None = None
) -> gateway_pb2_grpc.LinkageGatewayStub:
    """An issuer's stub; its token names its own Verra account unless ``accounts`` says."""
    named = [f"verra:{subject}"] if accounts is None else list(accounts)
    return gateway.stub("issuer", gateway.token("issuer", subject=subject, accounts=named))


def test_another_issuer_cannot_replace_a_listed_projects_facts(gateway: SecureGateway) -> None:
    lister = _issuer(gateway, "verra-desk")
    assert lister.ListProject(_listing("first", "Landfill gas"), timeout=30).listed

    with pytest.raises(grpc.RpcError) as caught:
        _issuer(gateway, "other-desk").ListProject(_listing("mine", "Rewritten"), timeout=30)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "listed by another party" in str(caught.value.details())
    assert "verra-desk" not in str(caught.value.details())
    assert _stored(gateway) == ("Landfill gas", "verra-desk")


def test_the_lister_and_a_regulator_may_replace_the_facts(gateway: SecureGateway) -> None:
    lister = _issuer(gateway, "verra-desk")
    lister.ListProject(_listing("first", "Landfill gas"), timeout=30)

    assert lister.ListProject(_listing("again", "Landfill gas, phase 2"), timeout=30).listed
    assert _stored(gateway) == ("Landfill gas, phase 2", "verra-desk")

    regulator = gateway.stub("regulator", gateway.token("regulator", subject="sz-ee-bureau"))
    assert regulator.ListProject(_listing("correction", "Corrected"), timeout=30).listed
    # Corrected, and still the lister's to update.
    assert _stored(gateway) == ("Corrected", "verra-desk")


def _double_issued(request_id: str) -> gateway_pb2.ListProjectRequest:
    """The landfill listed with its 2025 reductions also issued as CCER (CR-DC-0002)."""
    request = _listing(request_id, "Landfill gas")
    request.project.other_registrations.append(
        model_pb2.ProjectRegistration(
            program="CCER",
            project_id="CCER-1",
            issued_period_start="2025-01-01",
            issued_period_end="2025-12-31",
        )
    )
    return request


def _decisions(
    gateway: SecureGateway, project_id: str = LANDFILL.project_id
) -> list[tuple[str, str]]:
    """Who asked for each recorded listing decision of a VCS project (the landfill's
    unless said), and where."""
    with gateway.server.engine.connect() as connection:
        rows = connection.execute(
            sa.select(ListingDecisionRecord.requested_by, ListingDecisionRecord.jurisdiction)
            .where(
                ListingDecisionRecord.program == "VCS",
                ListingDecisionRecord.project_id == project_id,
            )
            .order_by(ListingDecisionRecord.created_at)
        ).all()
    return [(str(r.requested_by), str(r.jurisdiction)) for r in rows]


def test_another_issuer_cannot_record_a_refusal_of_a_listed_project(
    gateway: SecureGateway,
) -> None:
    # A refused listing is the project's standing in its market: its units are refused
    # there until a listing that is not refused. Recorded for anyone who asked, another
    # issuer's declaration of a registration elsewhere would freeze units not theirs.
    lister = _issuer(gateway, "verra-desk")
    assert lister.ListProject(_listing("first", "Landfill gas"), timeout=30).listed

    with pytest.raises(grpc.RpcError) as caught:
        _issuer(gateway, "other-desk").ListProject(_double_issued("theirs"), timeout=30)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "listed by another party" in str(caught.value.details())
    assert "verra-desk" not in str(caught.value.details())
    assert _decisions(gateway) == [("verra-desk", "shenzhen")]
    # Its lister and a regulator may record one.
    assert not lister.ListProject(_double_issued("own"), timeout=30).listed
    regulator = gateway.stub("regulator", gateway.token("regulator", subject="sz-ee-bureau"))
    assert not regulator.ListProject(_double_issued("supervised"), timeout=30).listed
    assert _decisions(gateway) == [
        ("verra-desk", "shenzhen"),
        ("verra-desk", "shenzhen"),
        ("sz-ee-bureau", "shenzhen"),
    ]


def test_a_listing_is_read_back_by_who_asked_for_it_and_by_a_regulator(
    gateway: SecureGateway,
) -> None:
    # ListProject answered with a listings/{id} name that no call could read: an issuer,
    # or the regulator supervising the market, could not see a listing's outcome again.
    lister = _issuer(gateway, "verra-desk")
    answer = lister.ListProject(_listing("first", "Landfill gas"), timeout=30)
    request = gateway_pb2.GetListingRequest(name=answer.name)

    mine = lister.GetListing(request, timeout=30)
    assert mine.name == answer.name
    assert mine.requested_by == "verra-desk"
    assert mine.project.display_name == "Landfill gas"
    regulator = gateway.stub("regulator", gateway.token("regulator", subject="sz-ee-bureau"))
    assert regulator.GetListing(request, timeout=30) == mine

    # Another issuer learns nothing, not even that it exists.
    with pytest.raises(grpc.RpcError) as caught:
        _issuer(gateway, "other-desk").GetListing(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as unknown:
        _issuer(gateway, "other-desk").GetListing(
            gateway_pb2.GetListingRequest(name="listings/" + "0" * 32), timeout=30
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.value.details() == caught.value.details().replace(
        answer.name.removeprefix("listings/"), "0" * 32
    )
    # Roles ListProject does not accept are refused outright.
    operator = gateway.stub("exchange_operator", gateway.token("exchange_operator"))
    with pytest.raises(grpc.RpcError) as refused:
        operator.GetListing(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_project_get_reads_a_listing_over_tls_with_the_callers_token(
    gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = _issuer(gateway, "verra-desk").ListProject(_listing("first", "Landfill"), timeout=30)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.write_text(gateway.token("issuer", subject="verra-desk"))
    theirs.write_text(gateway.token("issuer", subject="other-desk"))
    secure = ["--target", gateway.target, "--tls-dir", str(gateway.pki.root)]

    # An issuer's command: its client certificate is the default, as for `project list`.
    assert main(["project", "get", answer.name, *secure, "--token-file", str(mine)]) == 0
    out = capsys.readouterr().out
    assert f"{answer.name}: listed" in out and "requested by verra-desk at " in out, out
    assert main(["project", "get", answer.name, *secure, "--token-file", str(theirs)]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    # Neither TLS files nor --insecure: a usage error naming the options, before any call.
    assert main(["project", "get", answer.name, "--target", gateway.target]) == 2
    assert "--tls-dir" in capsys.readouterr().err


def _listers(gateway: SecureGateway, project_id: str = LANDFILL.project_id) -> list[str]:
    """Who the recorded listing of a VCS project is, if any, as the ledger keeps it."""
    with gateway.server.engine.connect() as connection:
        return [
            str(listed_by)
            for listed_by in connection.execute(
                sa.select(ProjectListingRecord.listed_by).where(
                    ProjectListingRecord.program == "VCS",
                    ProjectListingRecord.project_id == project_id,
                )
            ).scalars()
        ]


def _denied(stub: gateway_pb2_grpc.LinkageGatewayStub, request: Any) -> str:
    """The details of the PERMISSION_DENIED ``stub`` answers ``request`` with."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListProject(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value.details()
    return str(caught.value.details())


def test_an_issuer_without_units_of_the_project_cannot_list_it_first(
    gateway: SecureGateway,
) -> None:
    # The first lister owns the project's listing: taken on its word, any issuer could
    # list a project not its own with facts of its choosing, and lock out the real one.
    gateway.issue("verra", "squatter", vcs_serial("5957", 600_000_001))
    attempts = {
        "no account at verra": ((), "the caller's token names no account at verra"),
        "an account at another registry": (["hkmo:hk-seller"], "names no account at verra"),
        # The squatter's Verra account holds units, but of another project.
        "its own account at verra": (None, "no account of the caller at verra (squatter)"),
    }
    for i, (accounts, missing) in enumerate(attempts.values()):
        details = _denied(_issuer(gateway, "squatter", accounts), _listing(f"squat-{i}", "Mine"))
        assert "project VCS 5955" in details and missing in details, details

    assert _listers(gateway) == [] and _decisions(gateway) == []
    # The issuer whose account holds the units lists it, and owns its listing.
    desk = _issuer(gateway, "verra-desk")
    assert desk.ListProject(_listing("own", "Landfill"), timeout=30).listed
    assert _stored(gateway) == ("Landfill", "verra-desk")
    assert "listed by another party" in _denied(
        _issuer(gateway, "squatter"), _listing("squat-again", "Mine")
    )


def test_a_custody_venues_account_at_the_origin_proves_no_issuers_holding(
    gateway: SecureGateway,
) -> None:
    # The HK venue's account at Verra holds its clients' units, whoever they are: a token
    # naming it would let its bearer prove every project any client of the venue holds.
    gateway.issue("verra", venue_account("hkmo"), vcs_serial(LANDFILL.project_id, 500_002_001))
    for accounts in (
        [f"verra:{venue_account('hkmo')}"],
        [f"verra:{venue_account('hkmo')}", "verra:nobody"],
    ):
        details = _denied(
            _issuer(gateway, "venue-client", accounts), _listing("through-the-venue", "Mine")
        )
        assert "project VCS 5955" in details, details
        assert f"{venue_account('hkmo')} is the hkmo custody venue's account" in details, details
    assert _listers(gateway) == [] and _decisions(gateway) == []


def test_an_issuer_whose_units_were_retired_proves_it_held_them(gateway: SecureGateway) -> None:
    gateway.issue("verra", "retired-desk", vcs_serial(LANDFILL.project_id, 500_001_001))
    retired = next(
        h.block.id
        for h in gateway.ports["verra"].list_holdings(ListHoldingsRequest("retired-desk"))
    )
    gateway.ports["verra"].retire(RetireRequest("retire-1", "retired-desk", retired, "Co.", ""))

    answer = _issuer(gateway, "retired-desk").ListProject(_listing("mine", "Landfill"), timeout=30)

    assert answer.listed
    assert _listers(gateway) == ["retired-desk"]


def test_a_non_holder_cannot_have_a_project_no_one_listed_refused(gateway: SecureGateway) -> None:
    # A refused listing freezes the project's units in the jurisdiction until a listing
    # that is not refused: recorded for anyone who asked, a stranger's declaration of a
    # registration elsewhere would freeze units it never held.
    details = _denied(_issuer(gateway, "squatter"), _double_issued("freeze"))

    assert "project VCS 5955" in details and "verra (squatter)" in details
    assert _decisions(gateway) == [] and _listers(gateway) == []
    # The holder may have it refused; a refusal lists it for no one, so the squatter
    # still has to prove a holding.
    assert not _issuer(gateway, "verra-desk").ListProject(_double_issued("own"), timeout=30).listed
    assert _decisions(gateway) == [("verra-desk", "shenzhen")] and _listers(gateway) == []
    _denied(_issuer(gateway, "squatter"), _listing("squat", "Mine"))
    assert _decisions(gateway) == [("verra-desk", "shenzhen")]


def test_a_regulator_lists_a_project_no_one_listed_without_holding_it(
    gateway: SecureGateway,
) -> None:
    regulator = gateway.stub("regulator", gateway.token("regulator", subject="sz-ee-bureau"))

    assert regulator.ListProject(_listing("supervised", "Landfill"), timeout=30).listed
    assert _listers(gateway) == ["sz-ee-bureau"]


def test_an_unreachable_registry_of_origin_fails_a_first_listing_and_records_nothing(
    pki: TlsLayout, database_url: str
) -> None:
    with running_secure_gateway(pki, database_url, registry_retry_attempts=2) as gateway:
        gateway.issue("verra", "verra-desk", LANDFILL_UNITS)
        gateway.issue("verra", "verra-desk", vcs_serial("5957", 600_000_001))
        desk = _issuer(gateway, "verra-desk")
        first = _listing("first", "Landfill")
        answer = desk.ListProject(first, timeout=30)
        gateway.emulators["verra"].stop(grace=0)

        other = _listing("other", "Landfill, phase 2")
        other.project.project_id = "5957"
        with pytest.raises(grpc.RpcError) as caught:
            desk.ListProject(other, timeout=60)

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "verra" in str(caught.value.details())
        assert _listers(gateway, "5957") == [] and _decisions(gateway, "5957") == []
        assert _decisions(gateway) == [("verra-desk", "shenzhen")]
        # Its lister's project asks the registry nothing: a repeat is answered as first,
        # and a re-listing is recorded.
        assert desk.ListProject(first, timeout=30) == answer
        assert desk.ListProject(_listing("again", "Landfill gas"), timeout=30).listed
        assert _stored(gateway) == ("Landfill gas", "verra-desk")


def test_a_project_whose_registry_of_origin_cannot_be_asked_is_not_listed_first(
    gateway: SecureGateway,
) -> None:
    desk = _issuer(gateway, "verra-desk", ["verra:verra-desk", "gold-standard:verra-desk"])
    unknown = _listing("unknown", "Landfill")
    unknown.project.program = "ACR"
    assert "no registry carbonlink links issues 'ACR' units" in _denied(desk, unknown)
    # Gold Standard issues GS units, but this gateway is not linked to it.
    unlinked = _listing("unlinked", "Cookstoves")
    unlinked.project.program = "GS"
    unlinked.project.project_id = "GS7495"
    with pytest.raises(grpc.RpcError) as caught:
        desk.ListProject(unlinked, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not linked to gold-standard" in str(caught.value.details())
    with gateway.server.engine.connect() as connection:
        recorded = connection.execute(
            sa.select(sa.func.count()).select_from(ListingDecisionRecord)
        ).scalar_one()
    assert recorded == 0
