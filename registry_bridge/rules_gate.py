"""The bridge's rules gate: ledger facts in, ``compliance_rules`` decisions out.

:class:`ComplianceRules` implements :class:`registry_bridge.bridge.TransferRules`, the port
the bridge asks before any state changes; :func:`list_project` answers the gateway's
ListProject RPC. Both translate the bridge's canonical model (``UnitBlock``,
``LedgerHolding``) into the engine's facts, evaluate them with the built-in rule packs (loaded
once, cached by :func:`compliance_rules.load_builtin`) and translate the engine's decisions
back into :class:`~registry_bridge.transfers.RulesDecision` values.

Which packs decide:

- a transfer: the pack of the destination registry (``shenzhen``, ``national``,
  ``guangdong``, ``hkmo``, ``bri`` -> ``article6-bri``), with the baseline double-counting
  pack under it. Verra and Gold Standard, and any mirror returning to its own origin
  registry, get the baseline pack only: the units go home, where they are native, and the
  only question is whether they are counted once. A ``corsia`` use adds the ``corsia`` pack,
  under the rules of the offsetting obligation's compliance year when the instruction names
  one (a first-phase obligation met in 2027 is decided under the first phase; met after the
  phase's cancellation deadline, it is refused);
  Belt-and-Road ITMOs add ``article6-bri`` (for those blocks) wherever they go, because
  authorization and corresponding adjustment travel with the unit, not with the market;
- a retirement: the pack of the registry the units are retired in, for voluntary
  retirement (baseline only at Verra and Gold Standard);
- a surrender: the pack of the request's jurisdiction, with the entity's compliance year
  from :class:`EntityRecords` (no record: refused, never guessed).

A project whose latest listing in the jurisdiction the units land or are used in (the
destination registry of a transfer decided by its market's pack, the registry of a
retirement, the jurisdiction of a surrender) was refused has its units refused there, with
the listing's own violations (see :meth:`ComplianceRules._refused_listings`).

Double counting is decided in *origin coordinates*: every ledger row, origin or mirror, is
given to the engine as the origin serial range it stands for, so a mirror at Shenzhen and
its origin at Verra are recognised as the same units. A moving block carries its ledger row
id as ``holding_id``; a bridged origin row standing behind a moving mirror carries the same
id, because a bridged origin and its mirror are one holding (DESIGN.md, invariant 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Protocol

from compliance_rules import (
    Authorization,
    Block,
    BlockRef,
    CaStatus,
    Decision,
    EntityYear,
    GecStatus,
    KnownBlock,
    NoVersionInForceError,
    Period,
    Project,
    RulePack,
    TransferFacts,
    Use,
    Violation,
    evaluate_transfer,
    load_builtin,
)
from compliance_rules import HoldingStatus as FactStatus
from compliance_rules.engine import decision_date
from registry_bridge.bridge import ORIGIN_REGISTRY, TransferCheck, UseCheck
from registry_bridge.covered_entities import not_its_year
from registry_bridge.errors import InvalidRequest
from registry_bridge.ledger import LedgerHolding, origin_part
from registry_bridge.listing import (
    ListingCondition,
    ListingEligibility,
    ListingOutcome,
    ProjectListing,
    RefusedListing,
)
from registry_bridge.listing_rules import (
    ARTICLE6,
    BASELINE,
    CORSIA,
    DESTINATION_COUNTRY,
    PACK_BY_REGISTRY,
    decide_listing,
    listing_facts,
    place,
    registrations,
)
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.transfers import RulesDecision, RuleViolation, TransferKind

BASELINE_ONLY_REGISTRIES = frozenset({"verra", "gold-standard"})
"""International standards' home registries: no market rules of ours apply there, only the
double-counting checks (units going there are mirrors returning home)."""

INTENDED_USES = frozenset({"holding", "compliance", "voluntary_retirement", "listing", "corsia"})
"""The intended uses a transfer instruction may name (as the gateway validates them)."""

# Market dates: every scheme served (Shenzhen, Guangdong, national, Hong Kong, Macau) keeps
# China Standard Time / HKT, UTC+8 without daylight saving; an instrument effective "1 May"
# is in force from midnight there, not in UTC.
MARKET_TIME = timezone(timedelta(hours=8))

GATE_SOURCE = "carbonlink DESIGN.md, Rules: decisions fail closed when a fact is missing"
ENTITY_SOURCE = "carbonlink DESIGN.md, Rules: offset limits need the entity's compliance year"

UNKNOWN_JURISDICTION = "CL-GATE-0001"
NO_VERSION_IN_FORCE = "CL-GATE-0002"
UNITS_NOT_IN_LEDGER = "CL-GATE-0003"
UNKNOWN_INTENDED_USE = "CL-GATE-0004"
UNKNOWN_USE_KIND = "CL-GATE-0005"
FACT_NOT_RECORDED = "CL-GATE-0006"
NO_ENTITY_RECORD = "CL-ENTITY-0001"
ENTITY_RECORD_MISMATCH = "CL-ENTITY-0002"
MIGRATED_OUT = "CL-MIGRATION-0001"
"""A surrender in a pilot for a year the entity's migration gave to the national ETS."""
PILOT_COVERED = "CL-MIGRATION-0002"
"""A surrender in the national ETS for a year the entity's pilot still covers."""
MIGRATION_SOURCE = (
    "Order No. 775 (2024): key emitters stop trading in local ETSs for the same gases and "
    "industries (RULES-REFERENCE §2); carbonlink DESIGN.md: no year covered twice"
)


class EntityRecords(Protocol):
    """Where a covered entity's compliance year comes from (verified emissions, allowances
    due, offsets already surrendered): the facts an offset limit is computed from."""

    def get(self, entity_id: str, jurisdiction: str, year: int) -> EntityYear | None:
        """The entity's compliance year in a jurisdiction.

        Args:
            entity_id: The covered entity.
            jurisdiction: The scheme it complies under (``"shenzhen"``, ``"national"``...).
            year: The compliance year.

        Returns:
            The record, or ``None`` when none is recorded (the surrender is then refused).
        """
        ...


@dataclass(frozen=True)
class Cutover:
    """A covered entity's move from one scheme to another, from a first compliance year."""

    migration_id: str
    entity_id: str
    from_jurisdiction: str
    to_jurisdiction: str
    first_year: int
    """The destination covers this year and later; the origin the years before."""
    claimed: Mapping[str, frozenset[int]] | None = None
    """None while the migration is not abandoned: ``first_year`` splits the years.  For an
    abandoned one, the compliance years the entity claimed (surrendered for) per scheme:
    a year from ``first_year`` on is the scheme's that claimed it, and one neither claimed
    is open to both (``covered_entities.claimed_by_the_other``)."""


class Cutovers(Protocol):
    """Where the entities' migrations between schemes come from."""

    def cutovers(self, entity_id: str) -> Sequence[Cutover]:
        """The entity's migrations whose split of its years counts, one per scheme it
        leaves (see ``migration.DatabaseCutovers`` for which)."""
        ...


class ProjectRecords(Protocol):
    """The facts issuers declared for their projects when listing them (ListProject)."""

    def get(self, program: str, project_id: str) -> ProjectListing | None:
        """The project's recorded facts, or None when the project was never listed."""
        ...

    def refused(self, program: str, project_id: str, jurisdiction: str) -> RefusedListing | None:
        """The project's latest listing decision in ``jurisdiction`` if it refused the
        project; None when it listed it, or the project was never listed there."""
        ...


# ------------------------------------------------------------------------------ translation


def _market_day(at: datetime) -> date:
    if at.tzinfo is None:
        # A naive instant has no market day; the bridge's clock is aware by contract.
        raise ValueError(f"the rules clock must be timezone-aware, got {at.isoformat()}")
    return at.astimezone(MARKET_TIME).date()


def _placed_offsets(entity: EntityYear) -> EntityYear:
    """The entity's year with the offsets it already used placed as the packs name places:
    their record keeps each unit's region as its registry gave it (``CN-GD``), which no
    pack's place list names, so a local-origin share would count them as from elsewhere."""
    placed = []
    for used in entity.offsets_surrendered:
        region, city = place(used.country, used.region)
        placed.append(dataclasses.replace(used, region=region, city=used.city or city))
    return dataclasses.replace(entity, offsets_surrendered=tuple(placed))


def _ref(block_id: BlockId) -> BlockRef:
    return BlockRef(
        block_id.program.value, block_id.serial_series, block_id.serial_start, block_id.serial_end
    )


def _block_id(ref: BlockRef) -> BlockId:
    return BlockId(Program(ref.program), ref.serial_series, ref.serial_start, ref.serial_end)


def _fact_block(
    unit: UnitBlock, origin: BlockId, holding_id: str, listing: ProjectListing | None = None
) -> Block:
    """The engine's view of a unit block, placed at the origin range it stands for.

    Project facts the unit model does not carry (start and construction dates, city, GEC
    status, registrations under other programs) come from the project's listing when its
    issuer listed it (ListProject).  Without a listing the engine fails closed on the
    rules that need the dates, and the gate on the GEC rule (see :func:`_unrecorded_gec`).
    Unit labels are also given as project labels, because the model keeps one label set
    (``pre_cdm`` is a project label, ``corsia_eligible`` a unit one).
    """
    region, city = place(unit.country, unit.region)
    if listing is not None and not city:
        city = place(listing.country or unit.country, listing.region)[1]
    auth = unit.authorization
    return Block(
        ref=_ref(origin),
        project=Project(
            program=unit.program.value,
            project_id=unit.project_id,
            country=unit.country,
            region=region,
            city=city,
            project_type=unit.project_type,
            methodology=unit.methodology,
            labels=unit.labels | (listing.labels if listing is not None else frozenset()),
            start_date=None if listing is None else listing.start_date,
            construction_start=None if listing is None else listing.construction_start,
            registrations=() if listing is None else registrations(listing),
        ),
        vintage=Period(unit.vintage_start, unit.vintage_end),
        gas=unit.gas,
        gwp_basis=unit.gwp_basis,
        authorization=None
        if auth is None
        else Authorization(auth.letter_id, auth.host_country, auth.authorized_uses),
        ca_status=CaStatus(unit.corresponding_adjustment.value),
        labels=unit.labels,
        gec_status=(
            GecStatus(listing.gec_status)
            if listing is not None and listing.gec_status
            else GecStatus.NONE
        ),
        holding_id=holding_id,
    )


def _unique(rows: Iterable[LedgerHolding]) -> list[LedgerHolding]:
    # The bridge collects rows per unit selector, so one row may be listed more than once.
    seen: dict[int, LedgerHolding] = {}
    for row in rows:
        seen.setdefault(row.row_id, row)
    return list(seen.values())


@dataclass(frozen=True)
class _Moving:
    """A block about to move or be used, with the ledger row it comes from."""

    unit: UnitBlock
    """As the bridge gave it (reported back in violations)."""
    origin: BlockId
    row: LedgerHolding

    @property
    def holding_id(self) -> str:
        return str(self.row.row_id)


def _cut(span: BlockId, holes: Sequence[BlockId]) -> list[BlockId]:
    """``span`` minus ``holes`` (all of one program and series), as contiguous ranges."""
    out: list[BlockId] = []
    start = span.serial_start
    for hole in sorted(holes):
        if hole.serial_start > start:
            out.append(
                BlockId(
                    span.program,
                    span.serial_series,
                    start,
                    min(hole.serial_start - 1, span.serial_end),
                )
            )
        start = max(start, hole.serial_end + 1)
        if start > span.serial_end:
            return out
    out.append(BlockId(span.program, span.serial_series, start, span.serial_end))
    return out


def _known_blocks(
    rows: Sequence[LedgerHolding], moving: Sequence[_Moving]
) -> tuple[KnownBlock, ...]:
    """Every known ledger row as the engine sees it: origin range, status, holding id.

    A bridged origin row is immobilized *because* a mirror of it exists: where a moving
    block is such a mirror, the overlapping part of the bridged origin is the same holding
    and carries the mirror's id, so it is not taken for a second live copy of the units.
    """
    mirrors = [m for m in moving if m.row.is_mirror]
    out: list[KnownBlock] = []
    for row in rows:
        status = FactStatus(row.status.value)
        behind = (
            [m for m in mirrors if m.origin.overlaps(row.origin)]
            if not row.is_mirror and row.status is HoldingStatus.BRIDGED
            else []
        )
        own = str(row.row_id)
        if not behind:
            out.append(KnownBlock(_ref(row.origin), status, row.registry, own))
            continue
        shared: list[BlockId] = []
        for m in behind:
            part = BlockId(
                row.origin.program,
                row.origin.serial_series,
                max(row.origin.serial_start, m.origin.serial_start),
                min(row.origin.serial_end, m.origin.serial_end),
            )
            shared.append(part)
            out.append(KnownBlock(_ref(part), status, row.registry, m.holding_id))
        out.extend(
            KnownBlock(_ref(rest), status, row.registry, own) for rest in _cut(row.origin, shared)
        )
    return tuple(out)


def _violation(v: Violation, reported: Mapping[BlockRef, BlockId]) -> RuleViolation:
    """The bridge's form of an engine violation; blocks as the bridge named them."""
    details = [(name, str(value)) for name, value in v.details]
    if v.unconfirmed_params:
        # A reviewer must know when a refusal rests on a figure the pack marks unconfirmed.
        details.append(("unconfirmed_params", ",".join(v.unconfirmed_params)))
    return RuleViolation(
        rule_id=v.rule_id,
        message=f"{v.message}: {v.detail}" if v.detail else v.message,
        source=str(v.source),
        blocks=tuple(reported.get(ref) or _block_id(ref) for ref in v.blocks),
        details=tuple(details),
    )


def _gate_violation(
    rule_id: str,
    message: str,
    blocks: Iterable[BlockId] = (),
    details: Iterable[tuple[str, str]] = (),
    source: str = GATE_SOURCE,
) -> RuleViolation:
    return RuleViolation(rule_id, message, source, tuple(blocks), tuple(details))


def _market_use(intended: str) -> Use:
    """The use a transfer is checked for in the destination market (see check_transfer)."""
    if intended in ("holding", "corsia"):
        return Use.LISTING
    return Use(intended)


def _deny(*violations: RuleViolation) -> RulesDecision:
    return RulesDecision(allowed=False, violations=violations)


def _version(pack: str, day: date) -> str:
    return f"{pack}@{day.isoformat()}"


def _wrong_side(c: Cutover, entity_id: str, jurisdiction: str, year: int) -> tuple[str, str] | None:
    """The rule and message refusing a surrender in ``jurisdiction`` for ``year`` that
    ``c`` puts in the other scheme; None when the year is ``jurisdiction``'s."""
    if not not_its_year(
        jurisdiction, year, c.from_jurisdiction, c.to_jurisdiction, c.first_year, c.claimed
    ):
        return None
    if c.claimed is None:
        if jurisdiction == c.from_jurisdiction:
            return MIGRATED_OUT, (
                f"{entity_id} moved from {jurisdiction} to the {c.to_jurisdiction} ETS "
                f"from {c.first_year} (migrations/{c.migration_id}): it cannot "
                f"surrender in {jurisdiction} for {year}"
            )
        return PILOT_COVERED, (
            f"{entity_id} is covered by {c.from_jurisdiction} until "
            f"{c.first_year - 1} (migrations/{c.migration_id}): {year} is not a "
            f"{jurisdiction} compliance year for it"
        )
    abandoned = f"migrations/{c.migration_id}, abandoned"
    if jurisdiction == c.from_jurisdiction:
        return MIGRATED_OUT, (
            f"{entity_id} surrendered in the {c.to_jurisdiction} ETS for {year} "
            f"({abandoned}, from {c.first_year}): it cannot surrender in {jurisdiction} for "
            f"{year} too"
        )
    if year < c.first_year:
        return PILOT_COVERED, (
            f"{entity_id} is covered by {c.from_jurisdiction} until "
            f"{c.first_year - 1} ({abandoned}): {year} is not a "
            f"{jurisdiction} compliance year for it"
        )
    return PILOT_COVERED, (
        f"{entity_id} surrendered in {c.from_jurisdiction} for {year} ({abandoned}, from "
        f"{c.first_year}): {year} is not a {jurisdiction} compliance year for it"
    )


@dataclass(frozen=True)
class _Evaluation:
    """One pack asked about some blocks for one use."""

    pack: str
    use: Use
    moving: tuple[_Moving, ...]
    compliance_year: int | None = None
    """The obligation's year, given to the engine without an entity: its rules decide, on the
    pack's decision day for it (see :meth:`RulePack.decision_day`), and a cycle of the pack
    that closed before the check's day refuses it; None: the check's own day (or the
    entity's year)."""


class _Combined:
    """Deny-overrides over several pack decisions, every violation kept once."""

    def __init__(self) -> None:
        self.violations: dict[RuleViolation, None] = {}
        self.versions: dict[str, None] = {}
        self.deferred: dict[str, None] = {}

    def add(
        self,
        violations: Iterable[RuleViolation],
        versions: Iterable[str] = (),
        deferred: Iterable[str] = (),
    ) -> None:
        # The baseline pack runs under each scheme pack: the same double-counting violation
        # may come from two evaluations and is reported once.
        self.violations.update(dict.fromkeys(violations))
        self.versions.update(dict.fromkeys(versions))
        self.deferred.update(dict.fromkeys(deferred))

    def decision(self) -> RulesDecision:
        return RulesDecision(
            allowed=not self.violations,
            violations=tuple(self.violations),
            pack_versions=tuple(self.versions),
            deferred_rules=tuple(sorted(self.deferred)),
        )


# ------------------------------------------------------------------------------------ gate


class ComplianceRules:
    """The bridge's :class:`~registry_bridge.bridge.TransferRules` over ``compliance_rules``.

    Pure apart from :class:`EntityRecords`: every fact comes with the check, the clock from
    ``check.at``, and the packs are loaded once, here.
    """

    def __init__(
        self,
        entities: EntityRecords,
        cutovers: Cutovers | None = None,
        projects: ProjectRecords | None = None,
    ) -> None:
        """Build the gate.

        Args:
            entities: The covered entities' compliance years, for surrender offset limits.
            cutovers: The entities' migrations between schemes; a surrender on the wrong
                side of one is refused. None: no migrations are known.
            projects: The projects' listed facts (dates, GEC status, registrations); None:
                no project was listed, and the rules that need those facts fail closed.

        Raises:
            PackInvalidError: A built-in pack is invalid (a packaging bug).
        """
        self._entities = entities
        self._cutovers = cutovers
        self._projects = projects
        names = {BASELINE, CORSIA, ARTICLE6, *PACK_BY_REGISTRY.values()}
        self._packs: dict[str, RulePack] = {name: load_builtin(name) for name in names}

    # ---------------------------------------------------------------------------- transfers

    def check_transfer(self, check: TransferCheck) -> RulesDecision:
        """Allow or deny a transfer, with every violation.

        The intended use maps onto the packs' uses as follows. ``"holding"`` (units simply
        move to an account in the destination registry) is :attr:`Use.LISTING`: the units
        are admitted to be held and traded in that market, which is what a pack's listing
        rules decide (HKEX Core Climate: "source, hold, trade"; CCER held in national
        accounts and traded on the national venue; CCER and PHCER held in Guangdong accounts
        before surrender). Every scheme pack provides a listing use; one that did not would
        refuse a holding transfer with ``CR-ENGINE-0002`` (fail closed rather than admit
        units no rule speaks to). ``"corsia"`` is a holding in the destination market plus
        :attr:`Use.CORSIA` under the ``corsia`` pack, decided on that pack's decision day
        for the instruction's ``compliance_year`` when it names one (the obligation's
        phase decides which units are eligible, and a phase past its cancellation deadline
        on the transfer's day refuses them), else on the transfer's day; the destination
        market's rules are always those of the transfer's day. ``"compliance"``,
        ``"voluntary_retirement"`` and ``"listing"`` map to the use of the same name; a
        transfer for compliance moves units into an entity's account but is not the
        surrender, so the rules decided on the entity's compliance year (offset limits,
        local share, national-ETS carve-out) are left to the surrender (:meth:`check_use`),
        where the entity's record is known; every other compliance rule is decided here.

        Args:
            check: The instruction, the origin blocks that move and every live ledger row
                touching the same origin units.

        Returns:
            The combined decision (deny-overrides) of every pack asked.

        Raises:
            ValueError: ``check.at`` is naive.
        """
        instruction = check.instruction
        destination = instruction.destination.registry
        if instruction.intended_use not in INTENDED_USES:
            return _deny(
                _gate_violation(
                    UNKNOWN_INTENDED_USE,
                    f"intended use {instruction.intended_use!r} is none of "
                    f"{', '.join(sorted(INTENDED_USES))}",
                )
            )
        known = _unique(check.known)
        source = instruction.source
        moving: list[_Moving] = []
        missing: list[BlockId] = []
        for unit in check.blocks:
            # The bridge gives origin blocks; the row they move from is the source account's
            # (a mirror for a return, an origin row otherwise) that holds that origin range.
            rows = [
                r
                for r in known
                if r.registry == source.registry
                and r.account == source.account
                and r.is_mirror == (check.kind is TransferKind.RETURN)
                and r.origin.contains(unit.id)
            ]
            if len(rows) == 1:
                moving.append(_Moving(unit, unit.id, rows[0]))
            else:
                missing.append(unit.id)
        if missing:
            return _deny(self._not_in_ledger(missing, f"{source.registry}/{source.account}"))
        day = _market_day(check.at)
        returning_home = check.kind is TransferKind.RETURN and all(
            ORIGIN_REGISTRY.get(m.unit.program) == destination for m in moving
        )
        use = _market_use(instruction.intended_use)
        evaluations: list[_Evaluation] = []
        refused: list[RuleViolation] = []
        if destination in BASELINE_ONLY_REGISTRIES or returning_home:
            evaluations.append(_Evaluation(BASELINE, use, tuple(moving)))
        elif destination in PACK_BY_REGISTRY:
            refused = self._refused_listings(moving, destination)
            pack = PACK_BY_REGISTRY[destination]
            evaluations.append(_Evaluation(pack, use, tuple(moving)))
            if instruction.intended_use == "corsia":
                # An offsetting obligation is met under its own year's CORSIA rules: units
                # cancelled in 2027 for a 2026 obligation are first-phase units, until the
                # phase's cancellation deadline. The destination market still admits them
                # under its rules of the day.
                year = instruction.compliance_year or None
                evaluations.append(_Evaluation(CORSIA, Use.CORSIA, tuple(moving), year))
            itmos = tuple(m for m in moving if m.unit.program is Program.BRI_ITMO)
            if itmos and pack != ARTICLE6:
                evaluations.append(_Evaluation(ARTICLE6, use, itmos))
        else:
            return _deny(self._unknown_jurisdiction("destination registry", destination))
        return self._run(
            evaluations,
            known,
            DESTINATION_COUNTRY.get(destination, ""),
            day,
            entity=None,
            defer_entity_rules=True,
            refused=refused,
        )

    # --------------------------------------------------------------------------------- uses

    def check_use(self, check: UseCheck) -> RulesDecision:
        """Allow or deny a retirement or a surrender, with every violation.

        A retirement is voluntary: double use and double counting through the baseline pack,
        and the voluntary-retirement rules of the pack of the registry the units sit in (the
        baseline only at Verra and Gold Standard). A surrender is compliance use under the
        request's jurisdiction, with the entity's compliance year from :class:`EntityRecords`:
        without a record the surrender is refused (``CL-ENTITY-0001``), never guessed.

        Args:
            check: The request, the blocks used (as held, mirrors in their own serials) and
                every live ledger row touching the same origin units.

        Returns:
            The combined decision of every pack asked.

        Raises:
            ValueError: ``check.at`` is naive.
        """
        request = check.request
        account = request.account
        known = _unique(check.known)
        moving: list[_Moving] = []
        missing: list[BlockId] = []
        for unit in check.blocks:
            rows = [
                r
                for r in known
                if r.registry == account.registry
                and r.account == account.account
                and r.block.id.contains(unit.id)
            ]
            if len(rows) == 1:
                moving.append(
                    _Moving(
                        unit,
                        origin_part(rows[0], unit.id.serial_start, unit.id.serial_end),
                        rows[0],
                    )
                )
            else:
                missing.append(unit.id)
        if missing:
            return _deny(self._not_in_ledger(missing, f"{account.registry}/{account.account}"))
        day = _market_day(check.at)
        if request.kind == "retirement":
            return self._retirement(tuple(moving), known, account.registry, day)
        if request.kind == "surrender":
            return self._surrender(
                tuple(moving),
                known,
                request.entity_id,
                request.jurisdiction,
                request.compliance_year,
                day,
            )
        return _deny(
            _gate_violation(
                UNKNOWN_USE_KIND, f"use kind {request.kind!r} is neither retirement nor surrender"
            )
        )

    def _retirement(
        self, moving: tuple[_Moving, ...], known: Sequence[LedgerHolding], registry: str, day: date
    ) -> RulesDecision:
        use = Use.VOLUNTARY_RETIREMENT
        refused: list[RuleViolation] = []
        if registry in BASELINE_ONLY_REGISTRIES:
            evaluations = [_Evaluation(BASELINE, use, moving)]
        elif registry in PACK_BY_REGISTRY:
            refused = self._refused_listings(moving, registry)
            pack = PACK_BY_REGISTRY[registry]
            evaluations = [_Evaluation(pack, use, moving)]
            itmos = tuple(m for m in moving if m.unit.program is Program.BRI_ITMO)
            if itmos and pack != ARTICLE6:
                evaluations.append(_Evaluation(ARTICLE6, use, itmos))
        else:
            return _deny(self._unknown_jurisdiction("registry", registry))
        return self._run(
            evaluations, known, DESTINATION_COUNTRY.get(registry, ""), day, None, refused=refused
        )

    def _surrender(
        self,
        moving: tuple[_Moving, ...],
        known: Sequence[LedgerHolding],
        entity_id: str,
        jurisdiction: str,
        year: int,
        day: date,
    ) -> RulesDecision:
        pack = PACK_BY_REGISTRY.get(jurisdiction)
        if pack is None:
            return _deny(self._unknown_jurisdiction("jurisdiction", jurisdiction))
        evaluations = [_Evaluation(pack, Use.COMPLIANCE, moving)]
        itmos = tuple(m for m in moving if m.unit.program is Program.BRI_ITMO)
        if itmos and pack != ARTICLE6:
            evaluations.append(_Evaluation(ARTICLE6, Use.COMPLIANCE, itmos))
        country = DESTINATION_COUNTRY.get(jurisdiction, "")
        refused = self._refused_listings(moving, jurisdiction)
        moved = self._migrated(moving, entity_id, jurisdiction, year)
        if moved:
            # Reported with every other violation, so the refusal explains itself fully.
            decided = self._surrender_rules(
                moving, known, entity_id, jurisdiction, year, day, evaluations, country, refused
            )
            return RulesDecision(False, (*moved, *decided.violations), decided.pack_versions)
        return self._surrender_rules(
            moving, known, entity_id, jurisdiction, year, day, evaluations, country, refused
        )

    def _migrated(
        self, moving: Sequence[_Moving], entity_id: str, jurisdiction: str, year: int
    ) -> list[RuleViolation]:
        """The entity's migrations that put this year in another scheme."""
        if self._cutovers is None:
            return []
        out: list[RuleViolation] = []
        for c in self._cutovers.cutovers(entity_id):
            reason = _wrong_side(c, entity_id, jurisdiction, year)
            if reason is not None:
                rule_id, message = reason
                out.append(
                    _gate_violation(
                        rule_id,
                        message,
                        (m.unit.id for m in moving),
                        (("migration", c.migration_id), ("first_year", str(c.first_year))),
                        source=MIGRATION_SOURCE,
                    )
                )
        return out

    def _surrender_rules(
        self,
        moving: tuple[_Moving, ...],
        known: Sequence[LedgerHolding],
        entity_id: str,
        jurisdiction: str,
        year: int,
        day: date,
        evaluations: list[_Evaluation],
        country: str,
        refused: Sequence[RuleViolation],
    ) -> RulesDecision:
        entity = self._entities.get(entity_id, jurisdiction, year)
        if entity is not None and (entity.entity_id, entity.compliance_year) != (entity_id, year):
            return _deny(
                _gate_violation(
                    ENTITY_RECORD_MISMATCH,
                    f"the record found for entity {entity_id} in {year} is "
                    f"{entity.entity_id}'s for {entity.compliance_year}",
                    (m.unit.id for m in moving),
                    source=ENTITY_SOURCE,
                ),
                *refused,
            )
        if entity is None:
            no_record = _gate_violation(
                NO_ENTITY_RECORD,
                f"no verified emissions recorded for entity {entity_id} in year {year} "
                f"({jurisdiction}): the offset limit cannot be computed",
                (m.unit.id for m in moving),
                (("entity_id", entity_id), ("compliance_year", str(year))),
                source=ENTITY_SOURCE,
            )
            # The other rules are still evaluated, so the refusal lists every violation.
            # Without the record the engine has no entity to take the year from, so each
            # evaluation names the year itself: the year's rules decide, and a closed cycle
            # is refused as with the record.
            for_year = [dataclasses.replace(e, compliance_year=year) for e in evaluations]
            decided = self._run(for_year, known, country, day, None, refused=refused)
            return RulesDecision(False, (no_record, *decided.violations), decided.pack_versions)
        return self._run(evaluations, known, country, day, _placed_offsets(entity), refused=refused)

    # ------------------------------------------------------------------------------ engine

    def _run(
        self,
        evaluations: Sequence[_Evaluation],
        known: Sequence[LedgerHolding],
        destination_country: str,
        day: date,
        entity: EntityYear | None,
        *,
        defer_entity_rules: bool = False,
        refused: Sequence[RuleViolation] = (),
    ) -> RulesDecision:
        """Evaluate every pack asked and combine their decisions (deny-overrides).

        ``refused`` are the refusals of the projects' listings where the units land or are
        used (:meth:`_refused_listings`), reported first with every other violation.

        An evaluation with a ``compliance_year`` gives the engine that year, which decides it
        on its pack's decision day for the year, while ``day`` stays the engine's clock: a
        use for a cycle that closed at its deadline before ``day`` is refused. An ``entity``
        gives the engine its year itself.
        """
        combined = _Combined()
        combined.add(refused)
        all_moving = tuple(m for e in evaluations for m in e.moving)
        known_blocks = _known_blocks(known, all_moving)
        baseline = self._packs[BASELINE]
        for evaluation in evaluations:
            reported = {_ref(m.origin): m.unit.id for m in evaluation.moving}
            listings = [self._listing(m.unit) for m in evaluation.moving]
            facts = TransferFacts(
                use=evaluation.use,
                blocks=tuple(
                    _fact_block(m.unit, m.origin, m.holding_id, listing)
                    for m, listing in zip(evaluation.moving, listings, strict=True)
                ),
                destination_country=destination_country,
                entity=entity,
                known_blocks=known_blocks,
                compliance_year=None if entity is not None else evaluation.compliance_year,
            )
            pack = self._packs[evaluation.pack]
            try:
                decision = evaluate_transfer(
                    pack, facts, day, baseline=baseline, defer_entity_rules=defer_entity_rules
                )
                base_version = baseline.version_for(decision_date(pack, facts, day))
            except NoVersionInForceError as exc:
                combined.add([_gate_violation(NO_VERSION_IN_FORCE, str(exc))])
                continue
            combined.add(
                [_violation(v, reported) for v in decision.violations],
                _versions(decision, base_version.effective_from),
                decision.deferred_rules,
            )
            unrecorded = [
                m
                for m, listing in zip(evaluation.moving, listings, strict=True)
                if listing is None or not listing.gec_status
            ]
            combined.add(_unrecorded_gec(pack, decision, unrecorded))
        return combined.decision()

    def _refused_listings(
        self, moving: Sequence[_Moving], jurisdiction: str
    ) -> list[RuleViolation]:
        """The refusals of the listings, in ``jurisdiction``, of the projects of ``moving``.

        A project whose latest listing decision there refused it (double issuance, the
        market's listing rules, a foreign letter of authorization) has its units refused
        there, whatever the rest of the check finds: the refusal says the reductions are
        not to be counted in that market, and the unit-level rules cannot see why (a
        registration elsewhere is declared only with the listing, which records no facts
        when refused). Each of the listing's violations is reported under its own rule id,
        naming the listing, with the blocks of that project; a later listing there that is
        not refused lifts them. A project never listed there is left to the rules.
        """
        if self._projects is None:
            return []
        by_project: dict[tuple[str, str], list[BlockId]] = {}
        for m in moving:
            if m.unit.project_id:
                by_project.setdefault((m.unit.program.value, m.unit.project_id), []).append(
                    m.unit.id
                )
        out: list[RuleViolation] = []
        for (program, project_id), blocks in by_project.items():
            listing = self._projects.refused(program, project_id, jurisdiction)
            if listing is None:
                continue
            out.extend(
                RuleViolation(
                    rule_id=v.rule_id,
                    message=(
                        f"{v.message} (project {program} {project_id}'s listing in "
                        f"{jurisdiction}, {listing.name}, was refused: its units are refused "
                        "there until it is listed again)"
                    ),
                    source=v.source,
                    blocks=tuple(blocks),
                    details=(
                        *v.details,
                        ("listing", listing.name),
                        ("jurisdiction", jurisdiction),
                    ),
                )
                for v in listing.refusals
            )
        return out

    def _listing(self, unit: UnitBlock) -> ProjectListing | None:
        if self._projects is None:
            return None
        return self._projects.get(unit.program.value, unit.project_id)

    def _not_in_ledger(self, blocks: Sequence[BlockId], where: str) -> RuleViolation:
        return _gate_violation(
            UNITS_NOT_IN_LEDGER,
            f"the ledger rows given with the check do not hold these units at {where} exactly "
            "once, so double counting cannot be checked",
            blocks,
        )

    def _unknown_jurisdiction(self, what: str, name: str) -> RuleViolation:
        known = ", ".join(sorted({*PACK_BY_REGISTRY, *BASELINE_ONLY_REGISTRIES}))
        return _gate_violation(
            UNKNOWN_JURISDICTION, f"no rule pack for {what} {name!r} (known: {known})"
        )


def _versions(decision: Decision, baseline_from: date) -> tuple[str, ...]:
    own = _version(decision.pack, decision.pack_version)
    if decision.pack == BASELINE:
        return (own,)
    return (own, _version(BASELINE, baseline_from))


def _unrecorded_gec(
    pack: RulePack, decision: Decision, moving: Sequence[_Moving]
) -> list[RuleViolation]:
    """Fail closed on GEC/CCER exclusivity, whose fact the unit model does not carry.

    The engine reads a block's GEC status and, given none, takes "no GEC"; the unit model has
    no such field, so a block the rule covers would pass unchecked. Each GEC rule in force
    for the decision's use is read from the pack, and every block it covers is refused.
    """
    out: list[RuleViolation] = []
    version = next(v for v in pack.versions if v.effective_from == decision.pack_version)
    for spec in version.rules:
        if spec.kind != "gec_exclusivity" or decision.use not in spec.uses:
            continue
        types = spec.params.get("project_types", ())
        programs = spec.params.get("programs")
        covered = [
            m.unit.id
            for m in moving
            if isinstance(types, tuple)
            and m.unit.project_type in types
            and (not isinstance(programs, tuple) or m.unit.program.value in programs)
        ]
        if covered:
            out.append(
                _gate_violation(
                    FACT_NOT_RECORDED,
                    f"the green-electricity-certificate status of the generation is not "
                    f"recorded for these units, so {spec.rule_id} ({spec.message}) cannot be "
                    "checked",
                    covered,
                    (("rule", spec.rule_id),),
                )
            )
    return out


# ------------------------------------------------------------------------------ ListProject


def list_project(project: ProjectListing, jurisdiction: str, as_of: date) -> ListingOutcome:
    """Which uses a project's units would be eligible for in a jurisdiction (ListProject).

    A project whose reductions for an overlapping period are already issued under another
    program is refused as a whole, and so is one the jurisdiction's listing rules refuse
    (its listing use admits units to the market). Unit-level rules (authorization, corresponding
    adjustment, gas, offset limits) are returned as each use's ``conditions``: they are
    checked on every transfer.

    Args:
        project: The project as its issuer presents it.
        jurisdiction: ``"shenzhen"``, ``"guangdong"``, ``"national"``, ``"hkmo"`` or ``"bri"``.
        as_of: The day whose rules apply.

    Returns:
        The outcome: listed or not, per-use eligibility, refusals.

    Raises:
        InvalidRequest: Unknown jurisdiction, a period ending before it starts, or a day
            before the jurisdiction's first pack version.
    """
    pack_name = PACK_BY_REGISTRY.get(jurisdiction)
    if pack_name is None:
        raise InvalidRequest.field(
            "jurisdiction",
            f"{jurisdiction!r} has no rule pack (known: {', '.join(sorted(PACK_BY_REGISTRY))})",
        )
    facts = listing_facts(project, DESTINATION_COUNTRY.get(jurisdiction, ""))
    pack, baseline = load_builtin(pack_name), load_builtin(BASELINE)
    try:
        decision = decide_listing(pack, facts, as_of)
        base_from = baseline.version_for(as_of).effective_from
    except NoVersionInForceError as exc:
        raise InvalidRequest.field("as_of", str(exc)) from exc
    versions = (_version(decision.pack, decision.pack_version), _version(BASELINE, base_from))
    # The pack's own rules first: a scheme that restates a baseline rule words it for itself.
    specs = {
        spec.rule_id: spec
        for spec in (*baseline.version_for(as_of).rules, *pack.version_for(as_of).rules)
    }
    eligibility = tuple(
        ListingEligibility(
            use=u.use.value,
            decision=RulesDecision(
                allowed=u.eligible,
                violations=tuple(_violation(v, {}) for v in u.violations),
                pack_versions=versions,
            ),
            conditions=tuple(
                ListingCondition(rule_id, specs[rule_id].message, str(specs[rule_id].source))
                for rule_id in u.conditions
            ),
        )
        for u in decision.uses
    )
    return ListingOutcome(
        listed=not decision.refused,
        eligibility=eligibility,
        refusals=tuple(_violation(v, {}) for v in decision.refusals),
        pack_versions=versions,
    )


__all__ = [
    "BASELINE_ONLY_REGISTRIES",
    "DESTINATION_COUNTRY",
    "INTENDED_USES",
    "PACK_BY_REGISTRY",
    "ComplianceRules",
    "Cutover",
    "Cutovers",
    "EntityRecords",
    "list_project",
]
