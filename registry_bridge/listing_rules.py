"""How a market decides a listing: the one decision ListProject and the offline
``carbonlink rules evaluate --listing`` both take.

Pure (the rules engine and plain values, no database or bridge): the gateway's rules gate
calls it with the jurisdiction's pack, and the command line with the pack it is given, so
that the offline answer cannot drift from the gateway's. The two once differed: the gate
decided by the market's own listing rules, the command did not, and so said LISTABLE for a
project the gateway refused (Shenzhen before its 2023 plan admits no foreign project).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from compliance_rules import (
    ListingDecision,
    ListingFacts,
    RulePack,
    evaluate_listing,
    load_builtin,
)

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
    "CORSIA",
    "DESTINATION_COUNTRY",
    "NOT_A_MARKET",
    "PACK_BY_REGISTRY",
    "decide_listing",
    "market_destination",
]
