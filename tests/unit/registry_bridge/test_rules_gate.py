"""The bridge's rules gate over the real built-in packs (no mock of compliance_rules)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pytest

from compliance_rules import EntityYear, OffsetUse
from registry_bridge.bridge import TransferCheck, TransferRules, UseCheck
from registry_bridge.errors import InvalidRequest
from registry_bridge.ledger import LedgerHolding
from registry_bridge.listing import OtherRegistration, ProjectListing, RefusedListing
from registry_bridge.model import (
    Authorization,
    BlockId,
    CorrespondingAdjustment,
    HoldingStatus,
    Program,
    UnitBlock,
)
from registry_bridge.rules_gate import ComplianceRules, list_project
from registry_bridge.transfers import (
    AccountRef,
    RulesDecision,
    RuleViolation,
    TransferInstruction,
    TransferKind,
    UseRequest,
)

AT = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)


class Entities:
    """A plain table of compliance years (the real EntityRecords port, in memory)."""

    def __init__(self, *records: tuple[str, EntityYear]) -> None:
        self._records = {(j, r.entity_id, r.compliance_year): r for j, r in records}

    def get(self, entity_id: str, jurisdiction: str, year: int) -> EntityYear | None:
        return self._records.get((jurisdiction, entity_id, year))


def gate(*records: tuple[str, EntityYear]) -> ComplianceRules:
    return ComplianceRules(Entities(*records))


def vcs(start: int = 1001, end: int = 1100, series: str = "") -> UnitBlock:
    return UnitBlock(
        id=BlockId(Program.VCS, series, start, end),
        project_id="1748",
        country="ID",
        vintage_start=date(2021, 1, 1),
        vintage_end=date(2021, 12, 31),
        project_type="wind",
        methodology="ACM0002",
    )


def ccer(
    start: int,
    end: int,
    *,
    project_id: str = "CCER-0042",
    region: str = "CN-XJ",
    project_type: str = "wind",
) -> UnitBlock:
    return UnitBlock(
        id=BlockId(Program.CCER, "", start, end),
        project_id=project_id,
        country="CN",
        region=region,
        vintage_start=date(2023, 1, 1),
        vintage_end=date(2023, 12, 31),
        project_type=project_type,
    )


def itmo(
    authorization: Authorization | None = None,
    adjustment: CorrespondingAdjustment = CorrespondingAdjustment.PENDING,
) -> UnitBlock:
    return UnitBlock(
        id=BlockId(Program.BRI_ITMO, "LA", 1, 500),
        project_id="BRI-LA-7",
        country="LA",
        vintage_start=date(2023, 1, 1),
        vintage_end=date(2023, 12, 31),
        project_type="solar",
        authorization=authorization,
        corresponding_adjustment=adjustment,
    )


def row(
    row_id: int,
    block: UnitBlock,
    registry: str,
    account: str,
    status: HoldingStatus = HoldingStatus.ACTIVE,
    origin: BlockId | None = None,
) -> LedgerHolding:
    return LedgerHolding(
        row_id=row_id,
        block=block,
        registry=registry,
        account=account,
        status=status,
        is_mirror=origin is not None,
        origin=block.id if origin is None else origin,
    )


def transfer(
    blocks: tuple[UnitBlock, ...],
    known: tuple[LedgerHolding, ...],
    *,
    source: tuple[str, str],
    destination: tuple[str, str],
    use: str = "holding",
    kind: TransferKind = TransferKind.BRIDGE_OUT,
    at: datetime = AT,
    compliance_year: int = 0,
) -> TransferCheck:
    instruction = TransferInstruction(
        source=AccountRef(*source),
        destination=AccountRef(*destination),
        units=tuple(b.id for b in blocks),
        intended_use=use,
        compliance_year=compliance_year,
    )
    return TransferCheck(instruction, kind, blocks, known, at)


def ids(decision: RulesDecision) -> set[str]:
    return {v.rule_id for v in decision.violations}


def test_the_gate_is_the_bridges_rules_port() -> None:
    rules: TransferRules = gate()
    assert isinstance(rules, ComplianceRules)


# ------------------------------------------------------------------------------ transfers


def test_vcs_from_the_hong_kong_venue_into_shenzhen_for_holding_is_allowed() -> None:
    block = vcs()
    decision = gate().check_transfer(
        transfer(
            (block,),
            (row(7, block, "hkmo", "seller"),),
            source=("hkmo", "seller"),
            destination=("shenzhen", "buyer"),
        )
    )
    assert decision == RulesDecision(
        allowed=True, pack_versions=("shenzhen@2024-10-01", "baseline@2000-01-01")
    )


def phcer(start: int, end: int) -> UnitBlock:
    return UnitBlock(
        id=BlockId(Program.GD_PHCER, "", start, end),
        project_id="PH-9",
        country="CN",
        region="Guangdong/Guangzhou",
        vintage_start=date(2023, 1, 1),
        vintage_end=date(2023, 12, 31),
        project_type="forestry_sink",
    )


def hold(block: UnitBlock, source: str, destination: str) -> TransferCheck:
    return transfer(
        (block,),
        (row(3, block, source, "seller"),),
        source=(source, "seller"),
        destination=(destination, "buyer"),
    )


@pytest.mark.parametrize(
    ("block", "source", "destination", "pack_version"),
    [
        (ccer(1, 100), "guangdong", "national", "national@2024-10-01"),
        (ccer(1, 100, project_type="hydro"), "national", "guangdong", "guangdong@2024-10-01"),
        (phcer(1, 100), "shenzhen", "guangdong", "guangdong@2024-10-01"),
    ],
)
def test_offsets_may_be_held_in_national_and_guangdong_accounts(
    block: UnitBlock, source: str, destination: str, pack_version: str
) -> None:
    """A holding transfer is checked for the pack's listing use (hold and trade there); the
    compliance rules (hydro excluded in Guangdong...) decide the surrender, not the holding."""
    decision = gate().check_transfer(hold(block, source, destination))
    assert decision.allowed, decision.violations
    assert decision.pack_versions == (pack_version, "baseline@2000-01-01")


@pytest.mark.parametrize(
    ("block", "destination", "rule_id"),
    [(vcs(), "guangdong", "CR-GD-0009"), (vcs(), "national", "CR-NAT-0008")],
)
def test_units_a_market_does_not_hold_are_refused_for_holding(
    block: UnitBlock, destination: str, rule_id: str
) -> None:
    decision = gate().check_transfer(hold(block, "verra", destination))
    assert ids(decision) == {rule_id}
    assert decision.violations[0].blocks == (block.id,)


def test_phcer_are_not_held_in_national_accounts() -> None:
    decision = gate().check_transfer(hold(phcer(1, 100), "guangdong", "national"))
    assert ids(decision) == {"CR-NAT-0008"}


def test_a_refused_holding_lists_every_violation() -> None:
    used = ccer(1, 100)
    methane = dataclasses.replace(ccer(201, 300), gas="CH4")  # no GWP basis
    foreign = vcs()
    known = (
        row(3, used, "national", "seller"),
        row(4, methane, "national", "seller"),
        row(5, foreign, "national", "seller"),
        row(9, used, "shenzhen", "entity-2", HoldingStatus.SURRENDERED),
    )
    decision = gate().check_transfer(
        transfer(
            (used, methane, foreign),
            known,
            source=("national", "seller"),
            destination=("guangdong", "buyer"),
        )
    )
    assert ids(decision) == {"CR-DC-0003", "CR-GD-0007", "CR-GD-0009"}
    by_rule = {v.rule_id: v for v in decision.violations}
    assert by_rule["CR-DC-0003"].blocks == (used.id,)
    assert by_rule["CR-GD-0007"].blocks == (methane.id,)
    assert "gives no GWP basis" in by_rule["CR-GD-0007"].message
    assert by_rule["CR-GD-0009"].blocks == (foreign.id,)


def test_non_co2_units_are_re_expressed_with_the_packs_gwp_table() -> None:
    under = dataclasses.replace(ccer(1, 250), gas="CH4", gwp_basis="AR4")  # 25 < AR5's 28
    assert gate().check_transfer(hold(under, "guangdong", "national")).allowed
    over = dataclasses.replace(ccer(1, 298), gas="N2O", gwp_basis="IPCC AR4")  # 298 > 265
    decision = gate().check_transfer(hold(over, "guangdong", "national"))
    assert ids(decision) == {"CR-NAT-0005"}
    (violation,) = decision.violations
    figures = dict(violation.details)
    assert (figures["gas_mass"], figures["basis_gwp"], figures["pack_gwp"]) == (
        "1.000000",
        "298",
        "265",
    )
    assert (figures["co2e"], figures["quantity"]) == ("265.000000", "298")
    assert "298 tCO2e at AR4 GWP 298 = 1.000000 t N2O" in violation.message
    unknown = dataclasses.replace(over, gwp_basis="TAR")
    (refusal,) = gate().check_transfer(hold(unknown, "guangdong", "national")).violations
    assert "'TAR' is not a known IPCC report" in refusal.message


def test_a_transfer_for_compliance_leaves_the_entity_rules_to_the_surrender() -> None:
    """No entity record is asked for a transfer into an entity's account: the offset limit
    is decided when the units are surrendered; the other compliance rules are decided now."""
    block = ccer(1, 100)
    check = transfer(
        (block,),
        (row(3, block, "guangdong", "seller"),),
        source=("guangdong", "seller"),
        destination=("national", "entity-1"),
        use="compliance",
    )
    unlisted = gate().check_transfer(check)
    assert ids(unlisted) == {"CR-NAT-0006"}  # construction date unknown: fails closed
    listed = ProjectListing(
        program="CCER",
        project_id="CCER-0042",
        country="CN",
        region="Xinjiang",
        project_type="wind",
        construction_start=date(2019, 5, 1),
    )
    decision = ComplianceRules(Entities(), projects=Projects(listed)).check_transfer(check)
    assert decision.allowed, decision.violations
    # The decision says which rules it left to the surrender, so "allowed" is not read
    # as "may be surrendered".
    assert decision.deferred_rules
    assert all(r.startswith("CR-NAT-") for r in decision.deferred_rules)
    hydro = dataclasses.replace(block, project_type="hydro")
    national_hydro = ComplianceRules(Entities(), projects=Projects(listed)).check_transfer(
        dataclasses.replace(check, blocks=(hydro,), known=(row(3, hydro, "guangdong", "seller"),))
    )
    assert national_hydro.allowed  # hydro is renewable: the national CCER rules accept it
    into_guangdong = transfer(
        (hydro,),
        (row(3, hydro, "national", "seller"),),
        source=("national", "seller"),
        destination=("guangdong", "entity-1"),
        use="compliance",
    )
    assert ids(gate().check_transfer(into_guangdong)) == {"CR-GD-0004"}


def test_hydro_ccer_into_guangdong_for_compliance_is_denied_with_the_rule_id() -> None:
    block = ccer(1, 100, project_type="hydro", region="CN-GD")
    decision = gate().check_transfer(
        transfer(
            (block,),
            (row(3, block, "national", "seller"),),
            source=("national", "seller"),
            destination=("guangdong", "entity-1"),
            use="compliance",
        )
    )
    assert not decision.allowed
    hydro = [v for v in decision.violations if v.rule_id == "CR-GD-0004"]
    assert len(hydro) == 1
    assert hydro[0].blocks == (block.id,)
    assert "hydro" in hydro[0].message
    assert hydro[0].source.startswith("Guangdong offset rule of 9 Jan 2017")
    assert "guangdong@2024-10-01" in decision.pack_versions


def test_bri_itmo_without_authorization_or_adjustment_is_denied_wherever_it_goes() -> None:
    block = itmo()
    decision = gate().check_transfer(
        transfer(
            (block,),
            (row(9, block, "bri", "host-la"),),
            source=("bri", "host-la"),
            destination=("shenzhen", "buyer"),
        )
    )
    assert not decision.allowed
    # Shenzhen accepts BRI ITMOs for listing; Article 6 still needs the letter and the CA.
    assert ids(decision) == {"CR-A6-0002", "CR-A6-0003"}
    ca = next(v for v in decision.violations if v.rule_id == "CR-A6-0003")
    assert ("ca_status", "pending") in ca.details
    assert ca.blocks == (block.id,)
    assert {"shenzhen@2024-10-01", "article6-bri@2022-03-28"} <= set(decision.pack_versions)


def test_bri_itmo_authorized_and_adjusted_is_allowed() -> None:
    block = itmo(
        Authorization("LOA-LA-1", "LA", frozenset({"oimp"}), date(2024, 1, 5)),
        CorrespondingAdjustment.APPLIED,
    )
    decision = gate().check_transfer(
        transfer(
            (block,),
            (row(9, block, "bri", "host-la"),),
            source=("bri", "host-la"),
            destination=("shenzhen", "buyer"),
        )
    )
    assert decision.allowed, decision.violations


def test_units_already_retired_elsewhere_are_denied_as_double_use() -> None:
    block = vcs()
    retired_mirror = row(
        12,
        vcs(1, 50, series="guangdong-mirror"),
        "guangdong",
        "x",
        HoldingStatus.RETIRED,
        origin=BlockId(Program.VCS, "", 1001, 1050),
    )
    decision = gate().check_transfer(
        transfer(
            (block,),
            (row(7, block, "hkmo", "seller"), retired_mirror),
            source=("hkmo", "seller"),
            destination=("shenzhen", "buyer"),
        )
    )
    assert not decision.allowed
    assert ids(decision) == {"CR-DC-0003"}
    (double_use,) = decision.violations
    assert double_use.blocks == (block.id,)
    assert "retired at guangdong" in double_use.message
    assert ("known_status", "retired") in double_use.details


def test_a_second_live_mirror_of_the_same_origin_is_double_issuance() -> None:
    block = vcs()
    other = row(
        13,
        vcs(1, 100, series="guangdong-mirror"),
        "guangdong",
        "x",
        origin=block.id,
    )
    decision = gate().check_transfer(
        transfer(
            (block,),
            (row(7, block, "hkmo", "seller"), other),
            source=("hkmo", "seller"),
            destination=("shenzhen", "buyer"),
        )
    )
    assert ids(decision) == {"CR-DC-0001"}


def test_a_mirror_returning_to_the_venue_is_not_a_double_of_its_bridged_origin() -> None:
    origin = vcs()
    mirror = vcs(1, 100, series="shenzhen-mirror")
    known = (
        row(7, origin, "verra", "venue-hkmo", HoldingStatus.BRIDGED),
        row(8, mirror, "shenzhen", "buyer", origin=origin.id),
    )
    decision = gate().check_transfer(
        transfer(
            (origin,),
            known,
            source=("shenzhen", "buyer"),
            destination=("hkmo", "seller"),
            kind=TransferKind.RETURN,
        )
    )
    assert decision == RulesDecision(
        allowed=True, pack_versions=("hkmo@2024-10-30", "baseline@2000-01-01")
    )


def test_a_mirror_returning_home_gets_the_baseline_pack_only() -> None:
    origin = vcs()
    half = vcs(1001, 1050)
    mirrors = (
        row(8, vcs(1, 50, series="shenzhen-mirror"), "shenzhen", "b", origin=half.id),
        row(
            9,
            vcs(51, 100, series="shenzhen-mirror"),
            "shenzhen",
            "b",
            origin=BlockId(Program.VCS, "", 1051, 1100),
        ),
    )
    decision = gate().check_transfer(
        transfer(
            (half,),
            (row(7, origin, "verra", "owner", HoldingStatus.BRIDGED), *mirrors),
            source=("shenzhen", "b"),
            destination=("verra", "owner"),
            kind=TransferKind.RETURN,
        )
    )
    assert decision == RulesDecision(allowed=True, pack_versions=("baseline@2000-01-01",))


SECOND_PHASE_DAY = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
"""In the second phase, while airlines still cancel units for first-phase obligations."""


def corsia_eligible() -> UnitBlock:
    """A VCU meeting every first-phase condition: letter, adjustment, registry tag."""
    return dataclasses.replace(
        vcs(),
        authorization=Authorization("LOA-ID-9", "ID", frozenset({"corsia"}), date(2024, 6, 3)),
        corresponding_adjustment=CorrespondingAdjustment.APPLIED,
        labels=frozenset({"corsia_eligible"}),
    )


def corsia_for(
    block: UnitBlock, compliance_year: int, at: datetime = SECOND_PHASE_DAY
) -> RulesDecision:
    return gate().check_transfer(
        transfer(
            (block,),
            (row(7, block, "hkmo", "seller"),),
            source=("hkmo", "seller"),
            destination=("shenzhen", "airline"),
            use="corsia",
            at=at,
            compliance_year=compliance_year,
        )
    )


def test_a_corsia_use_is_decided_by_the_corsia_pack_too() -> None:
    decision = corsia_for(vcs(), 0, at=AT)
    assert ids(decision) == {"CR-CORSIA-0005", "CR-CORSIA-0006", "CR-CORSIA-0007"}
    assert "corsia@2024-10-31" in decision.pack_versions
    # The baseline ran under both packs; its versions and violations appear once.
    assert decision.pack_versions.count("baseline@2000-01-01") == 1


def test_a_corsia_use_from_the_second_phase_is_refused_for_the_missing_list() -> None:
    """The phase changes at midnight market time (UTC+8) on 1 Jan 2027, not at midnight UTC."""
    block = vcs()
    first_phase = corsia_for(block, 0, at=datetime(2026, 12, 31, 15, 59, tzinfo=UTC))
    assert ids(first_phase) == {"CR-CORSIA-0005", "CR-CORSIA-0006", "CR-CORSIA-0007"}
    assert "corsia@2024-10-31" in first_phase.pack_versions
    second_phase = corsia_for(block, 0, at=datetime(2026, 12, 31, 16, 0, tzinfo=UTC))
    (refused,) = second_phase.violations
    assert refused.rule_id == "CR-CORSIA-0008"
    assert refused.blocks == (block.id,)
    assert "the pack does not hold the ICAO list of CORSIA eligible emissions units" in (
        refused.message
    )
    assert "corsia@2027-01-01" in second_phase.pack_versions


def test_a_first_phase_obligation_met_in_the_second_phase_is_decided_under_the_first() -> None:
    allowed = corsia_for(corsia_eligible(), 2026)
    assert allowed.allowed, allowed.violations
    assert "corsia@2024-10-31" in allowed.pack_versions
    assert "corsia@2027-01-01" not in allowed.pack_versions
    refused = corsia_for(vcs(), 2026)
    assert ids(refused) == {"CR-CORSIA-0005", "CR-CORSIA-0006", "CR-CORSIA-0007"}
    assert "corsia@2024-10-31" in refused.pack_versions


def test_a_first_phase_obligation_met_after_the_cancellation_deadline_is_refused() -> None:
    """The first phase closes at the end of 31 Jan 2028, market time (UTC+8)."""
    block = corsia_eligible()
    last_minute = corsia_for(block, 2026, at=datetime(2028, 1, 31, 15, 59, tzinfo=UTC))
    assert last_minute.allowed, last_minute.violations
    assert "corsia@2024-10-31" in last_minute.pack_versions
    late = corsia_for(block, 2026, at=datetime(2028, 1, 31, 16, 0, tzinfo=UTC))
    (closed,) = late.violations
    assert closed.rule_id == "CR-ENGINE-0004"
    assert closed.blocks == (block.id,)
    assert "closed at its surrender deadline" in closed.message
    assert "corsia first_phase (2024-2026) had to be met by 2028-01-31" in closed.message
    assert "decided on 2028-02-01" in closed.message
    assert "31 Jan 2028" in closed.source
    assert ("surrender_deadline", "2028-01-31") in closed.details
    # Still decided under the first phase's rules, which the unit meets.
    assert "corsia@2024-10-31" in late.pack_versions
    assert "corsia@2027-01-01" not in late.pack_versions


def test_a_pilot_year_is_decided_under_the_pilot_rules() -> None:
    # Pilot units had to be for reductions on or before 31 Dec 2020; these are of 2021.
    refused = corsia_for(corsia_eligible(), 2022)
    assert "CR-CORSIA-0003" in ids(refused)
    assert "corsia@2021-01-01" in refused.pack_versions


@pytest.mark.parametrize("compliance_year", [2027, 0])
def test_a_second_phase_obligation_or_none_is_refused_for_the_missing_list(
    compliance_year: int,
) -> None:
    (refused,) = corsia_for(corsia_eligible(), compliance_year).violations
    assert refused.rule_id == "CR-CORSIA-0008"


def test_a_second_phase_obligation_is_refused_even_before_the_phase_starts() -> None:
    decision = corsia_for(corsia_eligible(), 2027, at=AT)
    assert ids(decision) == {"CR-CORSIA-0008"}
    assert "corsia@2027-01-01" in decision.pack_versions


def test_the_destination_market_decides_on_the_transfer_day_whatever_the_obligation_year() -> None:
    """Only the CORSIA evaluation moves to the obligation's year: the market pack and the
    baseline under it keep the transfer's day."""
    for_2022 = corsia_for(corsia_eligible(), 2022, at=AT)
    assert "corsia@2021-01-01" in for_2022.pack_versions
    # Shenzhen's version of 1 Oct 2024 is in force on the transfer's day (1 Mar 2025), its
    # version of 1 Jul 2022 on the 2022 obligation's decision day.
    assert "shenzhen@2024-10-01" in for_2022.pack_versions
    assert "shenzhen@2022-07-01" not in for_2022.pack_versions


def test_an_unknown_destination_and_units_missing_from_the_ledger_fail_closed() -> None:
    block = vcs()
    held = (row(7, block, "hkmo", "seller"),)
    unknown = gate().check_transfer(
        transfer((block,), held, source=("hkmo", "seller"), destination=("x", "y"))
    )
    assert ids(unknown) == {"CL-GATE-0001"}
    missing = gate().check_transfer(
        transfer((block,), (), source=("hkmo", "seller"), destination=("shenzhen", "buyer"))
    )
    assert ids(missing) == {"CL-GATE-0003"}
    assert missing.violations[0].blocks == (block.id,)


def test_a_naive_clock_is_a_programming_error() -> None:
    block = vcs()
    check = transfer(
        (block,),
        (row(7, block, "hkmo", "seller"),),
        source=("hkmo", "seller"),
        destination=("shenzhen", "buyer"),
        at=datetime(2025, 3, 1),
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        gate().check_transfer(check)


# ----------------------------------------------------------------------------------- uses


def retirement(block: UnitBlock, known: tuple[LedgerHolding, ...], registry: str) -> UseCheck:
    request = UseRequest(
        kind="retirement",
        account=AccountRef(registry, "buyer"),
        units=(block.id,),
        beneficiary="ACME",
    )
    return UseCheck(request, (block,), known, AT)


def test_retiring_a_mirror_whose_origin_is_bridged_is_allowed() -> None:
    origin = vcs()
    mirror = vcs(1, 100, series="shenzhen-mirror")
    known = (
        row(7, origin, "verra", "venue-hkmo", HoldingStatus.BRIDGED),
        row(8, mirror, "shenzhen", "buyer", origin=origin.id),
    )
    decision = gate().check_use(retirement(mirror, known, "shenzhen"))
    assert decision.allowed, decision.violations


def test_retiring_a_mirror_whose_origin_was_retired_is_double_use() -> None:
    origin = vcs()
    mirror = vcs(1, 100, series="shenzhen-mirror")
    known = (
        row(7, origin, "verra", "owner", HoldingStatus.RETIRED),
        row(8, mirror, "shenzhen", "buyer", origin=origin.id),
    )
    decision = gate().check_use(retirement(mirror, known, "shenzhen"))
    assert ids(decision) == {"CR-DC-0003"}
    # Reported in the serials the request named (the mirror's), not the origin's.
    assert decision.violations[0].blocks == (mirror.id,)


def surrender(
    blocks: tuple[UnitBlock, ...], jurisdiction: str, registry: str, year: int = 2024
) -> UseCheck:
    request = UseRequest(
        kind="surrender",
        account=AccountRef(registry, "entity-7"),
        units=tuple(b.id for b in blocks),
        entity_id="SZ-0007",
        compliance_year=year,
        jurisdiction=jurisdiction,
    )
    known = tuple(row(i, b, registry, "entity-7") for i, b in enumerate(blocks, start=1))
    return UseCheck(request, blocks, known, AT)


SZ_ENTITY = EntityYear(
    entity_id="SZ-0007",
    compliance_year=2024,
    verified_emissions=5000,
    allowances_due=4800,
    offsets_surrendered=(OffsetUse("CCER", 300, "CN", "Xinjiang"),),
)


def test_a_surrender_within_the_offset_limit_is_allowed() -> None:
    decision = gate(("shenzhen", SZ_ENTITY)).check_use(
        surrender((ccer(1, 200),), "shenzhen", "shenzhen")
    )
    assert decision.allowed, decision.violations
    assert decision.pack_versions == ("shenzhen@2024-10-01", "baseline@2000-01-01")


def test_a_surrender_over_the_offset_limit_is_denied_with_limit_used_and_asked() -> None:
    block = ccer(1, 300)
    decision = gate(("shenzhen", SZ_ENTITY)).check_use(surrender((block,), "shenzhen", "shenzhen"))
    assert ids(decision) == {"CR-SZ-0006"}
    (limit,) = decision.violations
    figures = dict(limit.details)
    assert (figures["limit"], figures["already_used"], figures["asked"]) == ("500", "300", "300")
    assert limit.blocks == (block.id,)
    # The limit rests on figures the pack marks unconfirmed: the reviewer is told which.
    assert figures["unconfirmed_params"] == "offset_limit_programs,offset_limit_share"


def test_a_surrender_without_an_entity_record_is_denied_not_guessed() -> None:
    decision = gate().check_use(surrender((ccer(1, 10),), "shenzhen", "shenzhen"))
    assert not decision.allowed
    refusal = decision.violations[0]
    assert refusal.rule_id == "CL-ENTITY-0001"
    assert "SZ-0007" in refusal.message
    assert "2024" in refusal.message


def test_a_record_for_another_entity_or_year_is_refused() -> None:
    wrong_year = dataclasses.replace(SZ_ENTITY, compliance_year=2023)

    class Sloppy:
        def get(self, entity_id: str, jurisdiction: str, year: int) -> EntityYear | None:
            return wrong_year

    decision = ComplianceRules(Sloppy()).check_use(
        surrender((ccer(1, 10),), "shenzhen", "shenzhen")
    )
    assert ids(decision) == {"CL-ENTITY-0002"}


def test_a_decision_lists_every_violation() -> None:
    hydro = ccer(1, 300, project_type="hydro", region="CN-GD")
    shanghai = ccer(301, 600, project_id="CCER-0099", region="CN-SH")
    entity = EntityYear("SZ-0007", 2024, verified_emissions=5000, allowances_due=5000)
    decision = gate(("guangdong", entity)).check_use(
        surrender((hydro, shanghai), "guangdong", "guangdong")
    )
    assert ids(decision) == {
        "CR-GD-0002",  # 600 offsets, the limit is strictly below 500
        "CR-GD-0003",  # 300 of 600 from Guangdong, 70% needed
        "CR-GD-0004",  # hydro
        "CR-GD-0006",  # Shanghai is another pilot region; CN-GD does not say it is not Shenzhen
    }
    by_rule = {v.rule_id: v for v in decision.violations}
    assert by_rule["CR-GD-0002"].blocks == (hydro.id, shanghai.id)
    assert by_rule["CR-GD-0004"].blocks == (hydro.id,)
    pilots = {v.blocks: v.message for v in decision.violations if v.rule_id == "CR-GD-0006"}
    assert set(pilots) == {(hydro.id,), (shanghai.id,)}
    assert "origin CN/Shanghai is excluded" in pilots[(shanghai.id,)]
    assert "the city is needed to decide" in pilots[(hydro.id,)]
    assert dict(by_rule["CR-GD-0002"].details)["limit"] == "499"


def test_gec_exclusivity_fails_closed_when_the_gec_status_is_not_recorded() -> None:
    block = ccer(1, 100, project_type="offshore_wind_deep_sea")
    entity = EntityYear("SZ-0007", 2024, verified_emissions=50_000, allowances_due=50_000)
    decision = gate(("national", entity)).check_use(surrender((block,), "national", "national"))
    assert "CL-GATE-0006" in ids(decision)
    gec = next(v for v in decision.violations if v.rule_id == "CL-GATE-0006")
    assert ("rule", "CR-NAT-0007") in gec.details


@pytest.mark.parametrize("year", [2019, 2020])
def test_the_national_first_cycle_is_surrendered_under_the_2021_measures(year: int) -> None:
    """2019 and 2020 were surrendered by 31 Dec 2021 under the measures in force from 1 Feb
    2021: they are decided under that version, not refused for having none in force."""
    block = ccer(1, 100)
    entity = EntityYear("SZ-0007", year, verified_emissions=50_000, allowances_due=2_000)
    check = surrender((block,), "national", "national", year)
    decision = gate(("national", entity)).check_use(check)
    assert decision == RulesDecision(
        allowed=True, pack_versions=("national@2021-02-01", "baseline@2000-01-01")
    )
    over = surrender((ccer(1, 101),), "national", "national", year)
    (limit,) = gate(("national", entity)).check_use(over).violations
    assert (limit.rule_id, dict(limit.details)["limit"]) == ("CR-NAT-0002", "100")
    # The cycle is sourced (secondary): the refusal rests on no unconfirmed figure.
    assert "unconfirmed_params" not in dict(limit.details)


@pytest.mark.parametrize("year", [2019, 2020])
def test_a_first_cycle_surrender_without_a_record_is_decided_under_the_cycles_rules(
    year: int,
) -> None:
    """Without the entity's record the year's rules are still those of the cycle's deadline:
    the refusal is for the missing record and the limit it leaves unchecked, not for having
    no version in force."""
    decision = gate().check_use(surrender((ccer(1, 100),), "national", "national", year))
    assert [v.rule_id for v in decision.violations] == ["CL-ENTITY-0001", "CR-NAT-0002"]
    record, limit = decision.violations
    assert f"no verified emissions recorded for entity SZ-0007 in year {year}" in record.message
    assert "no record of the entity for the compliance year" in limit.message
    assert decision.pack_versions == ("national@2021-02-01", "baseline@2000-01-01")


def test_ccer_recorded_before_2017_are_surrendered_nationally_until_2024_ends_in_china() -> None:
    """The label the registry reports with the units reaches the national pack, and the
    surrender's market day (UTC+8) is the day of use: 1 Jan 2025 begins at 16:00 UTC."""
    old = dataclasses.replace(
        ccer(1, 100),
        vintage_start=date(2015, 1, 1),
        vintage_end=date(2015, 12, 31),
        labels=frozenset({"ccer_recorded_before_2017_03_14"}),
    )
    entity = EntityYear("SZ-0007", 2023, verified_emissions=50_000, allowances_due=50_000)
    rules = gate(("national", entity))
    check = surrender((old,), "national", "national", 2023)
    # Without the project's listing the construction date is unknown: old CCER are outside it.
    on_time = rules.check_use(
        dataclasses.replace(check, at=datetime(2024, 12, 31, 15, 59, tzinfo=UTC))
    )
    assert on_time.allowed, on_time.violations
    late = rules.check_use(dataclasses.replace(check, at=datetime(2024, 12, 31, 16, 0, tzinfo=UTC)))
    (refused,) = late.violations
    assert (refused.rule_id, refused.blocks) == ("CR-NAT-0009", (old.id,))
    assert dict(refused.details)["last_day"] == "2024-12-31"
    unlabelled = dataclasses.replace(old, labels=frozenset())
    new = rules.check_use(surrender((unlabelled,), "national", "national", 2023))
    assert ids(new) == {"CR-NAT-0006"}


def test_a_national_year_before_the_first_cycle_has_no_rules() -> None:
    entity = EntityYear("SZ-0007", 2018, verified_emissions=50_000, allowances_due=50_000)
    decision = gate(("national", entity)).check_use(
        surrender((ccer(1, 100),), "national", "national", 2018)
    )
    (refused,) = decision.violations
    assert refused.rule_id == "CL-GATE-0002"
    assert "pack national has no version in force on 2018-12-31" in refused.message


# ----------------------------------------------------------------------------- ListProject


def test_a_project_already_issued_under_ccer_for_the_same_period_is_refused() -> None:
    project = ProjectListing(
        program="VCS",
        project_id="1748",
        project_type="wind",
        country="CN",
        region="CN-XJ",
        crediting_period_start=date(2022, 1, 1),
        crediting_period_end=date(2022, 12, 31),
        other_registrations=(
            OtherRegistration("CCER", "CCER-0042", date(2022, 6, 1), date(2023, 5, 31)),
        ),
    )
    outcome = list_project(project, "shenzhen", date(2025, 3, 1))
    assert not outcome.listed
    assert [v.rule_id for v in outcome.refusals] == ["CR-DC-0002"]
    assert "CCER project CCER-0042" in outcome.refusals[0].message
    assert not any(e.decision.allowed for e in outcome.eligibility)


def test_a_vcs_project_lists_in_shenzhen_for_listing_and_voluntary_retirement() -> None:
    project = ProjectListing(
        program="VCS",
        project_id="1748",
        project_type="wind",
        country="ID",
        crediting_period_start=date(2022, 1, 1),
        crediting_period_end=date(2022, 12, 31),
    )
    outcome = list_project(project, "shenzhen", date(2025, 3, 1))
    assert outcome.listed
    assert outcome.refusals == ()
    eligible = {e.use: e.decision.allowed for e in outcome.eligibility}
    assert eligible == {"compliance": False, "listing": True, "voluntary_retirement": True}
    compliance = next(e for e in outcome.eligibility if e.use == "compliance")
    assert {v.rule_id for v in compliance.decision.violations} == {"CR-SZ-0001"}
    assert outcome.pack_versions == ("shenzhen@2024-10-01", "baseline@2000-01-01")


def test_list_project_refuses_bad_input() -> None:
    project = ProjectListing(program="VCS", project_id="1")
    with pytest.raises(InvalidRequest, match="jurisdiction"):
        list_project(project, "atlantis", date(2025, 3, 1))
    backwards = dataclasses.replace(
        project,
        crediting_period_start=date(2022, 1, 1),
        crediting_period_end=date(2021, 1, 1),
    )
    with pytest.raises(InvalidRequest, match="crediting_period_end"):
        list_project(backwards, "shenzhen", date(2025, 3, 1))


# --------------------------------------------------------------------- listed project facts


class Projects:
    """Listed projects' facts (the real ProjectRecords port, in memory)."""

    def __init__(
        self,
        *listings: ProjectListing,
        refused: dict[tuple[str, str], RefusedListing] | None = None,
    ) -> None:
        self._listings = {(p.program, p.project_id): p for p in listings}
        self._refused = {(*project, r.jurisdiction): r for project, r in (refused or {}).items()}

    def get(self, program: str, project_id: str) -> ProjectListing | None:
        return self._listings.get((program, project_id))

    def refused(self, program: str, project_id: str, jurisdiction: str) -> RefusedListing | None:
        return self._refused.get((program, project_id, jurisdiction))


NATIONAL_ENTITY = EntityYear("SZ-0007", 2024, verified_emissions=50_000, allowances_due=50_000)


def test_listed_facts_decide_rules_the_serial_cannot() -> None:
    block = ccer(1, 100, project_type="offshore_wind_deep_sea")
    check = surrender((block,), "national", "national")
    unlisted = ComplianceRules(Entities(("national", NATIONAL_ENTITY))).check_use(check)
    # Without the project's facts both rules fail closed.
    assert {"CR-NAT-0006", "CL-GATE-0006"} <= ids(unlisted)
    listed = ProjectListing(
        program="CCER",
        project_id="CCER-0042",
        country="CN",
        region="Xinjiang",
        project_type="offshore_wind_deep_sea",
        construction_start=date(2019, 5, 1),
        gec_status="frozen",
    )
    decided = ComplianceRules(
        Entities(("national", NATIONAL_ENTITY)), projects=Projects(listed)
    ).check_use(check)
    assert not {"CR-NAT-0006", "CL-GATE-0006", "CR-NAT-0007"} & ids(decided)
    too_old = dataclasses.replace(listed, construction_start=date(2011, 1, 1), gec_status="active")
    refused = ComplianceRules(
        Entities(("national", NATIONAL_ENTITY)), projects=Projects(too_old)
    ).check_use(check)
    assert {"CR-NAT-0006", "CR-NAT-0007"} <= ids(refused)
    assert "CL-GATE-0006" not in ids(refused)


# ------------------------------------------------------------------------ refused listings

DOUBLE_ISSUED = RefusedListing(
    "abc123",
    "shenzhen",
    (
        RuleViolation(
            "CR-DC-0002",
            "Double issuance: the same project's reductions for an overlapping period are "
            "issued under another program: GS GS-1748",
            "GCC Standard on Avoidance of Double Counting v1.0",
        ),
    ),
)


def test_a_refused_listing_refuses_its_projects_units_where_it_was_refused() -> None:
    refused, other = vcs(1001, 1100), dataclasses.replace(vcs(2001, 2100), project_id="2000")
    rows = (row(7, refused, "verra", "seller"), row(8, other, "verra", "seller"))
    rules = ComplianceRules(Entities(), projects=Projects(refused={("VCS", "1748"): DOUBLE_ISSUED}))

    def to(destination: str) -> RulesDecision:
        return rules.check_transfer(
            transfer(
                (refused, other), rows, source=("verra", "seller"), destination=(destination, "b")
            )
        )

    (violation,) = to("shenzhen").violations
    assert violation.rule_id == "CR-DC-0002"
    assert violation.blocks == (refused.id,)
    assert "listings/abc123" in violation.message and "in shenzhen" in violation.message
    assert ("listing", "listings/abc123") in violation.details
    assert ("jurisdiction", "shenzhen") in violation.details
    assert violation.source == DOUBLE_ISSUED.refusals[0].source
    # Refused in Shenzhen, never listed in Hong Kong: Hong Kong's rules decide there.
    assert to("hkmo").allowed


def test_a_mirror_of_a_refused_project_may_still_return_home() -> None:
    origin = vcs()
    mirror = row(8, vcs(1, 100, series="shenzhen-mirror"), "shenzhen", "b", origin=origin.id)
    rules = ComplianceRules(Entities(), projects=Projects(refused={("VCS", "1748"): DOUBLE_ISSUED}))
    decision = rules.check_transfer(
        transfer(
            (origin,),
            (row(7, origin, "verra", "owner", HoldingStatus.BRIDGED), mirror),
            source=("shenzhen", "b"),
            destination=("verra", "owner"),
            kind=TransferKind.RETURN,
        )
    )
    assert decision.allowed, decision.violations
