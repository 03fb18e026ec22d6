"""The rule kinds: small check objects built from a pack's :class:`RuleSpec`.

Each kind reads its figures from the spec (never from code), returns violations as values and
raises only when the engine's own invariants break (a spec the schema should have refused).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_DOWN, Decimal
from typing import ClassVar

from compliance_rules.decision import DetailValue, Violation
from compliance_rules.errors import EngineInvariantError
from compliance_rules.facts import (
    Authorization,
    Block,
    BlockRef,
    CaStatus,
    EntityYear,
    GecStatus,
    HoldingStatus,
    KnownBlock,
    OffsetUse,
    Project,
    TransferFacts,
)
from compliance_rules.gwp import gas_key
from compliance_rules.pack import RuleSpec
from compliance_rules.rules import Context, Rule, Scope, Subject

# --- typed access to validated params -------------------------------------------------------


def _strs(params: Mapping[str, object], key: str) -> frozenset[str]:
    value = params.get(key, ())
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise EngineInvariantError(f"param {key!r} should be a list of strings, got {value!r}")
    return frozenset(value)


def _decimal(params: Mapping[str, object], key: str) -> Decimal:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise EngineInvariantError(f"param {key!r} should be a number, got {value!r}")
    return Decimal(value)


def _bool(params: Mapping[str, object], key: str) -> bool:
    value = params.get(key)
    if not isinstance(value, bool):
        raise EngineInvariantError(f"param {key!r} should be a boolean, got {value!r}")
    return value


def _ints(params: Mapping[str, object], key: str) -> frozenset[int]:
    value = params.get(key, ())
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise EngineInvariantError(f"param {key!r} should be a list of integers, got {value!r}")
    return frozenset(value)


def _str(params: Mapping[str, object], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise EngineInvariantError(f"param {key!r} should be a string, got {value!r}")
    return value


def _optional_date(params: Mapping[str, object], key: str) -> date | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EngineInvariantError(f"param {key!r} should be a date string, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise EngineInvariantError(f"param {key!r} is not a calendar date: {value!r}") from exc


def _date(params: Mapping[str, object], key: str) -> date:
    value = _optional_date(params, key)
    if value is None:
        raise EngineInvariantError(f"param {key!r} should be a date string, got None")
    return value


_LEVELS = ("country", "province", "city")


@dataclass(frozen=True)
class _Origin:
    """Where a project (or an offset already used) lies, down to the level it is known."""

    parts: tuple[str, str, str]
    """Country, province and city as given (empty when not given)."""

    @classmethod
    def of(cls, country: str, region: str, city: str) -> _Origin:
        # A region given as "Guangdong/Shenzhen" names the province and the city in one field.
        province, _, rest = region.partition("/")
        return cls((country.strip(), province.strip(), (city or rest.split("/")[0]).strip()))

    def __str__(self) -> str:
        return "/".join(p for p in self.parts if p) or "(none given)"

    def match(self, place: str) -> str | None:
        """How ``place`` (``CN``, ``CN/Guangdong``, ``CN/Guangdong/Meizhou``) relates to it.

        Returns:
            ``"in"`` when the origin lies in the place (a province-level place holds every city
            of the province), ``"out"`` when it does not, or the level (``"province"``,
            ``"city"``) the origin would need for the place to decide: a city-level place is
            never satisfied by an origin that names only the province.
        """
        for level, (part, known) in enumerate(zip(place.split("/")[:3], self.parts, strict=False)):
            if not known:
                return _LEVELS[level]
            if part.strip().casefold() != known.casefold():
                return "out"
        return "in"

    def against(self, places: Iterable[str]) -> tuple[bool, tuple[str, ...]]:
        """Whether the origin lies in one of ``places``, and, when it does not, the places
        that could not decide because the origin stops above their level (sorted)."""
        undecided: list[str] = []
        for place in places:
            found = self.match(place)
            if found == "in":
                return True, ()
            if found != "out":
                undecided.append(place)
        return False, tuple(sorted(undecided))


def _needs(origin: _Origin, undecided: tuple[str, ...]) -> str:
    levels = sorted({_LEVELS[min(len(p.split("/")), 3) - 1] for p in undecided})
    shown = ", ".join(undecided[:6]) + (" ..." if len(undecided) > 6 else "")
    return (
        f"origin {origin} does not say its {' and '.join(levels)}, and the list names "
        f"{shown}: the {' and '.join(levels)} is needed to decide (fail closed)"
    )


def _project_origin(project: Project) -> _Origin:
    return _Origin.of(project.country, project.region, project.city)


def _project_in(places: Iterable[str], project: Project) -> bool:
    """True only when the project is shown to lie in one of ``places``."""
    return _project_origin(project).against(places)[0]


def _use_in(places: Iterable[str], use: OffsetUse) -> bool:
    return _Origin.of(use.country, use.region, use.city).against(places)[0]


def _where(subject: Subject) -> str:
    p = subject.project
    return f"{p.program} project {p.project_id} ({subject.vintage.start}..{subject.vintage.end})"


# --- base classes ---------------------------------------------------------------------------


class _Check:
    scope: ClassVar[Scope]
    needs_entity: ClassVar[bool] = False
    """True for rules decided on the entity's compliance year (offset limits and the like),
    which a transfer toward compliance leaves to the surrender."""

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        programs = spec.params.get("programs")
        self._program_filter = None if programs is None else _strs(spec.params, "programs")

    @property
    def rule_id(self) -> str:
        return self.spec.rule_id

    @property
    def unconfirmed_params(self) -> tuple[str, ...]:
        return self.spec.unconfirmed_params

    def _applies(self, program: str) -> bool:
        return self._program_filter is None or program in self._program_filter

    def violation(
        self,
        blocks: Iterable[BlockRef],
        detail: str,
        details: Iterable[tuple[str, DetailValue]] = (),
    ) -> Violation:
        return Violation(
            rule_id=self.spec.rule_id,
            message=self.spec.message,
            source=self.spec.source,
            blocks=tuple(sorted(blocks)),
            detail=detail,
            details=tuple(details),
            unconfirmed_params=self.spec.unconfirmed_params,
        )

    def evaluate(self, ctx: Context) -> list[Violation]:
        raise NotImplementedError


class _SubjectCheck(_Check):
    """A check of one project and period at a time (also evaluated for listings)."""

    scope = Scope.SUBJECT

    def check(self, subject: Subject, ctx: Context) -> str | None:
        raise NotImplementedError

    def evaluate(self, ctx: Context) -> list[Violation]:
        out: list[Violation] = []
        for subject in ctx.subjects:
            if not self._applies(subject.project.program):
                continue
            problem = self.check(subject, ctx)
            if problem is not None:
                refs = () if subject.block is None else (subject.block.ref,)
                out.append(self.violation(refs, f"{_where(subject)}: {problem}"))
        return out


class _BlockCheck(_Check):
    """A check of one block's unit-level facts (transfers only)."""

    scope = Scope.BLOCK

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        """Return ``("", ())`` when the block passes, else the detail and its figures."""
        raise NotImplementedError

    def evaluate(self, ctx: Context) -> list[Violation]:
        out: list[Violation] = []
        for subject in ctx.subjects:
            block = subject.block
            if block is None or not self._applies(block.program):
                continue
            problem, figures = self.check(block, ctx)
            if problem:
                out.append(self.violation((block.ref,), f"{block.ref}: {problem}", figures))
        return out


class _RequestCheck(_Check):
    """A check over the whole request (entity, known blocks)."""

    scope = Scope.REQUEST

    def facts(self, ctx: Context) -> TransferFacts:
        if ctx.facts is None:
            raise EngineInvariantError(f"{self.rule_id} is a request rule run without a request")
        return ctx.facts

    def entity_or_violation(self, ctx: Context) -> EntityYear | Violation:
        facts = self.facts(ctx)
        if facts.entity is None:
            # Without the entity's year there is no limit to check against: fail closed.
            return self.violation(
                (b.ref for b in facts.blocks),
                "no record of the entity for the compliance year (its verified emissions "
                "and allowances due) was given, and this rule cannot be checked without one",
            )
        return facts.entity


# --- subject checks -------------------------------------------------------------------------


class AcceptedPrograms(_SubjectCheck):
    """The program must be one the pack accepts for the use."""

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._accepted = _strs(spec.params, "programs")
        self._program_filter = None

    def check(self, subject: Subject, ctx: Context) -> str | None:
        if subject.project.program in self._accepted:
            return None
        accepted = ", ".join(sorted(self._accepted))
        return (
            f"program {subject.project.program} is not accepted for {ctx.use.value} "
            f"(accepted: {accepted})"
        )


class ProjectTypesAllowed(_SubjectCheck):
    """Only listed project types are eligible (an unknown type is not)."""

    def check(self, subject: Subject, ctx: Context) -> str | None:
        kind = subject.project.project_type
        if kind in _strs(self.spec.params, "types"):
            return None
        return f"project type {kind or '(none given)'!r} is not on the eligible list"


class ProjectTypesExcluded(_SubjectCheck):
    """Listed project types are excluded."""

    def check(self, subject: Subject, ctx: Context) -> str | None:
        kind = subject.project.project_type
        if kind in _strs(self.spec.params, "types"):
            return f"project type {kind!r} is excluded"
        return None


class OriginAllowed(_SubjectCheck):
    """Projects (optionally of listed types) must lie in a listed place.

    A province-level entry (``CN/Guangdong``) admits every city of the province; a city-level
    entry (``CN/Guangdong/Meizhou``) admits only that city, so a project that names only its
    province is not shown to lie in it and is refused with a message asking for the city.
    """

    def check(self, subject: Subject, ctx: Context) -> str | None:
        types = self.spec.params.get("project_types")
        if types is not None and subject.project.project_type not in _strs(
            self.spec.params, "project_types"
        ):
            return None
        origin = _project_origin(subject.project)
        inside, undecided = origin.against(_strs(self.spec.params, "places"))
        if inside:
            return None
        if undecided:
            return _needs(origin, undecided)
        return f"origin {origin} is not on the allowed list"


class OriginExcluded(_SubjectCheck):
    """Projects lying in a listed place are excluded.

    A project that names only its province, where the list names a city of that province,
    cannot be shown to lie outside it: it is refused with a message asking for the city.
    """

    def check(self, subject: Subject, ctx: Context) -> str | None:
        origin = _project_origin(subject.project)
        inside, undecided = origin.against(_strs(self.spec.params, "places"))
        if inside:
            return f"origin {origin} is excluded"
        if undecided:
            return _needs(origin, undecided)
        return None


class DateWindow(_SubjectCheck):
    """A project or vintage date must fall inside a window.

    Units carrying one of ``exempt_labels`` are outside the rule: a condition of one issuing
    regime does not bind units issued under an earlier one (CCER recorded under the 2012
    interim measures and the 2023 measures' construction date). A listing has no units, so
    the exemption never applies to it. With ``only_labels`` the rule binds only units
    carrying one of them (a label's own claim checked against the units' dates), and so
    never a listing.
    """

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._exempt = _strs(spec.params, "exempt_labels")
        self._only = _strs(spec.params, "only_labels")
        self._field = _str(spec.params, "field")
        self._after = _optional_date(spec.params, "after")
        self._on_or_after = _optional_date(spec.params, "on_or_after")
        self._before = _optional_date(spec.params, "before")
        self._on_or_before = _optional_date(spec.params, "on_or_before")

    def _value(self, subject: Subject) -> date | None:
        match self._field:
            case "start_date":
                return subject.project.start_date
            case "construction_start":
                return subject.project.construction_start
            case "vintage_start":
                return subject.vintage.start
            case "vintage_end":
                return subject.vintage.end
        raise EngineInvariantError(f"unknown date field {self._field!r}")

    def check(self, subject: Subject, ctx: Context) -> str | None:
        if subject.block is not None and subject.block.labels & self._exempt:
            return None
        if self._only and (subject.block is None or not subject.block.labels & self._only):
            return None
        value = self._value(subject)
        if value is None:
            return f"{self._field} is not given, so the date window cannot be checked"
        if self._after is not None and not value > self._after:
            return f"{self._field} {value} is not after {self._after}"
        if self._on_or_after is not None and value < self._on_or_after:
            return f"{self._field} {value} is before {self._on_or_after}"
        if self._before is not None and not value < self._before:
            return f"{self._field} {value} is not before {self._before}"
        if self._on_or_before is not None and value > self._on_or_before:
            return f"{self._field} {value} is after {self._on_or_before}"
        return None


class ProjectLabelExcluded(_SubjectCheck):
    """Projects carrying a listed label (e.g. ``pre_cdm``) are excluded."""

    def check(self, subject: Subject, ctx: Context) -> str | None:
        hit = subject.project.labels & _strs(self.spec.params, "labels")
        return f"project is labelled {', '.join(sorted(hit))}" if hit else None


class DoubleIssuanceProject(_SubjectCheck):
    """The same project's reductions for an overlapping period issued by another program."""

    def check(self, subject: Subject, ctx: Context) -> str | None:
        own = (subject.project.program, subject.project.project_id)
        clashes = [
            f"{reg.program} project {reg.project_id} issued {period.start}..{period.end}"
            for reg in subject.project.registrations
            if (reg.program, reg.project_id) != own
            for period in reg.issued_periods
            if period.overlaps(subject.vintage)
        ]
        if not clashes:
            return None
        return "reductions already issued elsewhere: " + "; ".join(sorted(clashes))


class UseRefused(_SubjectCheck):
    """Every unit is refused for the rule's uses: the pack lacks the list that would decide.

    For a period (a scheme's phase) whose eligibility list is not in the pack, no program can
    be shown eligible, so the use fails closed, naming what is missing, until the list is
    added. It takes no ``programs`` filter: a use refused for some programs only is what
    ``accepted_programs`` says.
    """

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._missing = _str(spec.params, "missing")

    def check(self, subject: Subject, ctx: Context) -> str | None:
        return (
            f"no unit can be shown eligible for {ctx.use.value} under the version in force from "
            f"{ctx.version.effective_from}: the pack does not hold {self._missing} "
            "(refused until it is added)"
        )


# --- block checks ---------------------------------------------------------------------------

_OK: tuple[str, tuple[tuple[str, DetailValue], ...]] = ("", ())


class BlockLabelRequired(_BlockCheck):
    """Units must carry a label (e.g. the registry's CORSIA-eligible tag)."""

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        label = _str(self.spec.params, "label")
        return _OK if label in block.labels else (f"units are not labelled {label!r}", ())


class BlockLabelImplies(_BlockCheck):
    """Units carrying one label must also carry another (e.g. tokenized needs consent)."""

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        label = _str(self.spec.params, "label")
        requires = _str(self.spec.params, "requires")
        if label in block.labels and requires not in block.labels:
            return f"units labelled {label!r} lack {requires!r}", ()
        return _OK


class BlockLabelUseUntil(_BlockCheck):
    """Units carrying a label may be used until a last day, and are refused after it.

    The day compared is the decision's clock (the day of the use), never the compliance
    year's decision day: a notice that ends a kind of unit's use on a date ends it for every
    year still being surrendered, under whichever version decides that year.
    """

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._label = _str(spec.params, "label")
        self._last_day = _date(spec.params, "last_day")

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        if self._label not in block.labels or ctx.clock <= self._last_day:
            return _OK
        return (
            f"units labelled {self._label!r} are used on {ctx.clock.isoformat()}, after their "
            f"last day of use {self._last_day.isoformat()}",
            (("last_day", self._last_day.isoformat()), ("decided_on", ctx.clock.isoformat())),
        )


def _foreign_letter(letter: Authorization, project: Project) -> str:
    """Why ``letter`` cannot authorize ``project``'s units whatever it says ("" if it can):
    authorization is the host Party's prerogative, so another country's letter is none."""
    if letter.host_country == project.country:
        return ""
    return (
        f"letter {letter.letter_id} is from {letter.host_country}, "
        f"but the project is hosted in {project.country}"
    )


class AuthorizationRequired(_BlockCheck):
    """A host-country letter of authorization covering the use.

    At listing (:meth:`check_declared`) the letter the owner declares is checked for what a
    letter alone settles, the country that issued it; what it authorizes is left to each
    transfer, whose units carry their own letters (a host may authorize further uses later).
    """

    def check_declared(self, project: Project, letter: Authorization) -> list[Violation]:
        """The violation of a letter declared for ``project`` at listing, if it is foreign."""
        if not self._applies(project.program):
            return []
        foreign = _foreign_letter(letter, project)
        if not foreign:
            return []
        where = f"{project.program} project {project.project_id}"
        return [
            self.violation(
                (),
                f"{where}: {foreign}",
                (("letter_id", letter.letter_id), ("host_country", letter.host_country)),
            )
        ]

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        mapping = self.spec.params.get("authorized_uses")
        if not isinstance(mapping, Mapping):
            raise EngineInvariantError(f"{self.rule_id}: authorized_uses is not a mapping")
        needed = mapping.get(ctx.use.value)
        if needed is None:
            return f"the pack names no authorized use that covers {ctx.use.value}", ()
        needed_set = _strs(mapping, ctx.use.value)
        auth = block.authorization
        if auth is None:
            return "no letter of authorization from the host country", ()
        foreign = _foreign_letter(auth, block.project)
        if foreign:
            return foreign, ()
        if not auth.authorized_uses & needed_set:
            return (
                f"letter {auth.letter_id} authorizes {sorted(auth.authorized_uses)}, "
                f"none of {sorted(needed_set)}",
                (),
            )
        return _OK


class CorrespondingAdjustment(_BlockCheck):
    """Double claiming: a transfer that needs a corresponding adjustment must have one."""

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        if (
            _bool(self.spec.params, "cross_border_only")
            and block.project.country == ctx.destination_country
        ):
            return _OK
        accepted = {CaStatus(s) for s in _strs(self.spec.params, "accepted_statuses")}
        if block.ca_status in accepted:
            return _OK
        return (
            f"corresponding adjustment is {block.ca_status.value} "
            f"({block.project.country} -> {ctx.destination_country}); "
            f"required: {', '.join(sorted(s.value for s in accepted))}",
            (("ca_status", block.ca_status.value),),
        )


class GecExclusivity(_BlockCheck):
    """The same generation may not earn both a GEC and a CCER.

    Units carrying one of ``exempt_labels`` are outside the rule: the GEC notice binds
    projects registered under the 2023 CCER measures' methodologies, not CCER recorded
    under the 2012 interim measures.
    """

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        if block.labels & _strs(self.spec.params, "exempt_labels"):
            return _OK
        if block.project.project_type not in _strs(self.spec.params, "project_types"):
            return _OK
        conflicting = {GecStatus(s) for s in _strs(self.spec.params, "conflicting_statuses")}
        if block.gec_status in conflicting:
            return (
                f"green electricity certificates for this generation are {block.gec_status.value}",
                (("gec_status", block.gec_status.value),),
            )
        return _OK


class ReuseAfterCancellation(_BlockCheck):
    """Units cancelled for one compliance period without being used there, which a notice
    lets count toward named later years, and only toward those.

    The units carry ``label`` (their registry's word, as for any label). For a request whose
    compliance year is one of ``years`` the rule releases their own holding's ``statuses``
    (:meth:`released`): the engine hands them to the double-use rule, which then does not
    take that cancellation for a use. Any other use of the units (another holding, or a
    status not released) is still one. For another year the units are refused; without the
    year, fail closed.
    """

    needs_entity = True

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._label = _str(spec.params, "label")
        self._years = _ints(spec.params, "years")
        self._statuses = frozenset(HoldingStatus(s) for s in _strs(spec.params, "statuses"))

    def released(self, compliance_year: int | None) -> frozenset[tuple[str, HoldingStatus]]:
        """The (label, status) pairs not taken for a use for ``compliance_year``."""
        if compliance_year not in self._years:
            return frozenset()
        return frozenset((self._label, s) for s in self._statuses)

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        if self._label not in block.labels:
            return _OK
        year = None if ctx.facts is None else ctx.facts.obligation_year
        if year is None:
            return (
                f"units labelled {self._label!r} count only toward some years: the compliance "
                "year is required (fail closed)",
                (),
            )
        if year in self._years:
            return _OK
        allowed = ", ".join(str(y) for y in sorted(self._years))
        return (
            f"units labelled {self._label!r} count only toward {allowed}, not {year}",
            (("compliance_year", year), ("label", self._label)),
        )


class VintageWithinPeriod(_BlockCheck):
    """Units may not be of a year after the compliance period they are surrendered for.

    The period is the pack's compliance cycle holding the obligation's year (the years
    surrendered together, so a cycle's last year's units count toward its first year), or the
    year alone where the pack declares no cycle. A block's year is its vintage's last year.
    Without the obligation's year there is nothing to compare with: fail closed.
    """

    needs_entity = True

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        year = None if ctx.facts is None else ctx.facts.obligation_year
        if year is None:
            return "the compliance year is required to check the units' year (fail closed)", ()
        cycle = ctx.cycle if ctx.cycle is not None and ctx.cycle.holds(year) else None
        last = year if cycle is None else cycle.last_year
        vintage = block.vintage.end.year
        if vintage <= last:
            return _OK
        period = str(year) if cycle is None else f"{cycle.first_year}-{cycle.last_year}"
        return (
            f"units of {vintage} are surrendered for {year}, whose compliance period "
            f"({period}) ends with {last}: a later year's units do not count toward it",
            (("vintage_year", vintage), ("compliance_year", year), ("period_last_year", last)),
        )


class GasConversion(_BlockCheck):
    """A non-CO2 block may not claim more tCO2e than its gas converts to in the pack's table.

    The unit model carries no gas mass: a block's quantity (tCO2e) and its ``gwp_basis`` (the
    report its issuer converted with) determine it, mass = quantity / GWP_basis(gas). The
    pack's report re-expresses that mass, mass x GWP_pack(gas); a block claiming more than
    that is refused. The comparison is done by cross-multiplication, quantity x GWP_basis
    against quantity x GWP_pack, so no inexact division decides it; the mass and the
    re-expressed amount in the message are truncated for reading only.
    """

    _SHOWN = Decimal("0.000001")

    def check(self, block: Block, ctx: Context) -> tuple[str, tuple[tuple[str, DetailValue], ...]]:
        pack = ctx.version.gwp
        if gas_key(block.gas) == gas_key("CO2"):
            return _OK
        if not block.gwp_basis:
            return (
                f"{block.gas} block gives no GWP basis (the IPCC report its tCO2e were "
                "converted with), so its gas mass cannot be determined",
                (("gas", block.gas),),
            )
        basis = pack.catalog.find(block.gwp_basis)
        if basis is None:
            return (
                f"GWP basis {block.gwp_basis!r} is not a known IPCC report "
                f"(known: {', '.join(pack.catalog.known)}), so the {block.gas} mass cannot be "
                "determined",
                (("gas", block.gas), ("gwp_basis", block.gwp_basis)),
            )
        basis_factor = basis.factor(block.gas)
        if basis_factor is None:
            return (
                f"gas {block.gas} has no GWP in the {basis.report} table (the block's basis)",
                (("gas", block.gas), ("gwp_basis", basis.report)),
            )
        pack_factor = pack.values.factor(block.gas)
        if pack_factor is None:
            return (
                f"gas {block.gas} has no GWP in this pack's {pack.report} table",
                (("gas", block.gas), ("pack_gwp_report", pack.values.report)),
            )
        claimed = Decimal(block.quantity)
        if claimed * basis_factor <= claimed * pack_factor:
            return _OK
        # Shown truncated to 6 places (never rounded up to the amount claimed).
        mass = (claimed / basis_factor).quantize(self._SHOWN, ROUND_DOWN)
        converted = (claimed * pack_factor / basis_factor).quantize(self._SHOWN, ROUND_DOWN)
        return (
            f"{block.quantity} tCO2e at {basis.report} GWP {basis_factor} = {mass} t "
            f"{block.gas}; x {pack_factor} ({pack.report}) = {converted} tCO2e, less than the "
            f"{block.quantity} claimed",
            (
                ("gas", block.gas),
                ("gas_mass", mass),
                ("gwp_basis", basis.report),
                ("basis_gwp", basis_factor),
                ("pack_gwp_report", pack.values.report),
                ("pack_gwp", pack_factor),
                ("co2e", converted),
                ("quantity", block.quantity),
            ),
        )


# --- request checks -------------------------------------------------------------------------


def offset_limit_figures(spec: RuleSpec, entity: EntityYear) -> tuple[int, int, tuple[str, ...]]:
    """The limit (whole tCO2e), the amount already used and the programs counted.

    A strict limit ("below 10%") allows the largest whole tonne strictly below the share.
    """
    share = _decimal(spec.params, "share")
    basis_name = _str(spec.params, "basis")
    basis = (
        entity.verified_emissions if basis_name == "verified_emissions" else entity.allowances_due
    )
    exact = share * basis
    limit = math.ceil(exact) - 1 if _bool(spec.params, "strict") else math.floor(exact)
    programs = _strs(spec.params, "programs")
    used = sum(o.quantity for o in entity.offsets_surrendered if o.program in programs)
    return max(limit, 0), used, tuple(sorted(programs))


class OffsetLimit(_RequestCheck):
    """Offsets, summed over every program counting toward the limit, within a share."""

    needs_entity = True

    def evaluate(self, ctx: Context) -> list[Violation]:
        facts = self.facts(ctx)
        programs = _strs(self.spec.params, "programs")
        counted = [b for b in facts.blocks if b.program in programs]
        if not counted:
            return []
        entity = self.entity_or_violation(ctx)
        if isinstance(entity, Violation):
            return [entity]
        limit, used, _ = offset_limit_figures(self.spec, entity)
        asked = sum(b.quantity for b in counted)
        if used + asked <= limit:
            return []
        share = _decimal(self.spec.params, "share")
        basis = _str(self.spec.params, "basis")
        return [
            self.violation(
                (b.ref for b in counted),
                f"offsets {used} already used + {asked} asked = {used + asked} exceed the limit "
                f"of {limit} ({share} of {basis.replace('_', ' ')}, "
                f"{'strictly below' if _bool(self.spec.params, 'strict') else 'at most'}) "
                f"for {entity.entity_id} in {entity.compliance_year}",
                (
                    ("limit", limit),
                    ("already_used", used),
                    ("asked", asked),
                    ("share", share),
                    ("basis", basis),
                ),
            )
        ]


class LocalShare(_RequestCheck):
    """At least a share of the offsets counted (used + asked) must come from listed places."""

    needs_entity = True

    def evaluate(self, ctx: Context) -> list[Violation]:
        facts = self.facts(ctx)
        programs = _strs(self.spec.params, "programs")
        places = _strs(self.spec.params, "places")
        counted = [b for b in facts.blocks if b.program in programs]
        if not counted:
            return []
        entity = self.entity_or_violation(ctx)
        if isinstance(entity, Violation):
            return [entity]
        share = _decimal(self.spec.params, "share")
        prior = [o for o in entity.offsets_surrendered if o.program in programs]
        total = sum(o.quantity for o in prior) + sum(b.quantity for b in counted)
        local = sum(o.quantity for o in prior if _use_in(places, o)) + sum(
            b.quantity for b in counted if _project_in(places, b.project)
        )
        required = math.ceil(share * total)
        if local >= required:
            return []
        outside = [b.ref for b in counted if not _project_in(places, b.project)]
        return [
            self.violation(
                outside,
                f"{local} of {total} offsets come from {', '.join(sorted(places))}; "
                f"at least {required} ({share}) must",
                (
                    ("local", local),
                    ("total", total),
                    ("required_local", required),
                    ("share", share),
                ),
            )
        ]


class NationalEtsCarveOut(_RequestCheck):
    """An entity covered by the national ETS does not comply in the pilot."""

    needs_entity = True

    def evaluate(self, ctx: Context) -> list[Violation]:
        entity = self.entity_or_violation(ctx)
        if isinstance(entity, Violation):
            return [entity]
        if not entity.covered_by_national_ets:
            return []
        return [
            self.violation(
                (b.ref for b in self.facts(ctx).blocks),
                f"{entity.entity_id} is covered by the national ETS for {entity.compliance_year}",
            )
        ]


class DoubleIssuanceSerial(_RequestCheck):
    """Overlapping serials of one program and series live in two places."""

    def evaluate(self, ctx: Context) -> list[Violation]:
        facts = self.facts(ctx)
        live = {HoldingStatus(s) for s in _strs(self.spec.params, "live_statuses")}
        out: list[Violation] = []
        blocks = sorted(facts.blocks, key=lambda b: b.ref)
        for i, a in enumerate(blocks):
            for b in blocks[i + 1 :]:
                if a.ref.overlaps(b.ref):
                    out.append(self.violation((a.ref, b.ref), f"{a.ref} overlaps {b.ref}"))
        for block in blocks:
            for known in facts.known_blocks:
                if known.holding_id and known.holding_id == block.holding_id:
                    continue  # the block's own holding, not another copy of it
                if known.status in live and block.ref.overlaps(known.ref):
                    where = f" at {known.registry}" if known.registry else ""
                    out.append(
                        self.violation(
                            (block.ref,),
                            f"{block.ref} overlaps {known.ref}, {known.status.value}{where}",
                            (("known_block", str(known.ref)), ("known_status", known.status.value)),
                        )
                    )
        return out


class DoubleUse(_RequestCheck):
    """A unit already retired, cancelled or surrendered anywhere known.

    A unit's own holding (same non-empty holding id) in a status the scheme releases for the
    request's year (:attr:`Context.released`, for a label the unit carries) is not a use.
    """

    @staticmethod
    def _released(block: Block, known: KnownBlock, ctx: Context) -> bool:
        if not known.holding_id or known.holding_id != block.holding_id:
            return False
        return any((label, known.status) in ctx.released for label in block.labels)

    def evaluate(self, ctx: Context) -> list[Violation]:
        facts = self.facts(ctx)
        used = {HoldingStatus(s) for s in _strs(self.spec.params, "used_statuses")}
        out: list[Violation] = []
        for block in facts.blocks:
            for known in facts.known_blocks:
                if self._released(block, known, ctx):
                    continue
                if known.status in used and block.ref.overlaps(known.ref):
                    where = f" at {known.registry}" if known.registry else ""
                    out.append(
                        self.violation(
                            (block.ref,),
                            f"{block.ref} overlaps {known.ref}, "
                            f"already {known.status.value}{where}",
                            (("known_block", str(known.ref)), ("known_status", known.status.value)),
                        )
                    )
        return out


KINDS: dict[str, type[_Check]] = {
    "accepted_programs": AcceptedPrograms,
    "project_types_allowed": ProjectTypesAllowed,
    "project_types_excluded": ProjectTypesExcluded,
    "origin_allowed": OriginAllowed,
    "origin_excluded": OriginExcluded,
    "date_window": DateWindow,
    "project_label_excluded": ProjectLabelExcluded,
    "double_issuance_project": DoubleIssuanceProject,
    "use_refused": UseRefused,
    "block_label_required": BlockLabelRequired,
    "block_label_implies": BlockLabelImplies,
    "block_label_use_until": BlockLabelUseUntil,
    "authorization": AuthorizationRequired,
    "corresponding_adjustment": CorrespondingAdjustment,
    "gec_exclusivity": GecExclusivity,
    "vintage_within_period": VintageWithinPeriod,
    "reuse_after_cancellation": ReuseAfterCancellation,
    "gas_conversion": GasConversion,
    "offset_limit": OffsetLimit,
    "local_share": LocalShare,
    "national_ets_carve_out": NationalEtsCarveOut,
    "double_issuance_serial": DoubleIssuanceSerial,
    "double_use": DoubleUse,
}


ENTITY_KINDS: frozenset[str] = frozenset(k for k, c in KINDS.items() if c.needs_entity)
"""Rule kinds decided on an entity's compliance year (deferred by a transfer to the surrender)."""


def build_rule(spec: RuleSpec) -> Rule:
    """The check object for a rule spec.

    Raises:
        EngineInvariantError: The kind is unknown (the pack schema lists every kind).
    """
    try:
        kind = KINDS[spec.kind]
    except KeyError as exc:
        raise EngineInvariantError(f"{spec.rule_id}: unknown rule kind {spec.kind!r}") from exc
    return kind(spec)
