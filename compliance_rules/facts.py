"""The facts the engine decides on: frozen, typed, free of any I/O.

A decision is asked about a :class:`TransferFacts` (units about to move, and what for) or a
:class:`ListingFacts` (a project asking to be listed). Quantities are whole tCO2e as ``int``;
a non-CO2 block states its gas and the IPCC report its tCO2e were converted with, and every
conversion is ``Decimal``; there is no float anywhere, because a limit computed in binary
floating point can refuse a surrender by 1 t.

Programs are plain strings (``"VCS"``, ``"CCER"``, ``"SZ-CI"``, ``"BRI-ITMO"`` ...), not an enum:
packs name programs the gateway does not bridge yet (CORSIA accepts ACR, CAR, CDM, ART), and a
pack must be able to name them without a code change.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal


class Use(enum.StrEnum):
    """What the units are moved for; packs accept programs per use."""

    COMPLIANCE = "compliance"
    VOLUNTARY_RETIREMENT = "voluntary_retirement"
    LISTING = "listing"
    CORSIA = "corsia"


class CaStatus(enum.StrEnum):
    """Corresponding-adjustment status of a block (same values as the bridge's model)."""

    NOT_APPLICABLE = "not_applicable"
    PENDING = "pending"
    APPLIED = "applied"


class HoldingStatus(enum.StrEnum):
    """Status of a known block at the registry holding it (same values as the bridge's model)."""

    ACTIVE = "active"
    LOCKED = "locked"
    BRIDGED = "bridged"
    RETIRED = "retired"
    CANCELLED = "cancelled"
    SURRENDERED = "surrendered"


class GecStatus(enum.StrEnum):
    """Green electricity certificates (GEC) for the generation behind a block.

    NEA/MEE notice 国能综通新能[2024]124号: for a CCER project, untraded GECs of the
    crediting period are frozen at registration and cancelled for the verified reductions.
    ``active`` and ``traded`` mean the same MWh still earns (or earned) a GEC benefit.
    """

    NONE = "none"
    FROZEN = "frozen"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    TRADED = "traded"


@dataclass(frozen=True, order=True)
class Period:
    """An inclusive date range (vintage or monitoring period)."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")

    def overlaps(self, other: Period) -> bool:
        """True when both periods share at least one day."""
        return self.start <= other.end and other.start <= self.end


@dataclass(frozen=True)
class Registration:
    """The same project registered under another program, with what that program issued."""

    program: str
    project_id: str
    issued_periods: tuple[Period, ...] = ()
    """Monitoring periods for which that program has issued units."""


@dataclass(frozen=True)
class Project:
    """A mitigation project as registered in one program."""

    program: str
    project_id: str
    country: str
    """ISO 3166-1 alpha-2 host country."""
    region: str = ""
    """Province-level region (``"Guangdong"``, ``"Xinjiang"``), for origin rules; a region
    written ``"Guangdong/Meizhou"`` names the province and the city in one field."""
    city: str = ""
    """City inside the region (``"Meizhou"``), for origin lists that name cities. A place list
    naming a city is never satisfied by a project that names only its province: the origin
    rules then fail closed and ask for the city."""
    project_type: str = ""
    """Lower-case type key used by packs: ``wind``, ``hydro``, ``solar_thermal`` ..."""
    methodology: str = ""
    start_date: date | None = None
    """Start of the project activity (CORSIA's "activity start")."""
    construction_start: date | None = None
    """Start of construction (CCER eligibility)."""
    labels: frozenset[str] = frozenset()
    """Project-level labels, e.g. ``pre_cdm``."""
    registrations: tuple[Registration, ...] = ()
    """Registrations of the same project in other programs."""


@dataclass(frozen=True)
class Authorization:
    """A host-country letter of authorization (Paris Agreement Art. 6.2, CORSIA)."""

    letter_id: str
    host_country: str
    authorized_uses: frozenset[str]
    """Authorized purposes as written in the letter, e.g. ``{"ndc", "oimp", "corsia"}``."""


@dataclass(frozen=True, order=True)
class BlockRef:
    """The identity of a serial block: program, serial series and inclusive range."""

    program: str
    serial_series: str
    serial_start: int
    serial_end: int

    def __post_init__(self) -> None:
        if self.serial_start < 0:
            raise ValueError(f"serial_start must be >= 0, got {self.serial_start}")
        if self.serial_end < self.serial_start:
            raise ValueError(f"serial_end {self.serial_end} is below {self.serial_start}")

    @property
    def quantity(self) -> int:
        """Number of units in the inclusive range."""
        return self.serial_end - self.serial_start + 1

    def overlaps(self, other: BlockRef) -> bool:
        """True when both share a serial of the same program and series."""
        return (
            self.program == other.program
            and self.serial_series == other.serial_series
            and self.serial_start <= other.serial_end
            and other.serial_start <= self.serial_end
        )

    def __str__(self) -> str:
        series = f"/{self.serial_series}" if self.serial_series else ""
        return f"{self.program}{series}:{self.serial_start}-{self.serial_end}"


@dataclass(frozen=True)
class Block:
    """A block of units the decision is about (one tCO2e per serial)."""

    ref: BlockRef
    project: Project
    vintage: Period
    """Vintage, or monitoring period, of the reductions."""
    gas: str = "CO2"
    gwp_basis: str = ""
    """The IPCC report whose GWP converted ``gas`` into the block's tCO2e (``"AR5"``,
    ``"SAR"``); required when ``gas`` is not CO2, because the quantity and this basis
    determine the gas mass (quantity / GWP), which the pack's own table re-expresses."""
    authorization: Authorization | None = None
    ca_status: CaStatus = CaStatus.NOT_APPLICABLE
    labels: frozenset[str] = frozenset()
    """Unit-level labels, e.g. ``corsia_eligible``, ``tokenized``, or
    ``ccer_recorded_before_2017_03_14`` for CCER recorded (备案) under the 2012 interim
    measures before issuance was suspended on 14 Mar 2017, as the registry holding them
    reports. Neither the serial (no public CCER format) nor the vintage says it: reductions
    before 14 Mar 2017 would set old CCER apart only if the 2023 measures' cut-off for
    reductions were confirmed, and it is not (the national pack's
    ``ccer_reduction_vintage_cutoff``). ``ccer_cancelled_first_cycle_unused`` marks CCER
    cancelled at their registry for the national ETS's first cycle but not counted there,
    which MEE's 237号 lets offset the 2021 and 2022 surrenders; their registry reports it
    too."""
    gec_status: GecStatus = GecStatus.NONE
    holding_id: str = ""
    """The gateway's id of the holding this block sits in; a known block with the same
    non-empty id is this block itself, not another one."""

    def __post_init__(self) -> None:
        if self.ref.program != self.project.program:
            raise ValueError(
                f"block program {self.ref.program} differs from its project's "
                f"{self.project.program}"
            )

    @property
    def program(self) -> str:
        """The originating program."""
        return self.ref.program

    @property
    def quantity(self) -> int:
        """Number of units (tCO2e)."""
        return self.ref.quantity


@dataclass(frozen=True)
class KnownBlock:
    """Another block the gateway knows of, anywhere, with its status there."""

    ref: BlockRef
    status: HoldingStatus
    registry: str = ""
    holding_id: str = ""


@dataclass(frozen=True)
class OffsetUse:
    """Offsets an entity has already surrendered for the compliance year."""

    program: str
    quantity: int
    country: str = ""
    region: str = ""
    city: str = ""


@dataclass(frozen=True)
class EntityYear:
    """A covered entity in one compliance year, with what it owes and has already used."""

    entity_id: str
    compliance_year: int
    verified_emissions: int
    """Verified emissions of the year, tCO2e."""
    allowances_due: int
    """Allowances the entity must surrender for the year (应清缴配额)."""
    offsets_surrendered: tuple[OffsetUse, ...] = ()
    covered_by_national_ets: bool = False
    """True when the entity is a key emitter of the national ETS (pilot carve-outs)."""


@dataclass(frozen=True)
class TransferFacts:
    """Units about to move to a destination jurisdiction for a use."""

    use: Use
    blocks: tuple[Block, ...]
    destination_country: str
    """ISO alpha-2 of where the units land (``CN``, ``HK``, ``MO``): decides whether a
    transfer is cross-border and so needs a corresponding adjustment."""
    entity: EntityYear | None = None
    """Required for compliance surrenders (offset limits); absent for other uses."""
    known_blocks: tuple[KnownBlock, ...] = ()
    """Other live or used blocks the gateway knows of, for the double-counting checks."""
    compliance_year: int | None = None
    """The year of the obligation the units are for, when it is known without the entity's
    record (a CORSIA offsetting obligation named by a transfer instruction). With an
    ``entity`` it may be omitted, and if given must be the entity's year."""

    def __post_init__(self) -> None:
        if (
            self.entity is not None
            and self.compliance_year is not None
            and self.compliance_year != self.entity.compliance_year
        ):
            raise ValueError(
                f"compliance_year {self.compliance_year} differs from the entity's "
                f"{self.entity.compliance_year}"
            )

    @property
    def obligation_year(self) -> int | None:
        """The compliance year the request is for: the entity's, else ``compliance_year``."""
        return self.entity.compliance_year if self.entity is not None else self.compliance_year


@dataclass(frozen=True)
class ListingFacts:
    """A project whose owner asks to list it (ListProject, foreign-issuer journey)."""

    project: Project
    periods: tuple[Period, ...]
    """The monitoring periods whose reductions would be brought in."""
    destination_country: str = "CN"
    authorization: Authorization | None = None
    """The letter of authorization the owner declares for the project, if any. Its issuing
    country is decided at listing by the authorization rules (a letter from a country that
    does not host the project authorizes none of its units); what it authorizes, and each
    unit's own letter, on each transfer."""


GwpTable = Mapping[str, Decimal | int]
"""Gas name to 100-year GWP, as a multiple of CO2."""


def co2e(gas: str, amount: Decimal, gwp: GwpTable) -> Decimal:
    """Convert ``amount`` tonnes of ``gas`` to tCO2e with a pack's GWP table.

    Args:
        gas: Gas name as in the table (``"CH4"``, ``"SF6"``).
        amount: Tonnes of that gas.
        gwp: The pack's GWP table.

    Returns:
        The exact CO2-equivalent in tonnes.

    Raises:
        KeyError: The table has no value for ``gas``.
    """
    return amount * gwp[gas]


__all__ = [
    "Authorization",
    "Block",
    "BlockRef",
    "CaStatus",
    "EntityYear",
    "GecStatus",
    "GwpTable",
    "HoldingStatus",
    "KnownBlock",
    "ListingFacts",
    "OffsetUse",
    "Period",
    "Project",
    "Registration",
    "TransferFacts",
    "Use",
    "co2e",
]
