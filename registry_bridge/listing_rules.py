"""How a market decides a listing: the one decision ListProject and the offline
``carbonlink rules evaluate --listing`` both take.

Pure (the rules engine and plain values, no database or bridge): the gateway's rules gate
calls it with the jurisdiction's pack, and the command line with the pack it is given, so
that the offline answer cannot drift from the gateway's. The two once differed: the gate
decided by the market's own listing rules, the command did not, and so said LISTABLE for a
project the gateway refused (Shenzhen before its 2023 plan admits no foreign project).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

from compliance_rules import (
    Authorization,
    ListingDecision,
    ListingFacts,
    Period,
    Project,
    Registration,
    RulePack,
    evaluate_listing,
    load_builtin,
)
from registry_bridge.errors import InvalidRequest
from registry_bridge.listing import ProjectListing

BASELINE = "baseline"
CORSIA = "corsia"
ARTICLE6 = "article6-bri"

PACK_BY_REGISTRY: Mapping[str, str] = {
    "shenzhen": "shenzhen",
    "national": "national",
    "guangdong": "guangdong",
    "hkmo": "hkmo",
    "bri": ARTICLE6,
}
"""The rule pack of each registry (or jurisdiction) that has one."""

DESTINATION_COUNTRY: Mapping[str, str] = {
    "shenzhen": "CN",
    "national": "CN",
    "guangdong": "CN",
    # NOTE(rules-gate): one registry id serves both venues and the check does not say which;
    # the country only matters to corresponding-adjustment rules, where a Hong Kong and a
    # Macau destination are both cross-border for any project not hosted there.
    "hkmo": "HK",
    # The Belt-and-Road registries span many host countries: no single destination country,
    # so every project counts as cross-border there (the stricter reading).
    "bri": "",
    "verra": "",
    "gold-standard": "",
}
"""ISO alpha-2 of where units land, for the corresponding-adjustment rules."""

NOT_A_MARKET = frozenset({CORSIA, BASELINE})
"""Packs no market lists projects under: CORSIA's is an airline offsetting scheme, which
only answers per use. Any other pack, a draft read from a file included, is taken as a
market's, so that one without a listing rule refuses (fail closed)."""


# ISO 3166-2:CN subdivision codes (2017 revision) to the province names the packs use in
# their place lists ("CN/Guangdong/Meizhou"). Hong Kong, Macau and Taiwan are left out: their
# projects carry their own ISO 3166-1 country code.
CN_PROVINCES: Mapping[str, str] = {
    "AH": "Anhui",
    "BJ": "Beijing",
    "CQ": "Chongqing",
    "FJ": "Fujian",
    "GD": "Guangdong",
    "GS": "Gansu",
    "GX": "Guangxi",
    "GZ": "Guizhou",
    "HA": "Henan",
    "HB": "Hubei",
    "HE": "Hebei",
    "HI": "Hainan",
    "HL": "Heilongjiang",
    "HN": "Hunan",
    "JL": "Jilin",
    "JS": "Jiangsu",
    "JX": "Jiangxi",
    "LN": "Liaoning",
    "NM": "Inner Mongolia",
    "NX": "Ningxia",
    "QH": "Qinghai",
    "SC": "Sichuan",
    "SD": "Shandong",
    "SH": "Shanghai",
    "SN": "Shaanxi",
    "SX": "Shanxi",
    "TJ": "Tianjin",
    "XJ": "Xinjiang",
    "XZ": "Tibet",
    "YN": "Yunnan",
    "ZJ": "Zhejiang",
}
_ISO_SUBDIVISION = re.compile(r"CN-([A-Z]{2})")


def place(country: str, region: str) -> tuple[str, str]:
    """The packs' (region, city) of a project's or unit's region: ``CN-GD`` ->
    ``("Guangdong", "")``, ``"Guangdong/Meizhou"`` -> ``("Guangdong", "Meizhou")``."""
    if country == "CN":
        match = _ISO_SUBDIVISION.fullmatch(region)
        if match is not None and match.group(1) in CN_PROVINCES:
            return CN_PROVINCES[match.group(1)], ""
    province, _, city = region.partition("/")
    return province.strip(), city.strip()


def registrations(project: ProjectListing) -> tuple[Registration, ...]:
    """The project's registrations under other programs, each with every period issued
    there (the declared list has one row per period)."""
    grouped: dict[tuple[str, str], list[Period]] = {}
    for reg in project.other_registrations:
        grouped.setdefault((reg.program, reg.project_id), []).append(
            Period(reg.issued_period_start, reg.issued_period_end)
        )
    return tuple(Registration(p, i, tuple(issued)) for (p, i), issued in grouped.items())


def listing_facts(project: ProjectListing, destination_country: str) -> ListingFacts:
    """The rules' facts of a project as its issuer lists it: the one conversion ListProject
    and ``carbonlink rules evaluate --listing`` both make, so that the offline answer is the
    gateway's (the command once placed regions and read periods its own way, and so judged
    a ``CN-GS`` wind project's origin where the gateway read Gansu).

    Args:
        project: The project as declared (``carbonlink.v1.Project``).
        destination_country: Where the market's units land (:data:`DESTINATION_COUNTRY`).

    Returns:
        The project, placed as the packs name places, its crediting period and its declared
        letter of authorization (whose country the listing rules check). Without a
        crediting period there is nothing to decide on: the engine refuses every use (fail
        closed) rather than a period being invented here.

    Raises:
        InvalidRequest: A period ends before it starts (the field is named).
    """
    for i, reg in enumerate(project.other_registrations):
        if reg.issued_period_end < reg.issued_period_start:
            raise InvalidRequest.field(
                f"project.other_registrations[{i}].issued_period_end",
                f"{reg.issued_period_end} is before issued_period_start {reg.issued_period_start}",
            )
    start, end = project.crediting_period_start, project.crediting_period_end
    periods: tuple[Period, ...] = ()
    if start is not None and end is not None:
        if end < start:
            raise InvalidRequest.field(
                "project.crediting_period_end", f"{end} is before crediting_period_start {start}"
            )
        periods = (Period(start, end),)
    region, city = place(project.country, project.region)
    letter = project.authorization
    return ListingFacts(
        project=Project(
            program=project.program,
            project_id=project.project_id,
            country=project.country,
            region=region,
            city=city,
            project_type=project.project_type,
            methodology=project.methodology,
            start_date=project.start_date,
            construction_start=project.construction_start,
            labels=project.labels,
            registrations=registrations(project),
        ),
        periods=periods,
        destination_country=destination_country,
        authorization=None
        if letter is None
        else Authorization(letter.letter_id, letter.host_country, letter.authorized_uses),
    )


def market_destination(pack_name: str) -> str | None:
    """Where units land in the market whose pack is ``pack_name``, as ListProject puts it
    (``None`` for a pack no jurisdiction lists under)."""
    for jurisdiction, name in PACK_BY_REGISTRY.items():
        if name == pack_name:
            return DESTINATION_COUNTRY.get(jurisdiction, "")
    return None


def decide_listing(pack: RulePack, facts: ListingFacts, as_of: date) -> ListingDecision:
    """Whether ``pack``'s market lists the project, and its units' eligibility per use.

    The market's own listing rules decide: a project they refuse is not listed (SZA in
    Shenzhen, CR-SZ-0009), and a version in force with no listing rule admits none
    (CR-ENGINE-0002). The built-in baseline's double-counting rules apply too.

    Args:
        pack: The market's pack.
        facts: The project and the periods it would bring in.
        as_of: The day whose rules apply.

    Returns:
        The engine's listing decision.

    Raises:
        NoVersionInForceError: ``as_of`` is before the pack's first version.
    """
    market = pack.name not in NOT_A_MARKET
    return evaluate_listing(pack, facts, as_of, baseline=load_builtin(BASELINE), market=market)


__all__ = [
    "ARTICLE6",
    "BASELINE",
    "CN_PROVINCES",
    "CORSIA",
    "DESTINATION_COUNTRY",
    "NOT_A_MARKET",
    "PACK_BY_REGISTRY",
    "decide_listing",
    "listing_facts",
    "market_destination",
    "place",
    "registrations",
]
