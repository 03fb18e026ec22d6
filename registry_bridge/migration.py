"""A covered entity's migration from a pilot ETS (Shenzhen) to the national ETS.

Order No. 775 stops key emitters trading in local ETSs for the same gases and industries,
and steel, cement and aluminium enter the national ETS from 2024 emissions
(RULES-REFERENCE §2): a Shenzhen entity of those sectors leaves the pilot. The gateway hands
it over in two calls:

- :meth:`Migrations.plan` is a dry run: the final pilot year's obligation, what happens to
  each remaining holding under the pilot pack's ``migration`` section (kept for sale,
  cancelled or transferred), the destination account in the national registry, and every
  violation that blocks the migration. Nothing changes.
- :meth:`Migrations.execute` carries the plan out as a sequence of steps under one
  migration id. The migration and its steps are persisted *before* anything is done; each
  step's registry call carries an id derived from the migration id (a cancellation's
  operation id, a transfer's request id), so a step repeated after a crash has one effect.
  The gateway's recovery loop calls :meth:`Migrations.resume`. A step that fails (its
  units held since the plan, a registry refusing its transfer) fails the migration; the
  same execute repeated tries that step again as a new attempt, under new derived ids, over
  the units of its block the entity still holds, unused, read from the ledger when the
  attempt runs (see :meth:`Migrations._retry_units`). Each attempt stays on the step's
  record.
- :meth:`Migrations.abandon` gives a failed migration up for good when its failure will
  not go away: its done steps stay done (a cancellation cannot be undone, moved units stay
  moved), the steps not yet taken are marked ``not_taken``, and the migration ends
  ``abandoned``, with who gave it up, when and why. An abandoned migration blocks no new
  one: the entity may plan again, from what the ledger holds then.

From the moment a migration is recorded the pilot covers the entity's years before the
first national year only, and the national ETS the years from it: the rules gate refuses a
surrender on the wrong side (``CL-MIGRATION-0001``/``0002``, via :class:`DatabaseCutovers`).
Once every migration of the entity out of the pilot is abandoned, the move never took
place, but while it stood the entity may have surrendered in the national ETS for a year
from the first on: each such year stays the national ETS's, never the pilot's too. The
years from the first on that the national ETS did not claim go back to the pilot, which
may record them, take surrenders for them and, once it has, keep them (the national ETS
then refuses them); the years before the first stay the pilot's alone
(``covered_entities.claimed_by_the_other``). So the entity can meet the obligations it
keeps in the pilot and plan again from a later first year, whose final pilot year must be
paid; a new migration's plan refuses a year on its wrong side that either scheme claimed
(``CL-MIGRATION-0007``), and from its recording its own split counts, as any standing
migration's does.
Offsets the entity surrendered in the pilot are terminal in the ledger (and their origin
retired at the national registry), so the national surrender path refuses them.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session, sessionmaker

from compliance_rules import Disposition, MigrationRules, NoVersionInForceError, load_builtin
from registry_bridge import ledger
from registry_bridge.block_json import (
    block_from_json,
    block_id_from_dict,
    block_id_to_dict,
    block_to_json,
)
from registry_bridge.bridge import ORIGIN_REGISTRY, Bridge
from registry_bridge.covered_entities import MAX_ID_LENGTH, CoveredEntity, covered_twice
from registry_bridge.db import read_only, unit_of_work
from registry_bridge.entities import MIGRATION_ABANDONED, get_entity, migration_splits
from registry_bridge.errors import (
    CarbonlinkError,
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    LedgerConflict,
    NotFound,
    PreconditionViolation,
    RegistryRejected,
    RegistryUnavailable,
    RequestIdConflict,
)
from registry_bridge.event_log import current_signature
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import CancelRequest, ListHoldingsRequest, RegistryPort
from registry_bridge.rules_gate import (
    MARKET_TIME,
    MIGRATED_OUT,
    PACK_BY_REGISTRY,
    PILOT_COVERED,
    Cutover,
)
from registry_bridge.schema import (
    CoveredEntityRecord,
    EntityYearRecord,
    MigrationRecord,
    MigrationStepRecord,
    TransferRecord,
    UnitUseRecord,
)
from registry_bridge.transfers import (
    UNFINISHED_TRANSFER_STATES,
    AccountRef,
    RuleViolation,
    TransferInstruction,
    TransferState,
    body_digest,
    violation_from_dict,
    violation_to_dict,
)

_logger = structlog.get_logger(__name__)

SOURCE = "carbonlink issue 7 (national ETS migration); RULES-REFERENCE §2 (Order No. 775)"

NO_MIGRATION_RULES = "CL-MIGRATION-0003"
NO_FINAL_YEAR = "CL-MIGRATION-0004"
UNFINISHED_COMPLIANCE = "CL-MIGRATION-0005"
PENDING_OPERATIONS = "CL-MIGRATION-0006"
YEAR_COVERED_TWICE = "CL-MIGRATION-0007"
NO_DESTINATION_ACCOUNT = "CL-MIGRATION-0008"
ALREADY_MIGRATING = "CL-MIGRATION-0009"
DISPOSITION_REFUSED = "CL-MIGRATION-0010"
SECTOR_NOT_COVERED_YET = "CL-MIGRATION-0011"
SECTOR_YEAR_UNCONFIRMED = "CL-MIGRATION-0012"
"""A warning, not a block: the destination's first year for the sector is not confirmed."""
NO_DISPOSITION_RULE = "CL-MIGRATION-0013"
"""A warning: the pack says nothing about a program held; the units stay where they are."""
UNCONFIRMED_DISPOSITION = "CL-MIGRATION-0014"
"""A warning: a disposition rests on a pack parameter marked unconfirmed."""
IRREVERSIBLE_UNCONFIRMED = "CL-MIGRATION-0015"
"""A cancellation rests on an unconfirmed disposition the entity has not acknowledged."""
LATE_FIRST_YEAR = "CL-MIGRATION-0016"
"""A warning: the first national year is after the sector's; the years between stay in the pilot."""
DUE_BELOW_VERIFIED = "CL-MIGRATION-0017"
"""A warning: the final pilot year's allowances due are below its verified emissions."""
PILOT_ACCOUNT_UNKNOWN = "CL-MIGRATION-0018"
"""The pilot registry knows no account the entity is recorded with there (or is not wired,
so it cannot be asked): a plan against that account would leave the entity's real pilot
holdings behind."""

HELD_UNITS = "CL-MIGRATION-0019"
"""Units the migration would move or cancel are held by the bridge: a failed use no
operator has resolved (``CL-USE-0001``) or a reconciliation (``CL-RECONCILE-0001``).
Moving or cancelling them could use them twice, or settle units whose whereabouts the
registry and the ledger tell differently; the plan waits until the hold is gone.  Units
the migration keeps in the pilot account stay held there and block nothing."""

DESTINATION_NOT_AS_SIGNED = "CL-MIGRATION-0020"
"""The request names the account the units are to land in, and the entity's recorded
account is another: its record changed since the plan the entity signed for."""

STEP_STATES = ("pending", "applied", "done", "failed", "not_taken")
"""``not_taken``: the step's migration was abandoned before the step ran."""

ABANDONED = MIGRATION_ABANDONED
"""The final state of a failed migration given up (:meth:`Migrations.abandon`)."""


@dataclass(frozen=True)
class MigrationRequest:
    """Which entity moves, from which pilot, to which scheme, from which compliance year."""

    entity_id: str
    from_jurisdiction: str
    to_jurisdiction: str
    first_year: int
    """First compliance year the destination covers; the pilot's last is the year before."""
    acknowledged: frozenset[str] = frozenset()
    """Codes of the plan's warnings the entity accepts (see IRREVERSIBLE_UNCONFIRMED)."""
    destination: AccountRef | None = None
    """The account the units must land in (see DESTINATION_NOT_AS_SIGNED); None: the one
    recorded for the entity."""

    def canonical(self) -> dict[str, Any]:
        """The request as plain data, for hashing and storage."""
        body: dict[str, Any] = {
            "entity_id": self.entity_id,
            "from_jurisdiction": self.from_jurisdiction,
            "to_jurisdiction": self.to_jurisdiction,
            "first_year": self.first_year,
        }
        if self.acknowledged:  # absent when empty: requests made before it hash as they did
            body["acknowledged"] = sorted(self.acknowledged)
        if self.destination is not None:  # absent when unset, as acknowledged
            body["destination"] = _account_json(self.destination)
        return body


@dataclass(frozen=True)
class FinalObligation:
    """The final pilot compliance year: what was due and what was surrendered."""

    compliance_year: int
    verified_emissions: int
    allowances_due: int
    allowances_surrendered: int
    offsets_surrendered: int

    @property
    def units_surrendered(self) -> int:
        """Allowances and offsets surrendered for the year."""
        return self.allowances_surrendered + self.offsets_surrendered

    @property
    def shortfall(self) -> int:
        """Positive: still to surrender; negative: surrendered beyond what was due."""
        return self.allowances_due - self.units_surrendered


@dataclass(frozen=True)
class PlannedDisposition:
    """What happens to one remaining holding of the migrating entity."""

    holding: LedgerHolding
    action: Disposition
    destination: AccountRef | None
    """For a transfer: the entity's account in the destination registry."""
    reason: str
    unconfirmed: bool
    """True when the action comes from a pack parameter marked unconfirmed."""


@dataclass(frozen=True)
class MigrationPlan:
    """The dry run's answer: obligation, dispositions, destination and what blocks it."""

    request: MigrationRequest
    final_pilot_year: int
    obligation: FinalObligation | None
    """None when the final pilot year is not recorded (a blocking violation says so)."""
    dispositions: tuple[PlannedDisposition, ...]
    destination_account: AccountRef | None
    blocking: tuple[RuleViolation, ...]
    warnings: tuple[RuleViolation, ...]
    pack_version: str
    """The pilot pack version whose migration section decided, e.g. ``shenzhen@2024-05-01``."""

    @property
    def executable(self) -> bool:
        """True when nothing blocks the migration."""
        return not self.blocking


@dataclass(frozen=True)
class UnitsLeft:
    """Units of a step's block that an attempt did not act on, and why."""

    block: BlockId
    reason: str
    """Where they are now and in what state, e.g. ``surrendered at shenzhen/sz-1``."""


@dataclass(frozen=True)
class StepAttempt:
    """One attempt at a migration step, as the migration's record keeps it."""

    attempt: int
    """0 for the first; a repeated ExecuteMigration of a failed migration adds one."""
    state: str
    """pending, applied, done, failed or not_taken (its migration was abandoned first)."""
    operation: str
    """The derived id the attempt's registry calls carry (a cancel of several ranges
    suffixes ``:N`` for the Nth)."""
    units: tuple[BlockId, ...]
    """What the attempt acts on: the plan's block for the first; for a retry, the units of
    the block the ledger showed still held when it ran (none before that, or when it
    failed before acting)."""
    left: tuple[UnitsLeft, ...]
    transfer_id: str
    error: str
    started_at: datetime | None
    """When the attempt was recorded (None for a step recorded before attempts were)."""
    ended_at: datetime | None
    """When it ended (done or failed); None while it is under way."""


@dataclass(frozen=True)
class MigrationStep:
    """One operation of a migration, as clients see it."""

    seq: int
    kind: str
    """cancel, transfer, keep or register."""
    state: str
    """pending, applied, done, failed or not_taken (its migration was abandoned first)."""
    description: str
    operation: str
    """The derived id the step's registry call carries (operation or transfer request id)."""
    transfer_id: str = ""
    error: str = ""
    attempts: tuple[StepAttempt, ...] = ()
    """Every attempt at the step, oldest first; the last is the current one."""


@dataclass(frozen=True)
class Abandonment:
    """Who gave a failed migration up, when and why."""

    request_id: str
    caller: str
    """Who asked: the caller's request-id space (a token's subject)."""
    reason: str
    at: datetime
    signature_key_id: str
    """The instruction key the request was signed with; empty for an unsigned one (an
    insecure gateway's)."""


@dataclass(frozen=True)
class Migration:
    """A migration as clients see it."""

    migration_id: str
    request_id: str
    plan: MigrationPlan
    state: str
    """running, completed, failed or abandoned."""
    steps: tuple[MigrationStep, ...]
    failure_reason: str
    created_at: datetime
    updated_at: datetime
    abandonment: Abandonment | None = None
    """Set once the migration is abandoned."""

    @property
    def transfers(self) -> tuple[str, ...]:
        """Ids of the bridge transfers the migration made, a failed attempt's too."""
        return tuple(
            dict.fromkeys(
                t
                for s in self.steps
                for t in (*(a.transfer_id for a in s.attempts), s.transfer_id)
                if t
            )
        )


class CancelNotFollowed(CarbonlinkError):
    """A registry refused to cancel units the ledger has cancelled (terminal there): the
    migration waits and asks again until it follows, as it waits on a registry that does
    not answer, while an operator settles the refusal with the registry."""

    def __init__(self, registry: str, refusal: RegistryRejected) -> None:
        super().__init__(
            f"registry {registry} refused to cancel units the ledger has cancelled (asked "
            f"again until it follows): {refusal}"
        )
        self.registry = registry


def _refused_for(findings: Sequence[RuleViolation], lead: str = "") -> FailedPrecondition:
    """The refusal of a migration or a step for ``findings``, each named by its rule."""
    return FailedPrecondition(
        lead + "; ".join(f"{v.rule_id}: {v.message}" for v in findings),
        [PreconditionViolation("MIGRATION", v.rule_id, v.message) for v in findings],
    )


def _violation(rule_id: str, message: str, *details: tuple[str, str]) -> RuleViolation:
    return RuleViolation(rule_id, message, SOURCE, (), tuple(details))


# ----------------------------------------------------------------------- plan storage


def _holding_to_json(h: LedgerHolding) -> dict[str, Any]:
    return {
        "row_id": h.row_id,
        "block": block_to_json(h.block),
        "registry": h.registry,
        "account": h.account,
        "status": h.status.value,
        "is_mirror": h.is_mirror,
        "origin": block_id_to_dict(h.origin),
    }


def _holding_from_json(d: dict[str, Any]) -> LedgerHolding:
    return LedgerHolding(
        row_id=d["row_id"],
        block=block_from_json(d["block"]),
        registry=d["registry"],
        account=d["account"],
        status=HoldingStatus(d["status"]),
        is_mirror=d["is_mirror"],
        origin=block_id_from_dict(d["origin"]),
    )


def _account_json(a: AccountRef | None) -> dict[str, str] | None:
    return None if a is None else {"registry": a.registry, "account": a.account}


def _account_from(d: dict[str, str] | None) -> AccountRef | None:
    return None if d is None else AccountRef(d["registry"], d["account"])


def plan_to_json(plan: MigrationPlan) -> dict[str, Any]:
    """The plan as plain data (stored with the migration it is executed by)."""
    o = plan.obligation
    return {
        "request": plan.request.canonical(),
        "final_pilot_year": plan.final_pilot_year,
        "obligation": None
        if o is None
        else {
            "compliance_year": o.compliance_year,
            "verified_emissions": o.verified_emissions,
            "allowances_due": o.allowances_due,
            "allowances_surrendered": o.allowances_surrendered,
            "offsets_surrendered": o.offsets_surrendered,
        },
        "dispositions": [
            {
                "holding": _holding_to_json(d.holding),
                "action": d.action.value,
                "destination": _account_json(d.destination),
                "reason": d.reason,
                "unconfirmed": d.unconfirmed,
            }
            for d in plan.dispositions
        ],
        "destination_account": _account_json(plan.destination_account),
        "blocking": [violation_to_dict(v) for v in plan.blocking],
        "warnings": [violation_to_dict(v) for v in plan.warnings],
        "pack_version": plan.pack_version,
    }


def _request_from_json(d: dict[str, Any]) -> MigrationRequest:
    fields = dict(d)
    destination = _account_from(fields.pop("destination", None))
    return MigrationRequest(**fields, destination=destination)


def plan_from_json(d: dict[str, Any]) -> MigrationPlan:
    """The plan stored by :func:`plan_to_json`."""
    o = d["obligation"]
    return MigrationPlan(
        request=_request_from_json(d["request"]),
        final_pilot_year=d["final_pilot_year"],
        obligation=None if o is None else FinalObligation(**o),
        dispositions=tuple(
            PlannedDisposition(
                holding=_holding_from_json(x["holding"]),
                action=Disposition(x["action"]),
                destination=_account_from(x["destination"]),
                reason=x["reason"],
                unconfirmed=x["unconfirmed"],
            )
            for x in d["dispositions"]
        ),
        destination_account=_account_from(d["destination_account"]),
        blocking=tuple(violation_from_dict(v) for v in d["blocking"]),
        warnings=tuple(violation_from_dict(v) for v in d["warnings"]),
        pack_version=d["pack_version"],
    )


# --------------------------------------------------------------------------- cutovers


def _moves(action: Disposition | None) -> bool:
    """Whether a disposition takes the units out of the entity's pilot account."""
    return action in (Disposition.CANCEL, Disposition.TRANSFER)


class DatabaseCutovers:
    """The rules gate's :class:`~registry_bridge.rules_gate.Cutovers` over ``migrations``:
    per entity and pilot, the migration whose split of its years is in force
    (``entities.migration_splits``: while every one is abandoned, the newest, with the
    years the entity claimed in each scheme, which then decide the years from its first
    year on)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def cutovers(self, entity_id: str) -> Sequence[Cutover]:
        """The migration that splits the entity's years, per pilot, oldest first."""
        # Read-only: the gate asks while the bridge's surrender transaction is open.
        with read_only(self._sessions) as session:
            splits = migration_splits(session, entity_id)
        return [
            Cutover(
                split.migration_id,
                entity_id,
                split.pilot,
                split.national,
                split.first_year,
                split.claimed,
            )
            for split in splits
        ]


# ------------------------------------------------------------------------------ service


def surrendered_per_year(
    session: Session, entity_id: str, jurisdiction: str
) -> dict[int, tuple[int, int]]:
    """Completed surrenders per compliance year: (allowances, offsets) surrendered.

    A failed one an operator settled by hand (resolved) surrendered all its units too."""
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    uses = session.execute(
        sa.select(UnitUseRecord.compliance_year, UnitUseRecord.detail).where(
            UnitUseRecord.entity_id == entity_id,
            UnitUseRecord.jurisdiction == jurisdiction,
            UnitUseRecord.kind == "surrender",
            UnitUseRecord.state.in_(("completed", "resolved")),
        )
    )
    for year, raw in uses:
        for spent in json.loads(raw).get("surrendered", []):
            out[int(year)][1 if spent["offset"] else 0] += spent["quantity"]
    return {year: (a, o) for year, (a, o) in out.items()}


class Migrations:
    """Plans and executes covered entities' migrations over the bridge."""

    def __init__(
        self,
        bridge: Bridge,
        registries: Mapping[str, RegistryPort],
        *,
        clock: Callable[[], datetime],
        on_step: Callable[[str, MigrationStep], None] | None = None,
    ) -> None:
        """Build the service.

        Args:
            bridge: The bridge whose transfers carry ``transfer`` dispositions.
            registries: Adapters by registry id (``cancel`` dispositions call them).
            clock: Now, as an aware datetime; picks the pack version in force.
            on_step: Called after each step state is committed (crash-test fault hook).
        """
        self._bridge = bridge
        self._sessions = bridge.sessions
        self._registries = dict(registries)
        self._clock = clock
        self._on_step = on_step

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The ledger database's sessions."""
        return self._sessions

    def now(self) -> datetime:
        """The service clock (aware)."""
        return self._clock()

    # ----------------------------------------------------------------------------- plan

    def _validate(self, request: MigrationRequest) -> None:
        problems: list[FieldViolation] = []
        if not request.entity_id or len(request.entity_id) > 128:
            problems.append(FieldViolation("entity_id", "is required (at most 128 characters)"))
        if request.from_jurisdiction not in PACK_BY_REGISTRY:
            problems.append(
                FieldViolation(
                    "from_jurisdiction",
                    f"{request.from_jurisdiction!r} is not a scheme with a rule pack",
                )
            )
        if request.to_jurisdiction != "national":
            problems.append(FieldViolation("to_jurisdiction", "must be national"))
        if request.from_jurisdiction == request.to_jurisdiction:
            problems.append(FieldViolation("from_jurisdiction", "is the destination"))
        if not 2000 < request.first_year <= 2100:
            problems.append(FieldViolation("first_year", "must be a year between 2001 and 2100"))
        if problems:
            raise InvalidRequest(
                "; ".join(f"{p.field}: {p.description}" for p in problems), problems
            )

    def plan(self, request: MigrationRequest) -> MigrationPlan:
        """Dry run of a migration: nothing changes.

        The pilot registry is asked once whether it knows the entity's account there
        (``PILOT_ACCOUNT_UNKNOWN`` blocks the plan when it does not).

        Raises:
            InvalidRequest: The request is malformed.
            NotFound: The entity is not recorded.
            RegistryUnavailable: The pilot registry could not be asked about the account.
        """
        self._validate(request)
        with unit_of_work(self._sessions) as session:
            plan, pilot, checks = self._plan(session, request)
        # The registry call and the bridge's dry run run outside our transaction: no
        # transaction waits on a registry, and the dry run opens its own (SQLite has one
        # writer, and a second BEGIN IMMEDIATE from this thread would wait on the first).
        refused: list[RuleViolation] = []
        if pilot is not None:
            self._check_pilot_account(request.entity_id, pilot, refused)
        for row, source, destination in checks:
            self._check_transfer(row, source, destination, refused)
        if not refused:
            return plan
        return dataclasses.replace(plan, blocking=(*plan.blocking, *refused))

    def _rules(self, request: MigrationRequest) -> tuple[MigrationRules | None, str]:
        pack = load_builtin(PACK_BY_REGISTRY[request.from_jurisdiction])
        day = self._clock().astimezone(MARKET_TIME).date()
        try:
            version = pack.version_for(day)
        except NoVersionInForceError:
            return None, ""
        return version.migration, f"{pack.name}@{version.effective_from.isoformat()}"

    def _plan(
        self, session: Session, request: MigrationRequest
    ) -> tuple[
        MigrationPlan, AccountRef | None, list[tuple[LedgerHolding, AccountRef, AccountRef]]
    ]:
        """The plan as the ledger sees it, the pilot account the registry must confirm (None
        when none is recorded: a violation says so), and the transfers to dry-run."""
        entity = get_entity(session, request.entity_id)
        source_registry = request.from_jurisdiction
        destination_registry = request.to_jurisdiction
        blocking: list[RuleViolation] = []
        warnings: list[RuleViolation] = []
        rules, pack_version = self._rules(request)
        if rules is None or rules.destination != request.to_jurisdiction:
            blocking.append(
                _violation(
                    NO_MIGRATION_RULES,
                    f"the {request.from_jurisdiction} pack in force ({pack_version or 'none'}) "
                    f"has no migration rules to {request.to_jurisdiction}",
                )
            )
        else:
            self._check_sector(entity, request, rules, blocking, warnings)

        for other in session.execute(
            sa.select(MigrationRecord).where(
                MigrationRecord.entity_id == request.entity_id,
                MigrationRecord.from_jurisdiction == request.from_jurisdiction,
                # What an abandoned one did is in the ledger, which the plan reads.
                MigrationRecord.state != ABANDONED,
            )
        ).scalars():
            blocking.append(
                _violation(
                    ALREADY_MIGRATING,
                    f"{request.entity_id} already has migrations/{other.id} out of "
                    f"{request.from_jurisdiction} from {other.first_year} ({other.state})",
                    ("migration", other.id),
                )
            )

        final_year = request.first_year - 1
        obligation = self._obligation(session, request, final_year, blocking, warnings)
        self._check_coverage(session, request, blocking)

        destination_account: AccountRef | None = None
        if destination_registry not in self._registries:
            blocking.append(
                _violation(
                    NO_DESTINATION_ACCOUNT,
                    f"the {destination_registry} registry is not wired in this gateway",
                )
            )
        elif destination_registry not in entity.accounts:
            blocking.append(
                _violation(
                    NO_DESTINATION_ACCOUNT,
                    f"{request.entity_id} has no account recorded at the {destination_registry} "
                    "registry: record it (UpsertCoveredEntity) before migrating",
                )
            )
        else:
            destination_account = AccountRef(
                destination_registry, entity.accounts[destination_registry]
            )
        pinned = request.destination
        if pinned is not None and pinned != destination_account:
            blocking.append(
                _violation(
                    DESTINATION_NOT_AS_SIGNED,
                    f"the request names {pinned.registry}/{pinned.account} for the units, "
                    f"but {request.entity_id}'s account recorded at the {destination_registry} "
                    f"registry is "
                    + (
                        "none"
                        if destination_account is None
                        else f"{destination_account.registry}/{destination_account.account}"
                    )
                    + ": plan again, and sign for the account the plan names",
                )
            )

        source_account = entity.accounts.get(source_registry)
        pilot = None if source_account is None else AccountRef(source_registry, source_account)
        dispositions: list[PlannedDisposition] = []
        checks: list[tuple[LedgerHolding, AccountRef, AccountRef]] = []
        if pilot is None:
            blocking.append(
                _violation(
                    NO_DESTINATION_ACCOUNT,
                    f"{request.entity_id} has no account recorded at the {source_registry} "
                    "registry, so its pilot holdings cannot be found",
                )
            )
        else:
            self._check_pending(session, entity, blocking)
            if rules is not None:
                dispositions = self._dispositions(
                    session,
                    request,
                    pilot,
                    entity,
                    rules,
                    blocking,
                    warnings,
                    checks,
                )
        plan = MigrationPlan(
            request=request,
            final_pilot_year=final_year,
            obligation=obligation,
            dispositions=tuple(dispositions),
            destination_account=destination_account,
            blocking=tuple(blocking),
            warnings=tuple(warnings),
            pack_version=pack_version,
        )
        return plan, pilot, checks

    @staticmethod
    def _check_sector(
        entity: CoveredEntity,
        request: MigrationRequest,
        rules: MigrationRules,
        blocking: list[RuleViolation],
        warnings: list[RuleViolation],
    ) -> None:
        if entity.sector not in rules.sectors:
            warnings.append(
                _violation(
                    SECTOR_YEAR_UNCONFIRMED,
                    f"the pack lists no {rules.destination} coverage for sector "
                    f"{entity.sector!r}; first year {request.first_year} is the operator's",
                    ("sector", entity.sector),
                )
            )
            return
        first = rules.sectors[entity.sector]
        if first is None:
            warnings.append(
                _violation(
                    SECTOR_YEAR_UNCONFIRMED,
                    f"the {rules.destination} ETS's first compliance year for sector "
                    f"{entity.sector!r} is not confirmed (pack parameter "
                    f"{rules.parameters.get('sectors', 'sectors')}); first year "
                    f"{request.first_year} is the operator's",
                    ("sector", entity.sector),
                )
            )
        elif request.first_year < first:
            blocking.append(
                _violation(
                    SECTOR_NOT_COVERED_YET,
                    f"the {rules.destination} ETS covers sector {entity.sector!r} from {first}: "
                    f"year {request.first_year} would be covered by no scheme",
                    ("sector", entity.sector),
                    ("national_first_year", str(first)),
                )
            )
        elif request.first_year > first:
            # Not blocking: an entity can enter the national ETS after its sector did (its
            # emissions crossed the threshold later), and stays in the pilot until then.
            warnings.append(
                _violation(
                    LATE_FIRST_YEAR,
                    f"the {rules.destination} ETS covers sector {entity.sector!r} from {first}; "
                    f"with a first year of {request.first_year}, years {first}-"
                    f"{request.first_year - 1} stay in the pilot: right only if the entity "
                    "entered the national ETS after its sector",
                    ("sector", entity.sector),
                    ("national_first_year", str(first)),
                )
            )

    def _obligation(
        self,
        session: Session,
        request: MigrationRequest,
        final_year: int,
        blocking: list[RuleViolation],
        warnings: list[RuleViolation],
    ) -> FinalObligation | None:
        pilot = request.from_jurisdiction
        surrendered = surrendered_per_year(session, request.entity_id, pilot)
        years = {
            r.compliance_year: r
            for r in session.execute(
                sa.select(EntityYearRecord).where(
                    EntityYearRecord.entity_id == request.entity_id,
                    EntityYearRecord.jurisdiction == pilot,
                )
            ).scalars()
        }
        for year, record in sorted(years.items()):
            if year > final_year:
                continue
            allowances, offsets = surrendered.get(year, (0, 0))
            if record.allowances_due < record.verified_emissions:
                warnings.append(
                    _violation(
                        DUE_BELOW_VERIFIED,
                        f"{request.entity_id} owes {record.allowances_due} for {pilot} year "
                        f"{year}, below its verified emissions of {record.verified_emissions}: "
                        "the plan takes the recorded amount due; confirm it with the pilot",
                        ("compliance_year", str(year)),
                        ("verified_emissions", str(record.verified_emissions)),
                        ("allowances_due", str(record.allowances_due)),
                    )
                )
            owed = record.allowances_due - allowances - offsets
            if owed > 0:
                blocking.append(
                    _violation(
                        UNFINISHED_COMPLIANCE,
                        f"{request.entity_id} still owes {owed} units for {pilot} year {year} "
                        f"({record.allowances_due} due, {allowances + offsets} surrendered)",
                        ("compliance_year", str(year)),
                        ("shortfall", str(owed)),
                    )
                )
        final = years.get(final_year)
        if final is None:
            blocking.append(
                _violation(
                    NO_FINAL_YEAR,
                    f"no verified emissions recorded for {request.entity_id} in {pilot} "
                    f"year {final_year}, the final pilot year: its compliance cannot be checked",
                    ("compliance_year", str(final_year)),
                )
            )
            return None
        allowances, offsets = surrendered.get(final_year, (0, 0))
        return FinalObligation(
            final_year, final.verified_emissions, final.allowances_due, allowances, offsets
        )

    @staticmethod
    def _check_coverage(
        session: Session, request: MigrationRequest, blocking: list[RuleViolation]
    ) -> None:
        """No year may be covered by both schemes once the entity moves: a year recorded,
        or surrendered for, on the wrong side of the new split blocks it.

        After an abandoned migration this keeps each year where the entity claimed it (see
        ``covered_entities.claimed_by_the_other``): a national year it surrendered for
        under the abandoned split cannot become a pilot year of the new one, nor a pilot
        year it took back a national one.  A surrender needs the year recorded in its
        scheme, so the records alone would block as much; a year recorded on the wrong
        side blocks too, claimed or not, since both schemes would then hold an obligation
        for it."""
        pilot, national, first = (
            request.from_jurisdiction,
            request.to_jurisdiction,
            request.first_year,
        )
        twice: list[tuple[str, int, str]] = []
        for record in session.execute(
            sa.select(EntityYearRecord).where(EntityYearRecord.entity_id == request.entity_id)
        ).scalars():
            if covered_twice(record.jurisdiction, record.compliance_year, pilot, national, first):
                twice.append(
                    (record.jurisdiction, record.compliance_year, "has a compliance year recorded")
                )
        for jurisdiction in (pilot, national):
            for surrendered in surrendered_per_year(session, request.entity_id, jurisdiction):
                if covered_twice(jurisdiction, surrendered, pilot, national, first):
                    twice.append((jurisdiction, surrendered, "has surrenders"))
        for jurisdiction, year, what in sorted(set(twice)):
            blocking.append(
                _violation(
                    YEAR_COVERED_TWICE,
                    f"{request.entity_id} {what} in {jurisdiction} for {year}: with the national "
                    f"ETS from {first}, year {year} would be covered by both schemes",
                    ("jurisdiction", jurisdiction),
                    ("compliance_year", str(year)),
                )
            )

    @staticmethod
    def _check_pending(
        session: Session,
        entity: CoveredEntity,
        blocking: list[RuleViolation],
    ) -> None:
        accounts = set(entity.accounts.items())
        pairs = sorted(accounts)
        # The transfers under way (each unfinished state a seek of its index), of those
        # the ones on the entity's accounts: "not a final state" bounded no index, and
        # read every transfer ever made to find them.
        for t in session.execute(
            sa.select(TransferRecord.id, TransferRecord.state)
            .where(
                TransferRecord.state.in_(UNFINISHED_TRANSFER_STATES),
                sa.or_(
                    sa.tuple_(TransferRecord.source_registry, TransferRecord.source_account).in_(
                        pairs
                    ),
                    sa.tuple_(
                        TransferRecord.destination_registry, TransferRecord.destination_account
                    ).in_(pairs),
                ),
            )
            .order_by(TransferRecord.created_at, TransferRecord.id)
        ):
            blocking.append(
                _violation(
                    PENDING_OPERATIONS,
                    f"transfers/{t.id} ({t.state}) touches an account of {entity.entity_id}",
                    ("transfer", t.id),
                )
            )
        for u in session.execute(
            sa.select(UnitUseRecord).where(UnitUseRecord.state == "pending")
        ).scalars():
            if (u.registry_id, u.account) in accounts:
                blocking.append(
                    _violation(
                        PENDING_OPERATIONS,
                        f"uses/{u.id} ({u.kind}) is pending in {u.registry_id}/{u.account}",
                        ("use", u.id),
                    )
                )

    def _dispositions(
        self,
        session: Session,
        request: MigrationRequest,
        source: AccountRef,
        entity: CoveredEntity,
        rules: MigrationRules,
        blocking: list[RuleViolation],
        warnings: list[RuleViolation],
        checks: list[tuple[LedgerHolding, AccountRef, AccountRef]],
    ) -> list[PlannedDisposition]:
        out: list[PlannedDisposition] = []
        for row in ledger.holdings_of(session, source.registry, source.account):
            if row.status.is_terminal:
                continue
            program = row.origin.program.value
            if row.status is not HoldingStatus.ACTIVE:
                if row.status is HoldingStatus.LOCKED and not row.lock_transfer_id:
                    continue
                blocking.append(
                    _violation(
                        PENDING_OPERATIONS,
                        f"{program} {row.block.id.serial_start}-{row.block.id.serial_end} in "
                        f"{source.registry}/{source.account} is {row.status.value} "
                        f"({row.lock_transfer_id or 'no lock owner'})",
                    )
                )
                continue
            action = rules.dispositions.get(program)
            # Units the migration keeps where they are are not its to settle: a hold on
            # them (a failed use an operator resolves later) stays with them.
            held = self._held_findings(session, row) if _moves(action) else []
            blocking.extend(held)
            if action is None:
                warnings.append(
                    _violation(
                        NO_DISPOSITION_RULE,
                        f"the {request.from_jurisdiction} pack has no migration rule for "
                        f"{program}: the units stay in {source.registry}/{source.account}",
                        ("program", program),
                    )
                )
                out.append(
                    PlannedDisposition(
                        row,
                        Disposition.KEEP_FOR_SALE,
                        None,
                        f"no migration rule for {program}: kept",
                        False,
                    )
                )
                continue
            unconfirmed = program in rules.unconfirmed
            parameter = rules.parameters.get(program, "")
            reason = f"{program}: {action.value} (pack parameter {parameter}"
            reason += ", unconfirmed)" if unconfirmed else ")"
            destination: AccountRef | None = None
            if action is Disposition.TRANSFER:
                registry = request.to_jurisdiction
                account = entity.accounts.get(registry)
                if account is not None:
                    destination = AccountRef(registry, account)
                    if not held:  # the transfer's dry run would only repeat the hold
                        checks.append((row, source, destination))
            elif action is Disposition.CANCEL and (
                row.is_mirror or ORIGIN_REGISTRY.get(row.origin.program) != source.registry
            ):
                blocking.append(
                    _violation(
                        DISPOSITION_REFUSED,
                        f"{program} {row.block.id.serial_start}-{row.block.id.serial_end} is "
                        f"not native to {source.registry}: cancelling it there would leave its "
                        "origin live; the gateway does not cancel mirrors",
                    )
                )
            out.append(PlannedDisposition(row, action, destination, reason, unconfirmed))
        for program in sorted({d.holding.origin.program.value for d in out if d.unconfirmed}):
            warnings.append(
                _violation(
                    UNCONFIRMED_DISPOSITION,
                    f"the {program} disposition rests on pack parameter "
                    f"{rules.parameters.get(program, '')}, marked unconfirmed",
                    ("program", program),
                )
            )
        if UNCONFIRMED_DISPOSITION not in request.acknowledged:
            for d in out:
                if d.unconfirmed and d.action is Disposition.CANCEL:
                    block = d.holding.block.id
                    blocking.append(
                        _violation(
                            IRREVERSIBLE_UNCONFIRMED,
                            f"cancelling {block.program.value} {block.serial_start}-"
                            f"{block.serial_end} cannot be undone, and the pack's disposition "
                            f"of {block.program.value} is marked unconfirmed: acknowledge "
                            f"{UNCONFIRMED_DISPOSITION} to accept it",
                            ("program", block.program.value),
                        )
                    )
        return out

    def _held_findings(self, session: Session, row: LedgerHolding) -> list[RuleViolation]:
        """The bridge's holds on ``row`` (its units or their origin), as migration findings
        naming the hold's rule and what holds them (the use or the reconciliation)."""
        block = row.block.id
        return [
            _violation(
                HELD_UNITS,
                f"{row.origin.program.value} {block.serial_start}-{block.serial_end} in "
                f"{row.registry}/{row.account} is held ({v.rule_id}): {v.message}",
                ("rule", v.rule_id),
                *v.details,
            )
            for v in self._bridge.held_violations(session, (block, row.origin))
        ]

    def _check_pilot_account(
        self, entity_id: str, account: AccountRef, blocking: list[RuleViolation]
    ) -> None:
        """The pilot registry must know the account the entity is recorded with there.

        The port has no account lookup: a registry knows an account by the units it holds
        in it, whatever their state (a covered entity's pilot account holds at least its
        allocations, surrendered or not). One call per plan, however many units it holds.
        """
        details = (("registry", account.registry), ("account", account.account))
        port = self._registries.get(account.registry)
        if port is None:
            blocking.append(
                _violation(
                    PILOT_ACCOUNT_UNKNOWN,
                    f"the {account.registry} registry is not wired in this gateway, so "
                    f"account {account.account} (recorded for {entity_id}) cannot be "
                    "confirmed there",
                    *details,
                )
            )
        elif not port.list_holdings(ListHoldingsRequest(account=account.account)):
            blocking.append(
                _violation(
                    PILOT_ACCOUNT_UNKNOWN,
                    f"the {account.registry} registry knows no account {account.account} "
                    f"(recorded for {entity_id}): it holds no units there, so the entity's "
                    f"pilot holdings cannot be found; correct its {account.registry} account "
                    "(UpsertCoveredEntity) before migrating",
                    *details,
                )
            )

    def _check_transfer(
        self,
        row: LedgerHolding,
        source: AccountRef,
        destination: AccountRef,
        blocking: list[RuleViolation],
    ) -> None:
        decision = self._bridge.evaluate(
            TransferInstruction(source, destination, (row.block.id,), intended_use="holding")
        )
        for v in decision.violations:
            blocking.append(
                RuleViolation(
                    DISPOSITION_REFUSED,
                    f"transferring {row.origin.program.value} "
                    f"{row.block.id.serial_start}-{row.block.id.serial_end} to "
                    f"{destination.registry}/{destination.account} is refused: "
                    f"{v.rule_id}: {v.message}",
                    v.source,
                    v.blocks,
                    (("rule", v.rule_id), *v.details),
                )
            )

    # -------------------------------------------------------------------------- execute

    def execute(
        self, request_id: str, request: MigrationRequest, *, caller: str = LOCAL_CALLER
    ) -> Migration:
        """Carry a migration out (or resume it): the caller's same request id resumes the
        same one, and retries its failed step, if any, as a new attempt.

        Args:
            request_id: The caller's id of the request.
            request: The migration.
            caller: Whose request-id space ``request_id`` is in; the migration's transfers
                are requested in it too.

        Raises:
            InvalidRequest: The request is malformed.
            NotFound: The entity is not recorded.
            RequestIdConflict: The caller used the request id for another migration.
            FailedPrecondition: The plan has blocking violations (nothing was recorded).
            RegistryUnavailable: The pilot registry could not be asked about the entity's
                account (nothing was recorded).
        """
        _check_request_id(request_id)
        self._validate(request)
        digest = body_digest(request.canonical())
        migration_id = self._start(caller, request_id, request, digest)
        self.drive(migration_id)
        return self.get(migration_id)

    def _start(self, caller: str, request_id: str, request: MigrationRequest, digest: bytes) -> str:
        now = self._clock()
        # Locked: a repeat of a failed migration starts a new attempt, and an abandonment
        # ends the migration; the row's lock lets one of them act on the failed state.
        same_request = (
            sa.select(MigrationRecord)
            .where(MigrationRecord.request_id == request_id, MigrationRecord.caller == caller)
            .with_for_update()
        )
        with unit_of_work(self._sessions) as session:
            existing = session.execute(same_request).scalar_one_or_none()
            if existing is not None:
                return self._repeat(session, existing, digest, request_id, now)
        # Planned outside the transaction that records it (the plan asks the bridge); that
        # transaction reads the holds and the entity's years again, each step re-checks
        # its units when it runs, and the database refuses a second migration of the
        # entity, so a change in between cannot slip through.
        plan = self.plan(request)
        try:
            with unit_of_work(self._sessions) as session:
                existing = session.execute(same_request).scalar_one_or_none()
                if existing is not None:
                    return self._repeat(session, existing, digest, request_id, now)
                # The entity's row, locked as its surrenders and the updates of its
                # record lock it first: those that committed since the plan was read are
                # seen below, and later ones see the migration.
                session.get(CoveredEntityRecord, request.entity_id, with_for_update=True)
                # What appeared since the plan was read is read again here, where the
                # migration is recorded: a hold (a use failed, a reconciliation
                # completed), as no step may start on held units; a year recorded or
                # surrendered for on the wrong side of the split, as it would be covered
                # by both schemes.
                coverage: list[RuleViolation] = []
                self._check_coverage(session, request, coverage)
                blocking = plan.blocking or (
                    *coverage,
                    *(
                        finding
                        for d in plan.dispositions
                        if _moves(d.action)
                        for finding in self._held_findings(session, d.holding)
                    ),
                )
                if blocking:
                    raise _refused_for(blocking, "the migration is blocked: ")
                migration_id = uuid.uuid4().hex
                session.add(
                    MigrationRecord(
                        id=migration_id,
                        request_id=request_id,
                        caller=caller,
                        body_sha256=digest,
                        entity_id=request.entity_id,
                        from_jurisdiction=request.from_jurisdiction,
                        to_jurisdiction=request.to_jurisdiction,
                        first_year=request.first_year,
                        state="running",
                        plan=json.dumps(plan_to_json(plan), sort_keys=True),
                        failure_reason="",
                        created_at=now,
                        updated_at=now,
                    )
                )
                session.flush()
                for seq, detail in enumerate(_steps(migration_id, plan)):
                    session.add(
                        MigrationStepRecord(
                            migration_id=migration_id,
                            seq=seq,
                            kind=detail["kind"],
                            state="pending",
                            detail=json.dumps(
                                {**detail, "started_at": now.isoformat()}, sort_keys=True
                            ),
                            updated_at=now,
                        )
                    )
        except sa.exc.IntegrityError as exc:
            # Another gateway recorded a migration of the same entity (or this caller's
            # request id) first: answer with it, or refuse a second migration of the entity.
            with unit_of_work(self._sessions) as session:
                existing = session.execute(same_request).scalar_one_or_none()
                if existing is not None:
                    return self._repeat(session, existing, digest, request_id, now)
            raise FailedPrecondition(
                f"{request.entity_id} is already migrating out of {request.from_jurisdiction}",
                [PreconditionViolation("MIGRATION", ALREADY_MIGRATING, request.entity_id)],
            ) from exc
        _logger.info(
            "migration_started",
            migration=migration_id,
            entity=request.entity_id,
            first_year=request.first_year,
        )
        return migration_id

    @staticmethod
    def _repeat(
        session: Session, existing: MigrationRecord, digest: bytes, request_id: str, now: datetime
    ) -> str:
        if existing.body_sha256 != digest:
            # Not named, as a transfer is not (see Bridge._same_request).
            raise RequestIdConflict(
                f"request_id {request_id!r} was already used for a different migration; "
                "use a new request id for a new migration"
            )
        if existing.state == "failed":
            # A repeat of a failed migration is a new attempt at its failed step, under new
            # derived ids: a registry answers a repeated id with what it answered before (a
            # rolled-back transfer is final under its own request id, a refused
            # cancellation refused). The attempt reads what is left of the step's units
            # when it runs (see _retry_units); the failed one stays on the record.
            for step in session.execute(
                sa.select(MigrationStepRecord).where(
                    MigrationStepRecord.migration_id == existing.id,
                    MigrationStepRecord.state == "failed",
                )
            ).scalars():
                detail = json.loads(step.detail)
                history = detail.get("attempts", [])
                history.append(_attempt_record(step.kind, step.state, detail))
                for key in _CURRENT_ATTEMPT_KEYS:
                    detail.pop(key, None)
                detail["attempts"] = history
                detail["attempt"] = detail.get("attempt", 0) + 1
                detail["started_at"] = now.isoformat()
                step.detail = json.dumps(detail, sort_keys=True)
                step.state = "pending"
                step.updated_at = now
            existing.state = "running"
            existing.failure_reason = ""
            existing.updated_at = now
        return existing.id

    def abandon(
        self, migration_id: str, request_id: str, reason: str, *, caller: str = LOCAL_CALLER
    ) -> Migration:
        """Give a failed migration up for good, in one transaction.

        Nothing done is undone: a cancellation cannot be, and units moved stay where they
        landed; the failed step stays failed, and the steps not yet taken are marked
        ``not_taken``. The migration ends ``abandoned`` with who (``caller``, and the
        instruction key the request was signed with), when and why. It then blocks no new
        migration of the entity, whose plan reads from the ledger what the abandoned one
        left. Until that new one is recorded, a year from its first year on is the
        scheme's that claimed it, the national ETS's if the entity surrendered there for
        it while the migration stood, and one neither claimed is open to both (see
        :class:`DatabaseCutovers`).

        Args:
            migration_id: The migration.
            request_id: The caller's id of the request: the same one again (same reason)
                answers the abandoned migration unchanged.
            reason: Why the migration is given up.
            caller: Whose request-id space ``request_id`` is in, recorded as who abandoned.

        Raises:
            InvalidRequest: The request id or the reason is missing.
            NotFound: No such migration.
            FailedPrecondition: The migration is not failed (running, completed, or
                abandoned under another request), named with its state.
            RequestIdConflict: The caller abandoned it under this request id for another
                reason.
        """
        _check_request_id(request_id)
        if not reason.strip():
            raise InvalidRequest.field("reason", "is required: say why the migration is given up")
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            # Locked, as a repeated ExecuteMigration locks it before it retries the failed
            # step: of the two, the one that takes the lock first acts, and the other
            # finds the migration running or abandoned.
            record = session.get(
                MigrationRecord, migration_id, with_for_update=True, populate_existing=True
            )
            if record is None:
                raise NotFound(f"migrations/{migration_id}")
            repeated = record.state == ABANDONED
            if repeated:
                _repeat_abandonment(record, request_id, reason, caller)
            else:
                _abandon_failed(session, record, request_id, reason, caller, now)
        if not repeated:
            _logger.warning(
                "migration_abandoned", migration=migration_id, request_id=request_id, caller=caller
            )
        return self.get(migration_id)

    def resume(self) -> int:
        """Drive every running migration; returns how many completed now."""
        with unit_of_work(self._sessions) as session:
            running = list(
                session.execute(
                    sa.select(MigrationRecord.id).where(MigrationRecord.state == "running")
                ).scalars()
            )
        return sum(1 for m in running if self.drive(m) == "completed")

    def drive(self, migration_id: str) -> str:
        """Run the migration's steps in order until it completes, fails or must wait.

        Returns the migration's state. A registry that is unavailable leaves the step
        where it is (recorded as the failure reason) for the recovery loop.
        """
        while True:
            with unit_of_work(self._sessions) as session:
                record = session.get(MigrationRecord, migration_id)
                if record is None:
                    raise NotFound(f"migrations/{migration_id}")
                if record.state != "running":
                    return record.state
                step = session.execute(
                    sa.select(MigrationStepRecord)
                    .where(
                        MigrationStepRecord.migration_id == migration_id,
                        MigrationStepRecord.state != "done",
                    )
                    .order_by(MigrationStepRecord.seq)
                    .limit(1)
                ).scalar_one_or_none()
                if step is None:
                    record.state = "completed"
                    record.failure_reason = ""
                    record.updated_at = self._clock()
                    _logger.info("migration_completed", migration=migration_id)
                    return "completed"
                seq, kind, caller = step.seq, step.kind, record.caller
            try:
                progressed = self._run_step(migration_id, seq, kind, caller)
            except (RegistryUnavailable, LedgerConflict, CancelNotFollowed) as exc:
                self._note(migration_id, f"waiting: {exc}")
                _logger.warning(
                    "migration_waiting", migration=migration_id, step=seq, error=str(exc)
                )
                return "running"
            if not progressed:
                return self._state(migration_id)

    def _state(self, migration_id: str) -> str:
        with unit_of_work(self._sessions) as session:
            record = session.get(MigrationRecord, migration_id)
            return "" if record is None else record.state

    def _note(self, migration_id: str, reason: str) -> None:
        with unit_of_work(self._sessions) as session:
            record = session.get(MigrationRecord, migration_id, with_for_update=True)
            if record is not None and record.state == "running":
                record.failure_reason = reason
                record.updated_at = self._clock()

    def _set_step(
        self,
        session: Session,
        migration_id: str,
        seq: int,
        state: str,
        **extra: Any,
    ) -> MigrationStep:
        step = session.get(MigrationStepRecord, (migration_id, seq), with_for_update=True)
        assert step is not None  # the step was read just before, and steps are never deleted
        if step.state == state and state in ("done", "failed"):
            # ExecuteMigration and the recovery loop's resume may both drive the step and
            # both end it: the first ending is the record, and the second changes nothing.
            return _step_view(step)
        detail = json.loads(step.detail)
        detail.update(extra)
        if state in ("done", "failed"):
            detail["ended_at"] = self._clock().isoformat()
        step.detail = json.dumps(detail, sort_keys=True)
        step.state = state
        step.updated_at = self._clock()
        if state == "failed":
            record = session.get(MigrationRecord, migration_id, with_for_update=True)
            assert record is not None
            record.state = "failed"
            record.failure_reason = f"step {seq} ({step.kind}) failed: {extra.get('error', '')}"
            record.updated_at = self._clock()
        return _step_view(step)

    @staticmethod
    def _still(session: Session, migration_id: str, seq: int, state: str) -> bool:
        """Whether the step is still in ``state``, read under its row lock in ``session``.

        Drivers of one migration may run at once (a request and the recovery loop, or two
        gateways); the step's lock orders them, and each acts only on the state it holds.
        """
        step = session.get(
            MigrationStepRecord, (migration_id, seq), with_for_update=True, populate_existing=True
        )
        return step is not None and step.state == state

    def _hook(self, migration_id: str, step: MigrationStep) -> None:
        if self._on_step is not None:
            self._on_step(migration_id, step)

    def _fail_step(self, migration_id: str, seq: int, refusal: FailedPrecondition) -> None:
        """Record step ``seq`` failed with ``refusal``'s words, in a transaction of its own."""
        with unit_of_work(self._sessions) as session:
            step = self._set_step(session, migration_id, seq, "failed", error=str(refusal))
        self._hook(migration_id, step)

    def _run_step(self, migration_id: str, seq: int, kind: str, caller: str) -> bool:
        """Advance one step of ``caller``'s migration; True when it moved (so the next may
        run)."""
        with unit_of_work(self._sessions) as session:
            record = session.get(MigrationStepRecord, (migration_id, seq))
            assert record is not None
            detail = json.loads(record.detail)
            state = record.state
        if kind in ("keep", "register"):
            # Nothing to call: kept units stay where they are, and the national coverage is
            # the migration record itself (the national registry has no account-opening
            # call in the port; the destination account is the entity's recorded one).
            with unit_of_work(self._sessions) as session:
                step = self._set_step(session, migration_id, seq, "done")
            self._hook(migration_id, step)
            return True
        if kind == "cancel":
            return self._cancel(migration_id, seq, detail, state)
        if kind == "transfer":
            return self._transfer(migration_id, seq, detail, caller)
        raise LedgerConflict(f"migrations/{migration_id} step {seq} has unknown kind {kind!r}")

    def _cancel(self, migration_id: str, seq: int, detail: dict[str, Any], state: str) -> bool:
        registry, account = detail["registry"], detail["account"]
        block = block_id_from_dict(detail["block"])
        if state == "pending":
            # The ledger decides first (the units become CANCELLED, terminal, so no other
            # operation can take them), then the registry follows under a derived
            # operation id: like a transfer past DESTINATION_CREDITED, a cancellation only
            # rolls forward.
            now = self._clock()
            try:
                with unit_of_work(self._sessions) as session:
                    if not self._still(session, migration_id, seq, "pending"):
                        # Another driver of this migration (the recovery loop, a second
                        # gateway) took the step since it was read: its ledger change is
                        # made, and this one would only find the units already cancelled.
                        return True
                    # The step as its lock holds it: a driver that read it earlier may
                    # have read an attempt that has since ended.
                    locked = session.get(MigrationStepRecord, (migration_id, seq))
                    assert locked is not None
                    detail = json.loads(locked.detail)
                    retried: dict[str, Any] = {}
                    if _current_units(detail) is None:
                        # A retry: what is left of the block, read where it is cancelled,
                        # and recorded with the cancellation in one commit.
                        parts, left = self._retry_units(session, detail)
                        pieces = [(row, part.block.id) for row, part in parts]
                        retried = {
                            "units": [block_id_to_dict(b) for _, b in pieces],
                            "left": left,
                        }
                    else:
                        pieces = [
                            (row, block)
                            for row in ledger.require_holding(session, registry, account, block)
                        ]
                    carved_rows = [
                        ledger.carve(session, row, piece, now, migration_id)
                        for row, piece in pieces
                    ]
                    # Units held since the plan (a use failed on them, a reconciliation
                    # found them differing) are not cancelled, as a transfer step's bridge
                    # transfer refuses them: an operator settles them first. The cuts
                    # above roll back with the refusal.
                    held = [f for row in carved_rows for f in self._held_findings(session, row)]
                    if held:
                        raise _refused_for(held)
                    for carved in carved_rows:
                        ledger.change(
                            session,
                            carved,
                            "cancel",
                            now,
                            status=HoldingStatus.CANCELLED,
                            transfer_id=migration_id,
                            detail={"migration": migration_id, "reason": detail["reason"]},
                        )
                    step = self._set_step(session, migration_id, seq, "applied", **retried)
                    detail.update(retried)
            except FailedPrecondition as exc:
                self._fail_step(migration_id, seq, exc)
                return False
            self._hook(migration_id, step)
        try:
            for operation, units in _cancel_calls(detail):
                self._port(registry).cancel(
                    CancelRequest(operation, account, units, detail["reason"])
                )
        except RegistryRejected as exc:
            # The ledger already cancelled the units; the registry must follow. Keep
            # retrying (the recovery loop) and say why loudly.
            _logger.error("migration_cancel_refused", migration=migration_id, error=str(exc))
            raise CancelNotFollowed(registry, exc) from exc
        with unit_of_work(self._sessions) as session:
            step = self._set_step(session, migration_id, seq, "done")
        self._hook(migration_id, step)
        return True

    def _transfer(self, migration_id: str, seq: int, detail: dict[str, Any], caller: str) -> bool:
        units = _current_units(detail)
        if units is None:
            units = self._read_retry(migration_id, seq)
            if units is None:
                return False
        if not units:
            # Nothing of the block is left to move: the retry's record says where it went.
            with unit_of_work(self._sessions) as session:
                step = self._set_step(session, migration_id, seq, "done")
            self._hook(migration_id, step)
            return True
        request_id = _attempt_operation("transfer", detail)
        instruction = TransferInstruction(
            AccountRef(detail["registry"], detail["account"]),
            AccountRef(detail["destination"]["registry"], detail["destination"]["account"]),
            tuple(units),
            intended_use="holding",
        )
        # In the space of the caller who asked for the migration: a migration recorded
        # before request ids were scoped finds the transfers its steps already proposed.
        transfer = self._bridge.submit(request_id, instruction, caller=caller)
        with unit_of_work(self._sessions) as session:
            if transfer.state is TransferState.COMPLETED:
                step = self._set_step(
                    session, migration_id, seq, "done", transfer_id=transfer.transfer_id
                )
            elif transfer.state.is_final:
                step = self._set_step(
                    session,
                    migration_id,
                    seq,
                    "failed",
                    transfer_id=transfer.transfer_id,
                    error=f"transfers/{transfer.transfer_id} {transfer.state.value}: "
                    f"{transfer.failure_reason}",
                )
            else:
                # Still in flight (a registry is waiting): the bridge's own recovery drives
                # it on, and the migration picks it up on its next pass.
                step = self._set_step(
                    session, migration_id, seq, "pending", transfer_id=transfer.transfer_id
                )
                self._hook(migration_id, step)
                raise RegistryUnavailable(
                    detail["destination"]["registry"],
                    f"transfers/{transfer.transfer_id} is {transfer.state.value}",
                )
        self._hook(migration_id, step)
        return step.state == "done"

    def _read_retry(self, migration_id: str, seq: int) -> list[BlockId] | None:
        """Record what a transfer step's retry moves (None when it fails instead).

        Committed before the transfer is submitted: a driver that runs the step again
        (after a crash, or a second one) submits the same units under the same request id,
        which the bridge answers with the first submission.
        """
        try:
            with unit_of_work(self._sessions) as session:
                record = session.get(
                    MigrationStepRecord,
                    (migration_id, seq),
                    with_for_update=True,
                    populate_existing=True,
                )
                assert record is not None
                detail = json.loads(record.detail)
                recorded = _current_units(detail)
                if record.state != "pending":
                    return None  # another driver ended the attempt; it goes on from there
                if recorded is not None:
                    return recorded  # another driver read them first
                parts, left = self._retry_units(session, detail)
                units = [part.block.id for _, part in parts]
                step = self._set_step(
                    session,
                    migration_id,
                    seq,
                    "pending",
                    units=[block_id_to_dict(b) for b in units],
                    left=left,
                )
        except FailedPrecondition as exc:
            self._fail_step(migration_id, seq, exc)
            return None
        self._hook(migration_id, step)
        return units

    def _retry_units(
        self, session: Session, detail: dict[str, Any]
    ) -> tuple[list[tuple[LedgerHolding, LedgerHolding]], list[dict[str, Any]]]:
        """What a retry of a step acts on, read from the ledger now.

        Only the units of the step's block its account still holds, active: each as the
        live row holding it and the part of that row inside the block. Whatever else of the
        block (used, moved, cancelled, unknown to the ledger) is left, each range with where
        it is and in what state, so the attempt reports it instead of acting on it twice.

        Raises:
            FailedPrecondition: The cause may still stand: units still held by the bridge
                (a failed use, a reconciliation; ``HELD_UNITS``), or locked by a transfer
                in flight (they may come back). Nothing is done; the attempt fails with it.
        """
        registry, account = detail["registry"], detail["account"]
        block = block_id_from_dict(detail["block"])
        parts: list[tuple[LedgerHolding, LedgerHolding]] = []
        left: list[dict[str, Any]] = []
        waiting: list[RuleViolation] = []

        # Serials with no live row any more left the registry (a mirror sent home to its
        # origin is exported, its row no longer live).
        gone = f"no longer in {registry} (exported to another registry)"

        def leave(start: int, end: int, reason: str) -> None:
            piece = BlockId(block.program, block.serial_series, start, end)
            left.append({"block": block_id_to_dict(piece), "reason": reason})

        covered = block.serial_start
        for row in ledger.overlapping(session, block):
            start = max(row.block.id.serial_start, block.serial_start)
            end = min(row.block.id.serial_end, block.serial_end)
            if start > covered:
                leave(covered, start - 1, gone)
            covered = end + 1
            part = _clipped(row, start, end)
            here = (row.registry, row.account) == (registry, account)
            if here and row.status is HoldingStatus.ACTIVE:
                parts.append((row, part))
            elif here and row.status is HoldingStatus.LOCKED:
                waiting.append(
                    _violation(
                        PENDING_OPERATIONS,
                        f"{row.origin.program.value} {start}-{end} in {registry}/{account} is "
                        f"locked ({row.lock_transfer_id or 'no lock owner'}): retry once it "
                        "is settled",
                    )
                )
            else:
                leave(start, end, f"{row.status.value} at {row.registry}/{row.account}")
        if covered <= block.serial_end:
            leave(covered, block.serial_end, gone)
        problems = [f for _, part in parts for f in self._held_findings(session, part)]
        problems += waiting
        if problems:
            raise _refused_for(problems)
        return parts, left

    def _port(self, registry: str) -> RegistryPort:
        port = self._registries.get(registry)
        if port is None:
            raise RegistryUnavailable(registry, "not wired in this gateway")
        return port

    # ---------------------------------------------------------------------------- reads

    def get(self, migration_id: str) -> Migration:
        """A migration by id.

        Raises:
            NotFound: No such migration.
        """
        with unit_of_work(self._sessions) as session:
            record = session.get(MigrationRecord, migration_id)
            if record is None:
                raise NotFound(f"migrations/{migration_id}")
            steps = session.execute(
                sa.select(MigrationStepRecord)
                .where(MigrationStepRecord.migration_id == migration_id)
                .order_by(MigrationStepRecord.seq)
            ).scalars()
            return Migration(
                migration_id=record.id,
                request_id=record.request_id,
                plan=plan_from_json(json.loads(record.plan)),
                state=record.state,
                steps=tuple(_step_view(s) for s in steps),
                failure_reason=record.failure_reason,
                created_at=record.created_at,
                updated_at=record.updated_at,
                abandonment=_abandonment_view(record.abandonment),
            )


def _check_request_id(request_id: str) -> None:
    """Refuse a missing request id, or one longer than an id may be."""
    if not request_id or len(request_id) > MAX_ID_LENGTH:
        raise InvalidRequest.field(
            "request_id", f"is required (at most {MAX_ID_LENGTH} characters)"
        )


def _abandon_failed(
    session: Session,
    record: MigrationRecord,
    request_id: str,
    reason: str,
    caller: str,
    now: datetime,
) -> None:
    """Abandon ``record`` (locked in ``session``), refused unless it is failed."""
    migration_id = record.id
    if record.state != "failed":
        raise _not_abandonable(migration_id, record.state)
    signed_by = current_signature()
    steps = session.execute(
        sa.select(MigrationStepRecord)
        .where(MigrationStepRecord.migration_id == migration_id)
        .order_by(MigrationStepRecord.seq)
        .with_for_update()
    ).scalars()
    for step in steps:
        if step.state in ("done", "failed"):
            continue
        detail = json.loads(step.detail)
        if step.state != "pending" or detail.get("transfer_id"):
            # A failed migration's steps after the failed one never started; one
            # under way would be left half done.
            raise FailedPrecondition(
                f"migrations/{migration_id} step {step.seq} ({step.kind}) is "
                f"{step.state}, under way: it cannot be abandoned",
                [PreconditionViolation("MIGRATION", f"migrations/{migration_id}", "under way")],
            )
        detail["ended_at"] = now.isoformat()
        step.detail = json.dumps(detail, sort_keys=True)
        step.state = "not_taken"
        step.updated_at = now
    abandonment: dict[str, Any] = {
        "request_id": request_id,
        "caller": caller,
        "reason": reason,
        "at": now.isoformat(),
    }
    if signed_by is not None:
        abandonment["signed_by"] = dict(signed_by)
    record.abandonment = json.dumps(abandonment, sort_keys=True)
    record.state = ABANDONED
    record.updated_at = now


def _not_abandonable(migration_id: str, state: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"migrations/{migration_id} is {state}: only a failed migration can be abandoned",
        [PreconditionViolation("MIGRATION", f"migrations/{migration_id}", state)],
    )


def _repeat_abandonment(record: MigrationRecord, request_id: str, reason: str, caller: str) -> None:
    """Accept a repeat of the request that abandoned ``record``; refuse any other.

    Raises:
        RequestIdConflict: The same request id of the same caller, for another reason.
        FailedPrecondition: Another request (it is abandoned already).
    """
    first = json.loads(record.abandonment)
    if (first["request_id"], first["caller"]) != (request_id, caller):
        raise _not_abandonable(record.id, record.state)
    if first["reason"] != reason:
        raise RequestIdConflict(
            f"request_id {request_id!r} already abandoned migrations/{record.id} for another reason"
        )


def _abandonment_view(stored: str) -> Abandonment | None:
    if not stored:
        return None
    d = json.loads(stored)
    return Abandonment(
        request_id=d["request_id"],
        caller=d["caller"],
        reason=d["reason"],
        at=datetime.fromisoformat(d["at"]),
        signature_key_id=d.get("signed_by", {}).get("key_id", ""),
    )


def _steps(migration_id: str, plan: MigrationPlan) -> list[dict[str, Any]]:
    """The steps that carry a plan out, each with the id its registry call will carry."""
    steps: list[dict[str, Any]] = []
    for d in plan.dispositions:
        seq = len(steps)
        h = d.holding
        base = {
            "registry": h.registry,
            "account": h.account,
            "block": block_id_to_dict(h.block.id),
            "program": h.origin.program.value,
            "quantity": h.block.quantity,
            "reason": d.reason,
        }
        if d.action is Disposition.CANCEL:
            steps.append({**base, "kind": "cancel", "operation": f"{migration_id}:cancel:{seq}"})
        elif d.action is Disposition.TRANSFER:
            assert d.destination is not None  # a plan without one is blocked
            steps.append(
                {
                    **base,
                    "kind": "transfer",
                    "operation": f"{migration_id}:transfer:{seq}",
                    "destination": _account_json(d.destination),
                }
            )
        else:
            steps.append({**base, "kind": "keep", "operation": ""})
    assert plan.destination_account is not None  # a plan without one is blocked
    steps.append(
        {
            "kind": "register",
            "operation": f"{migration_id}:register",
            "registry": plan.destination_account.registry,
            "account": plan.destination_account.account,
            "first_year": plan.request.first_year,
            "reason": f"covered by the {plan.request.to_jurisdiction} ETS from "
            f"{plan.request.first_year}",
        }
    )
    return steps


def _step_view(record: MigrationStepRecord) -> MigrationStep:
    detail = json.loads(record.detail)
    if record.kind == "register":
        description = f"register {detail['registry']}/{detail['account']}: {detail['reason']}"
    else:
        description = (
            f"{record.kind} {detail['quantity']} {block_id_from_dict(detail['block']).label} "
            f"at {detail['registry']}/{detail['account']}"
        )
        if record.kind == "transfer":
            dest = detail["destination"]
            description += f" -> {dest['registry']}/{dest['account']}"
    current = _attempt_record(record.kind, record.state, detail)
    return MigrationStep(
        seq=record.seq,
        kind=record.kind,
        state=record.state,
        description=description,
        operation=current["operation"],
        transfer_id=detail.get("transfer_id", ""),
        error=detail.get("error", ""),
        attempts=tuple(_attempt_view(a) for a in (*detail.get("attempts", ()), current)),
    )


_CURRENT_ATTEMPT_KEYS = ("error", "transfer_id", "units", "left", "started_at", "ended_at")
"""A step detail's keys that describe its current attempt (the others, the step)."""


def _attempt_operation(kind: str, detail: dict[str, Any]) -> str:
    """The id the current attempt's registry calls carry: the step's derived id with the
    attempt's number (a transfer's first attempt too; a cancel's first keeps the bare id
    it had before retries were numbered)."""
    operation: str = detail["operation"]
    attempt = detail.get("attempt", 0)
    if kind == "transfer" or (kind == "cancel" and attempt):
        return f"{operation}:{attempt}"
    return operation


def _current_units(detail: dict[str, Any]) -> list[BlockId] | None:
    """The units the step's current attempt acts on; None for a retry that has still to
    read them."""
    if "units" in detail:
        return [block_id_from_dict(b) for b in detail["units"]]
    if "block" not in detail:
        return []
    # A first attempt acts on the plan's block; so does a retry recorded before retries
    # re-read their units (it may have submitted its transfer, under the whole block).
    if detail.get("attempt", 0) == 0 or detail.get("transfer_id"):
        return [block_id_from_dict(detail["block"])]
    return None


def _cancel_calls(detail: dict[str, Any]) -> list[tuple[str, BlockId]]:
    """A cancel step's registry calls: operation id and units, one per range."""
    if "units" not in detail:
        return [(detail["operation"], block_id_from_dict(detail["block"]))]
    operation = _attempt_operation("cancel", detail)
    return [(f"{operation}:{i}", block_id_from_dict(b)) for i, b in enumerate(detail["units"])]


def _attempt_record(kind: str, state: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The step's current attempt, as the step's history keeps it once it has ended."""
    units = _current_units(detail)
    return {
        "attempt": detail.get("attempt", 0),
        "state": state,
        "operation": _attempt_operation(kind, detail) if "operation" in detail else "",
        "units": [block_id_to_dict(b) for b in units or ()],
        "left": detail.get("left", []),
        "transfer_id": detail.get("transfer_id", ""),
        "error": detail.get("error", ""),
        "started_at": detail.get("started_at"),
        "ended_at": detail.get("ended_at") if state in ("done", "failed", "not_taken") else None,
    }


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _attempt_view(record: dict[str, Any]) -> StepAttempt:
    return StepAttempt(
        attempt=record["attempt"],
        state=record["state"],
        operation=record["operation"],
        units=tuple(block_id_from_dict(b) for b in record["units"]),
        left=tuple(UnitsLeft(block_id_from_dict(x["block"]), x["reason"]) for x in record["left"]),
        transfer_id=record["transfer_id"],
        error=record["error"],
        started_at=_when(record["started_at"]),
        ended_at=_when(record["ended_at"]),
    )


def _clipped(row: LedgerHolding, start: int, end: int) -> LedgerHolding:
    """The part ``start``-``end`` of ``row`` (and of its origin), as a holding."""
    return dataclasses.replace(
        row,
        block=row.block.with_range(start, end),
        origin=ledger.origin_part(row, start, end),
    )


__all__ = [
    "ABANDONED",
    "ALREADY_MIGRATING",
    "DISPOSITION_REFUSED",
    "DUE_BELOW_VERIFIED",
    "HELD_UNITS",
    "IRREVERSIBLE_UNCONFIRMED",
    "LATE_FIRST_YEAR",
    "MIGRATED_OUT",
    "NO_DESTINATION_ACCOUNT",
    "NO_DISPOSITION_RULE",
    "NO_FINAL_YEAR",
    "NO_MIGRATION_RULES",
    "PENDING_OPERATIONS",
    "PILOT_ACCOUNT_UNKNOWN",
    "PILOT_COVERED",
    "SECTOR_NOT_COVERED_YET",
    "SECTOR_YEAR_UNCONFIRMED",
    "UNCONFIRMED_DISPOSITION",
    "UNFINISHED_COMPLIANCE",
    "YEAR_COVERED_TWICE",
    "Abandonment",
    "DatabaseCutovers",
    "FinalObligation",
    "Migration",
    "MigrationPlan",
    "MigrationRequest",
    "MigrationStep",
    "Migrations",
    "PlannedDisposition",
    "StepAttempt",
    "UnitsLeft",
    "plan_from_json",
    "plan_to_json",
]
