"""A crediting project as its issuer presents it for listing, and the answer (ListProject).

Plain values, apart from the rules that decide them (``rules_gate``) and their storage
(``projects``): the gateway converts requests into them, and its client commands need
them without the rules engine or the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from registry_bridge.model import Authorization as UnitAuthorization
from registry_bridge.transfers import RulesDecision, RuleViolation


@dataclass(frozen=True)
class OtherRegistration:
    """The same project registered under another program, with a period issued there."""

    program: str
    project_id: str
    issued_period_start: date
    issued_period_end: date


@dataclass(frozen=True)
class ProjectListing:
    """A crediting project as an issuer presents it for listing (``carbonlink.v1.Project``).

    Dates are already parsed: the gateway turns a bad ISO date into INVALID_ARGUMENT.
    """

    program: str
    """Originating program, e.g. ``"VCS"``, ``"GS"``, ``"BRI-ITMO"``."""
    project_id: str
    display_name: str = ""
    project_type: str = ""
    methodology: str = ""
    country: str = ""
    """ISO 3166-1 alpha-2 host country."""
    region: str = ""
    """Province (``"Guangdong"``, or ISO ``"CN-GD"``), optionally ``"Guangdong/Meizhou"``."""
    start_date: date | None = None
    construction_start: date | None = None
    """Construction start (CCER eligibility: after 2012-11-08)."""
    crediting_period_start: date | None = None
    crediting_period_end: date | None = None
    gec_status: str = ""
    """Green-electricity-certificate status of the generation (``GecStatus`` value);
    empty when not declared, and then GEC/CCER exclusivity refuses covered units."""
    other_registrations: tuple[OtherRegistration, ...] = ()
    """Registrations of the same project under other programs (double-issuance checks)."""
    authorization: UnitAuthorization | None = None
    """The letter of authorization declared for the project. Its issuing country is checked
    at listing (a letter from a country that does not host the project is refused by the
    pack's authorization rule, e.g. CR-A6-0002); what it authorizes, and each unit's own
    letter, on each transfer."""
    labels: frozenset[str] = frozenset()
    gas: str = "CO2"
    """Unit-level: checked on each transfer, not at listing."""


@dataclass(frozen=True)
class ListingCondition:
    """A rule a listing does not settle: it is checked on each transfer of the units."""

    rule_id: str
    message: str
    """What the rule requires, as its pack words it."""
    source: str
    """Document and clause the rule comes from."""


@dataclass(frozen=True)
class ListingEligibility:
    """Whether a listed project's units would be eligible for one use."""

    use: str
    decision: RulesDecision
    conditions: tuple[ListingCondition, ...] = ()
    """Rules that depend on unit-level facts and so are checked on each transfer: an
    allowed decision holds only subject to them."""


@dataclass(frozen=True)
class ListingOutcome:
    """The answer to ListProject."""

    listed: bool
    """True when the project is not refused: its units are admitted to the market (the
    pack's listing use allows them) and nothing refuses it as a whole."""
    eligibility: tuple[ListingEligibility, ...]
    refusals: tuple[RuleViolation, ...]
    """Violations that refuse the listing as a whole (double issuance)."""
    pack_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefusedListing:
    """A project's latest listing decision in a jurisdiction, when it refused the project.

    The project's units are refused in that jurisdiction, with these refusals, until a
    later listing there is not refused.
    """

    listing_id: str
    """The ``{listing_id}`` of its ``listings/{listing_id}`` name."""
    jurisdiction: str
    refusals: tuple[RuleViolation, ...]
    """The listing's violations that refused it as a whole, as ListProject answered them."""

    @property
    def name(self) -> str:
        """The listing's resource name (GetListing reads it)."""
        return f"listings/{self.listing_id}"


@dataclass(frozen=True)
class RecordedListing:
    """A listing as ListProject decided it."""

    listing_id: str
    project: ProjectListing
    jurisdiction: str
    as_of: date
    outcome: ListingOutcome
    requested_by: str
    created_at: datetime
    binding: bool = True
    """Taken for the gateway's today: the project's standing in ``jurisdiction``. A
    decision taken for another day only answers what that day's rules say."""
