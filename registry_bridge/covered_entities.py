"""Covered entities of the emissions trading schemes: who they are and where they hold units.

An entity is recorded once (sector, gases, one account per registry) with its compliance
years (verified emissions and allowances due per jurisdiction and year, the
``entity_years`` table that offset limits already read). Records come through the
gateway's ``UpsertCoveredEntity`` RPC or are imported from a registry's export
(:func:`parse_entities`), and are corrected by recording them again.

Plain values and their checks only: ``entities`` stores them, and the CLI checks an
import file with this module before sending it, without the database layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from registry_bridge.errors import FieldViolation, InvalidRequest
from registry_bridge.model import has_control_characters

MAX_ID_LENGTH = 128
JURISDICTIONS = frozenset({"shenzhen", "guangdong", "national"})
"""The schemes an entity complies under (each has a rule pack and a registry)."""
GASES = frozenset({"CO2", "CH4", "N2O", "HFCs", "PFCs", "SF6", "NF3", "CF4", "C2F6"})
"""Gases an entity may be covered for: the Kyoto basket, and CF4/C2F6 by name because the
national ETS covers them for aluminium (RULES-REFERENCE §2)."""


@dataclass(frozen=True)
class ComplianceYear:
    """An entity's year in one scheme: what it emitted and must surrender."""

    jurisdiction: str
    compliance_year: int
    verified_emissions: int
    """tCO2e, verified."""
    allowances_due: int


@dataclass(frozen=True)
class CoveredEntity:
    """A covered entity as recorded in the gateway."""

    entity_id: str
    display_name: str
    sector: str
    """As the packs name sectors: ``steel``, ``cement``, ``aluminium``, ``civil_aviation``..."""
    gases: tuple[str, ...]
    accounts: Mapping[str, str]
    """Registry id -> the entity's account there."""
    years: tuple[ComplianceYear, ...] = field(default=())


@dataclass(frozen=True)
class ComplianceYearRef:
    """One compliance year of an entity, by its scheme and year (one to withdraw)."""

    jurisdiction: str
    compliance_year: int


@dataclass(frozen=True)
class YearWithdrawal:
    """A compliance year withdrawn from an entity's record, with the figures it had."""

    year: ComplianceYear
    withdrawn_by: str
    """The caller who withdrew it (empty for the local caller)."""
    withdrawn_at: datetime


_LARGEST_AMOUNT = 2**63 - 1
"""tCO2e: the int64 the API and the ledger's columns carry."""


def validate_entity(entity: CoveredEntity) -> None:
    """Refuse an entity the gateway would refuse, naming every bad field.

    Raises:
        InvalidRequest: Each problem as a field violation under ``entity.``.
    """
    problems: list[FieldViolation] = []
    if not entity.entity_id or len(entity.entity_id) > MAX_ID_LENGTH:
        problems.append(FieldViolation("entity.entity_id", "is required (at most 128 characters)"))
    if not entity.sector or len(entity.sector) > 64:
        problems.append(FieldViolation("entity.sector", "is required (at most 64 characters)"))
    if len(entity.display_name) > 256:
        problems.append(FieldViolation("entity.display_name", "is longer than 256 characters"))
    for path, text in (
        ("entity.entity_id", entity.entity_id),
        ("entity.sector", entity.sector),
        ("entity.display_name", entity.display_name),
    ):
        if has_control_characters(text):
            problems.append(FieldViolation(path, "contains control characters"))
    if not entity.gases:
        problems.append(FieldViolation("entity.gases", "must name at least one gas"))
    for i, gas in enumerate(entity.gases):
        if gas not in GASES:
            problems.append(
                FieldViolation(f"entity.gases[{i}]", f"{gas!r} is none of {sorted(GASES)}")
            )
    for registry, account in entity.accounts.items():
        if not registry or len(registry) > 32 or has_control_characters(registry):
            problems.append(
                FieldViolation(
                    "entity.accounts", "a registry id is empty, long or holds control characters"
                )
            )
        if not account or len(account) > MAX_ID_LENGTH or has_control_characters(account):
            problems.append(
                FieldViolation(
                    f"entity.accounts[{registry}]",
                    "account is empty, too long or holds control characters",
                )
            )
    seen: set[tuple[str, int]] = set()
    for i, year in enumerate(entity.years):
        path = f"entity.years[{i}]"
        if year.jurisdiction not in JURISDICTIONS:
            problems.append(
                FieldViolation(f"{path}.jurisdiction", f"must be one of {sorted(JURISDICTIONS)}")
            )
        if (year.jurisdiction, year.compliance_year) in seen:
            problems.append(FieldViolation(path, "repeats a jurisdiction and year"))
        seen.add((year.jurisdiction, year.compliance_year))
        if not 2000 <= year.compliance_year <= 2100:
            problems.append(FieldViolation(f"{path}.compliance_year", "must be 2000-2100"))
        for name, amount in (
            ("verified_emissions", year.verified_emissions),
            ("allowances_due", year.allowances_due),
        ):
            if amount < 0:
                problems.append(FieldViolation(f"{path}.{name}", "must not be negative"))
            elif amount > _LARGEST_AMOUNT:
                # An import file can hold any integer; the API and the ledger hold int64.
                problems.append(
                    FieldViolation(f"{path}.{name}", f"is above the largest, {_LARGEST_AMOUNT}")
                )
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


def validate_withdrawals(
    withdraw: Sequence[ComplianceYearRef], recorded: Sequence[ComplianceYear] = ()
) -> None:
    """Refuse years to withdraw that name no year, name one twice, or name one that
    ``recorded`` (the same request's years) records: recording and withdrawing one year
    at once says two things of it.

    Raises:
        InvalidRequest: Each problem as a field violation under ``withdraw_years[i]``.
    """
    problems: list[FieldViolation] = []
    given = {(y.jurisdiction, y.compliance_year) for y in recorded}
    seen: set[tuple[str, int]] = set()
    for i, ref in enumerate(withdraw):
        path = f"withdraw_years[{i}]"
        key = (ref.jurisdiction, ref.compliance_year)
        if ref.jurisdiction not in JURISDICTIONS:
            problems.append(
                FieldViolation(f"{path}.jurisdiction", f"must be one of {sorted(JURISDICTIONS)}")
            )
        if not 2000 <= ref.compliance_year <= 2100:
            problems.append(FieldViolation(f"{path}.compliance_year", "must be 2000-2100"))
        if key in seen:
            problems.append(FieldViolation(path, "repeats a jurisdiction and year"))
        seen.add(key)
        if key in given:
            problems.append(
                FieldViolation(
                    path,
                    f"{ref.jurisdiction} {ref.compliance_year} is also in entity.years: a "
                    "request records a year or withdraws it, not both",
                )
            )
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


def covered_twice(jurisdiction: str, year: int, pilot: str, national: str, first: int) -> bool:
    """Whether ``jurisdiction``'s ``year`` falls on the wrong side of a move from ``pilot``
    to ``national`` from ``first``: a pilot year from then on, or a national year before."""
    return (jurisdiction == pilot and year >= first) or (jurisdiction == national and year < first)


def claimed_by_the_other(
    jurisdiction: str,
    year: int,
    pilot: str,
    national: str,
    first: int,
    claimed: Mapping[str, Set[int]],
) -> bool:
    """Whether ``jurisdiction``'s ``year`` is not its own under an *abandoned* move from
    ``pilot`` to ``national`` from ``first``, ``claimed`` holding the compliance years the
    entity claimed in each scheme (surrendered for, see ``entities.claimed_years``).

    An obligation year must never be claimed in both schemes.  An abandoned move never
    took place: the pilot covers the entity as it did before.  But while the migration
    stood, the national ETS covered the years from ``first`` on and the entity may have
    surrendered there for some of them; giving those back to the pilot would let it claim
    them twice, and refusing the pilot every year from ``first`` on (as a standing move
    does) would leave it unable to meet the obligations it keeps there, or to plan a move
    from a later year (whose final pilot year must be paid).  So each year from ``first``
    on is the scheme's that claimed it first:

    - a pilot year is refused only when the national ETS claimed it;
    - a national year from ``first`` on is refused once the pilot claimed it, which it
      may now do for any year the national ETS did not;
    - a national year before ``first`` stays refused, claimed or not: no move ever gave
      it to the national ETS (the pilot covered it before the migration, and the
      migration left it there), so relaxing that side would let an obligation the pilot
      holds move to the national ETS, and be paid in neither or in both.

    A year neither scheme claimed is open to both, and goes to the first to claim it: the
    bridge decides an entity's surrenders one at a time (it locks the entity's row), so
    two cannot claim it together.
    """
    if jurisdiction == pilot:
        return year in claimed.get(national, ())
    if jurisdiction == national:
        return year < first or year in claimed.get(pilot, ())
    return False


def not_its_year(
    jurisdiction: str,
    year: int,
    pilot: str,
    national: str,
    first: int,
    claimed: Mapping[str, Set[int]] | None,
) -> bool:
    """Whether ``jurisdiction``'s ``year`` is not that scheme's under a move from ``pilot``
    to ``national`` from ``first``: split at ``first`` while the move stands (``claimed``
    None, :func:`covered_twice`), by the years each scheme claimed once it is abandoned
    (:func:`claimed_by_the_other`)."""
    if claimed is None:
        return covered_twice(jurisdiction, year, pilot, national, first)
    return claimed_by_the_other(jurisdiction, year, pilot, national, first, claimed)


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest.field(path, "must be an integer")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest.field(path, "must be a string")
    return value


# The document's fields are the records' own (entity_to_json writes them so).
_ENTITY_FIELDS = frozenset(f.name for f in fields(CoveredEntity))
_YEAR_FIELDS = frozenset(f.name for f in fields(ComplianceYear))


def _known_fields(item: dict[Any, Any], fields: frozenset[str], path: str) -> None:
    """Refuse a field the document does not have: a misspelt one would be read as
    absent, and the entity recorded without what it named."""
    unknown = sorted(str(key) for key in item.keys() - fields)
    if unknown:
        raise InvalidRequest.field(
            path, f"unknown field {unknown[0]!r} (the fields: {', '.join(sorted(fields))})"
        )


def _year(value: Any, path: str) -> ComplianceYear:
    if not isinstance(value, dict):
        raise InvalidRequest.field(path, "must be an object")
    _known_fields(value, _YEAR_FIELDS, path)
    return ComplianceYear(
        jurisdiction=_str(value.get("jurisdiction"), f"{path}.jurisdiction"),
        compliance_year=_int(value.get("compliance_year"), f"{path}.compliance_year"),
        verified_emissions=_int(value.get("verified_emissions"), f"{path}.verified_emissions"),
        allowances_due=_int(value.get("allowances_due"), f"{path}.allowances_due"),
    )


def parse_entities(document: Any) -> list[CoveredEntity]:
    """Covered entities from an import document (a registry export, as JSON data).

    The document is ``{"entities": [{"entity_id", "display_name", "sector", "gases",
    "accounts": {registry: account}, "years": [{"jurisdiction", "compliance_year",
    "verified_emissions", "allowances_due"}]}]}``.

    Raises:
        InvalidRequest: The document does not have that shape, or names a field it does
            not have (the path says where).
    """
    if not isinstance(document, dict) or not isinstance(document.get("entities"), list):
        raise InvalidRequest.field("entities", "the document must hold a list of entities")
    out: list[CoveredEntity] = []
    for i, item in enumerate(document["entities"]):
        path = f"entities[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest.field(path, "must be an object")
        _known_fields(item, _ENTITY_FIELDS, path)
        accounts = item.get("accounts", {})
        gases = item.get("gases", [])
        years = item.get("years", [])
        if not isinstance(accounts, dict):
            raise InvalidRequest.field(f"{path}.accounts", "must map registry to account")
        if not isinstance(gases, list) or not isinstance(years, list):
            raise InvalidRequest.field(path, "gases and years must be lists")
        out.append(
            CoveredEntity(
                entity_id=_str(item.get("entity_id"), f"{path}.entity_id"),
                display_name=_str(item.get("display_name", ""), f"{path}.display_name"),
                sector=_str(item.get("sector"), f"{path}.sector"),
                gases=tuple(_str(g, f"{path}.gases[]") for g in gases),
                accounts={
                    _str(r, f"{path}.accounts"): _str(a, f"{path}.accounts.{r}")
                    for r, a in accounts.items()
                },
                years=tuple(_year(y, f"{path}.years[{j}]") for j, y in enumerate(years)),
            )
        )
    return out


def entity_to_json(entity: CoveredEntity) -> dict[str, Any]:
    """The import document's form of one entity (round-trips through :func:`parse_entities`)."""
    return {
        "entity_id": entity.entity_id,
        "display_name": entity.display_name,
        "sector": entity.sector,
        "gases": list(entity.gases),
        "accounts": dict(entity.accounts),
        "years": [
            {
                "jurisdiction": y.jurisdiction,
                "compliance_year": y.compliance_year,
                "verified_emissions": y.verified_emissions,
                "allowances_due": y.allowances_due,
            }
            for y in entity.years
        ],
    }
