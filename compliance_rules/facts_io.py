"""Facts from plain data (parsed JSON or YAML), with errors that name the offending field.

The shape, shared by the CLI's ``rules evaluate --facts FILE`` and the rule case files::

    destination_country: CN          # ISO alpha-2 of where the units land (default CN)
    compliance_year: 2026            # optional: the obligation's year, when there is no
                                     # entity (a CORSIA offsetting obligation)
    entity:                          # required for compliance surrenders
      entity_id: SZ-0001
      compliance_year: 2023
      verified_emissions: 100000     # tCO2e, integer
      allowances_due: 100000         # tCO2e, integer
      covered_by_national_ets: false # optional
      offsets_surrendered:           # optional: offsets already used this year
        - {program: CCER, quantity: 3000, country: CN, region: Guangdong, city: Meizhou}
    blocks:
      - serial_series: ""            # optional namespace inside the program (GS batches)
        serial_start: 1              # inclusive
        serial_end: 1000             # inclusive
        quantity: 1000               # optional; must equal end - start + 1
        vintage_start: 2021-01-01
        vintage_end: 2021-12-31
        gas: CO2                     # optional; CH4, N2O, SF6 ... need gwp_basis
        gwp_basis: AR5               # IPCC report the tCO2e were converted with (SAR/AR2..AR6)
        authorization: {letter_id: LoA-1, host_country: KE, authorized_uses: [ndc, oimp]}
        ca_status: not_applicable    # not_applicable | pending | applied
        labels: []                   # e.g. corsia_eligible, tokenized,
                                     # ccer_recorded_before_2017_03_14,
                                     # ccer_cancelled_first_cycle_unused
        gec_status: none             # none | frozen | cancelled | active | traded
        holding_id: ""               # the gateway's holding id, optional
        project:
          program: CCER
          project_id: "001"
          country: CN
          region: Guangdong          # province, or "Guangdong/Meizhou" (province/city)
          city: Meizhou              # optional
          project_type: wind
          methodology: CMS-002-V01   # optional
          start_date: 2016-03-01     # optional
          construction_start: 2015-06-01   # optional
          labels: []                 # e.g. pre_cdm
          registrations:             # the same project in other programs
            - program: VCS
              project_id: "1060"
              issued_periods: [{start: 2019-01-01, end: 2019-12-31}]
    known_blocks:                    # other blocks the gateway knows of
      - {program: VCS, serial_series: "", serial_start: 1, serial_end: 10,
         status: retired, registry: verra, holding_id: ""}

A listing, as the rule case files write one, is
``{destination_country, project: {...}, periods: [{start, end}], authorization}`` (the
letter declared for the project, optional, as a block's) (``carbonlink rules
evaluate --listing`` reads ListProject's project instead, converted as the gateway converts it).
Reals are read as ``Decimal`` by the package's loaders; a float that reaches this module
anyway (e.g. from ``json.loads`` without ``parse_float``) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

from compliance_rules.errors import FactsError
from compliance_rules.facts import (
    Authorization,
    Block,
    BlockRef,
    CaStatus,
    EntityYear,
    GecStatus,
    HoldingStatus,
    KnownBlock,
    ListingFacts,
    OffsetUse,
    Period,
    Project,
    Registration,
    TransferFacts,
    Use,
)

_E = TypeVar("_E", CaStatus, GecStatus, HoldingStatus, Use)


class _Obj:
    """A mapping being read, which knows its path and refuses keys it was not asked about."""

    def __init__(self, value: Any, path: str, allowed: frozenset[str]) -> None:
        if not isinstance(value, Mapping):
            raise FactsError(path, f"must be an object, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        self.value = value
        self.path = path
        if unknown:
            raise FactsError(self.at(unknown[0]), "unknown field")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.value and self.value[key] is not None

    def raw(self, key: str) -> Any:
        if not self.has(key):
            raise FactsError(self.at(key), "is required")
        return self.value[key]

    def text(self, key: str, default: str | None = None) -> str:
        if not self.has(key):
            if default is None:
                raise FactsError(self.at(key), "is required")
            return default
        value = self.value[key]
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            # YAML reads an unquoted project id like 001 or 1060 as a number.
            return str(value)
        if not isinstance(value, str):
            raise FactsError(self.at(key), f"must be a string, got {type(value).__name__}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        if not self.has(key):
            if default is None:
                raise FactsError(self.at(key), "is required")
            return default
        value = self.value[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise FactsError(self.at(key), f"must be an integer, got {value!r}")
        if value < 0:
            raise FactsError(self.at(key), f"must not be negative, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self.value[key]
        if not isinstance(value, bool):
            raise FactsError(self.at(key), f"must be true or false, got {value!r}")
        return value

    def day(self, key: str) -> date:
        found = self.optional_day(key)
        if found is None:
            raise FactsError(self.at(key), "is required")
        return found

    def optional_day(self, key: str) -> date | None:
        if not self.has(key):
            return None
        value = self.value[key]
        if isinstance(value, date):
            return value
        if not isinstance(value, str):
            raise FactsError(self.at(key), f"must be an ISO date string, got {value!r}")
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise FactsError(self.at(key), f"{value!r} is not an ISO date (YYYY-MM-DD)") from exc

    def texts(self, key: str) -> frozenset[str]:
        if not self.has(key):
            return frozenset()
        value = self.value[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FactsError(self.at(key), "must be a list of strings")
        return frozenset(value)

    def items(self, key: str, *, required: bool = False) -> list[tuple[str, Any]]:
        if not self.has(key):
            if required:
                raise FactsError(self.at(key), "is required")
            return []
        value = self.value[key]
        if not isinstance(value, list):
            raise FactsError(self.at(key), f"must be a list, got {type(value).__name__}")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def enum(self, key: str, kind: type[_E], default: _E | None = None) -> _E:
        if not self.has(key):
            if default is None:
                raise FactsError(self.at(key), "is required")
            return default
        value = self.value[key]
        try:
            return kind(value)
        except ValueError as exc:
            allowed = ", ".join(m.value for m in kind)
            raise FactsError(self.at(key), f"{value!r} is not one of: {allowed}") from exc


def _period(value: Any, path: str) -> Period:
    o = _Obj(value, path, frozenset({"start", "end"}))
    start, end = o.day("start"), o.day("end")
    if end < start:
        raise FactsError(o.at("end"), f"{end} is before start {start}")
    return Period(start, end)


def _country(o: _Obj, key: str, default: str | None = None) -> str:
    value = o.text(key, default)
    if value and (len(value) != 2 or not value.isalpha() or not value.isupper()):
        raise FactsError(o.at(key), f"must be an ISO 3166-1 alpha-2 code, got {value!r}")
    return value


_PROJECT = frozenset(
    {
        "program",
        "project_id",
        "country",
        "region",
        "city",
        "project_type",
        "methodology",
        "start_date",
        "construction_start",
        "labels",
        "registrations",
    }
)


def parse_project(value: Any, path: str = "project") -> Project:
    """A :class:`Project` from plain data.

    Raises:
        FactsError: Naming the offending field.
    """
    o = _Obj(value, path, _PROJECT)
    registrations = []
    for rpath, item in o.items("registrations"):
        r = _Obj(item, rpath, frozenset({"program", "project_id", "issued_periods"}))
        periods = tuple(_period(p, pp) for pp, p in r.items("issued_periods"))
        registrations.append(Registration(r.text("program"), r.text("project_id"), periods))
    return Project(
        program=o.text("program"),
        project_id=o.text("project_id"),
        country=_country(o, "country"),
        region=o.text("region", ""),
        city=o.text("city", ""),
        project_type=o.text("project_type", ""),
        methodology=o.text("methodology", ""),
        start_date=o.optional_day("start_date"),
        construction_start=o.optional_day("construction_start"),
        labels=o.texts("labels"),
        registrations=tuple(registrations),
    )


_BLOCK = frozenset(
    {
        "serial_series",
        "serial_start",
        "serial_end",
        "quantity",
        "vintage_start",
        "vintage_end",
        "gas",
        "gwp_basis",
        "authorization",
        "ca_status",
        "labels",
        "gec_status",
        "holding_id",
        "project",
    }
)


def _ref(o: _Obj, program: str) -> BlockRef:
    start, end = o.integer("serial_start"), o.integer("serial_end")
    if end < start:
        raise FactsError(o.at("serial_end"), f"{end} is below serial_start {start}")
    return BlockRef(program, o.text("serial_series", ""), start, end)


def _authorization(o: _Obj) -> Authorization | None:
    if not o.has("authorization"):
        return None
    a = _Obj(
        o.raw("authorization"),
        o.at("authorization"),
        frozenset({"letter_id", "host_country", "authorized_uses"}),
    )
    return Authorization(
        a.text("letter_id"), _country(a, "host_country"), a.texts("authorized_uses")
    )


def parse_block(value: Any, path: str) -> Block:
    """A :class:`Block` from plain data.

    Raises:
        FactsError: Naming the offending field.
    """
    o = _Obj(value, path, _BLOCK)
    project = parse_project(o.raw("project"), o.at("project"))
    ref = _ref(o, project.program)
    if o.has("quantity") and o.integer("quantity") != ref.quantity:
        raise FactsError(
            o.at("quantity"),
            f"{o.integer('quantity')} differs from serial_end - serial_start + 1 = {ref.quantity}",
        )
    vstart, vend = o.day("vintage_start"), o.day("vintage_end")
    if vend < vstart:
        raise FactsError(o.at("vintage_end"), f"{vend} is before vintage_start {vstart}")
    gas = o.text("gas", "CO2")
    return Block(
        ref=ref,
        project=project,
        vintage=Period(vstart, vend),
        gas=gas,
        gwp_basis=o.text("gwp_basis", ""),
        authorization=_authorization(o),
        ca_status=o.enum("ca_status", CaStatus, CaStatus.NOT_APPLICABLE),
        labels=o.texts("labels"),
        gec_status=o.enum("gec_status", GecStatus, GecStatus.NONE),
        holding_id=o.text("holding_id", ""),
    )


def parse_entity(value: Any, path: str = "entity") -> EntityYear:
    """An :class:`EntityYear` from plain data.

    Raises:
        FactsError: Naming the offending field.
    """
    o = _Obj(
        value,
        path,
        frozenset(
            {
                "entity_id",
                "compliance_year",
                "verified_emissions",
                "allowances_due",
                "offsets_surrendered",
                "covered_by_national_ets",
            }
        ),
    )
    year = o.integer("compliance_year")
    if not 1990 <= year <= 2200:
        raise FactsError(o.at("compliance_year"), f"{year} is not a plausible year")
    used = []
    for upath, item in o.items("offsets_surrendered"):
        u = _Obj(item, upath, frozenset({"program", "quantity", "country", "region", "city"}))
        used.append(
            OffsetUse(
                program=u.text("program"),
                quantity=u.integer("quantity"),
                country=_country(u, "country", ""),
                region=u.text("region", ""),
                city=u.text("city", ""),
            )
        )
    return EntityYear(
        entity_id=o.text("entity_id"),
        compliance_year=year,
        verified_emissions=o.integer("verified_emissions"),
        allowances_due=o.integer("allowances_due"),
        offsets_surrendered=tuple(used),
        covered_by_national_ets=o.flag("covered_by_national_ets", False),
    )


def parse_transfer(value: Any, use: Use | str) -> TransferFacts:
    """:class:`TransferFacts` from a facts document and a use.

    Args:
        value: The parsed facts document (see the module docstring).
        use: The use the units move for.

    Returns:
        The facts.

    Raises:
        FactsError: Naming the offending field.
    """
    try:
        the_use = Use(use)
    except ValueError as exc:
        allowed = ", ".join(u.value for u in Use)
        raise FactsError("use", f"{use!r} is not one of: {allowed}") from exc
    o = _Obj(
        value,
        "",
        frozenset({"destination_country", "compliance_year", "entity", "blocks", "known_blocks"}),
    )
    blocks = tuple(parse_block(item, path) for path, item in o.items("blocks", required=True))
    known = []
    for kpath, item in o.items("known_blocks"):
        k = _Obj(
            item,
            kpath,
            frozenset(
                {
                    "program",
                    "serial_series",
                    "serial_start",
                    "serial_end",
                    "status",
                    "registry",
                    "holding_id",
                }
            ),
        )
        known.append(
            KnownBlock(
                ref=_ref(k, k.text("program")),
                status=k.enum("status", HoldingStatus),
                registry=k.text("registry", ""),
                holding_id=k.text("holding_id", ""),
            )
        )
    entity = parse_entity(o.raw("entity")) if o.has("entity") else None
    year: int | None = None
    if o.has("compliance_year"):
        year = o.integer("compliance_year")
        if not 1990 <= year <= 2200:
            raise FactsError(o.at("compliance_year"), f"{year} is not a plausible year")
        if entity is not None and year != entity.compliance_year:
            raise FactsError(
                o.at("compliance_year"),
                f"{year} differs from the entity's compliance year {entity.compliance_year}",
            )
    return TransferFacts(
        use=the_use,
        blocks=blocks,
        destination_country=_country(o, "destination_country", "CN"),
        entity=entity,
        known_blocks=tuple(known),
        compliance_year=year,
    )


def parse_listing(value: Any) -> ListingFacts:
    """:class:`ListingFacts` from a listing document.

    Raises:
        FactsError: Naming the offending field.
    """
    o = _Obj(value, "", frozenset({"destination_country", "project", "periods", "authorization"}))
    return ListingFacts(
        project=parse_project(o.raw("project")),
        periods=tuple(_period(p, path) for path, p in o.items("periods", required=True)),
        destination_country=_country(o, "destination_country", "CN"),
        authorization=_authorization(o),
    )
