"""The registry bridge: atomic, crash-safe transfers of unit blocks across registries.

Each transfer runs the state machine of DESIGN.md.  A state is committed to the database
*before* the registry calls it leads to are made, and every registry call carries an
operation id derived from the transfer id and the step, so a call repeated after a
timeout, a crash or a restart has exactly one effect.  Before DESTINATION_CREDITED any
failure rolls the transfer back (the source is unlocked); after it, the transfer only
rolls forward.

Where units live: each program has an origin registry (VCS at Verra, CCER at the national
registry...).  Custody venues (the Hong Kong and Macau venues) hold origin units on their
own books, backed at the origin registry by the venue's account there; every other
registry receives a *mirror* block while the origin is immobilized (Verra's model since
2022, never "retire to bridge").
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import ledger, plain_rows, reconciliations, transfer_rows
from registry_bridge.block_json import (
    block_from_json,
    block_id_from_dict,
    block_id_to_dict,
    block_to_json,
)
from registry_bridge.db import (
    defer_insert,
    read_only,
    read_plain_in,
    read_scope,
    run_plain,
    savepoint,
    unit_of_work,
)
from registry_bridge.errors import (
    ACCOUNT_NOT_OPEN,
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
from registry_bridge.event_log import append_event
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.port import (
    BlockStatusRequest,
    CreditRequest,
    FinalizeDisposition,
    FinalizeRequest,
    ListHoldingsRequest,
    LockRequest,
    RegistryHolding,
    RegistryPort,
    RetireRequest,
    SurrenderRequest,
    UnlockRequest,
)
from registry_bridge.schema import (
    CoveredEntityRecord,
    EntityYearRecord,
    IdempotencyRecord,
    TransferRecord,
    TransferStepRecord,
    UnitUseRecord,
)
from registry_bridge.settling import Settler
from registry_bridge.transfer_changes import TransferChanges
from registry_bridge.transfer_rows import TransferRow
from registry_bridge.transfers import (
    UNFINISHED_TRANSFER_STATES,
    AccountRef,
    RulesDecision,
    RuleViolation,
    Settlement,
    Transfer,
    TransferInstruction,
    TransferKind,
    TransferState,
    TransferStep,
    UnitUse,
    UseLeg,
    UseLegState,
    UseRequest,
    UseResolution,
    UseResolutionAction,
    UseState,
    body_digest,
    compliance_year_problem,
    decision_from_dict,
    decision_to_dict,
)

_logger = structlog.get_logger(__name__)

HELD_BY_RECONCILIATION = "CL-RECONCILE-0001"
"""The rule refusing units a reconciliation found differing from a registry twice in a row."""
HELD_BY_FAILED_USE = "CL-USE-0001"
"""The rule refusing units of a use done at one registry and refused at another, until an
operator resolves it (``Bridge.resolve_use``)."""
_HELD = "carbonlink.held_blocks"
"""Session info key: the holds in force, read once per transaction (with that transaction)."""


@dataclass(frozen=True)
class _Hold:
    """Units no transfer or use may take now, and the rule that says why."""

    rule_id: str
    blocks: tuple[BlockId, ...]
    message: str
    source: str
    subject: tuple[str, str]
    """What holds them, as a violation detail: ``("use", id)`` or ``("reconciliation", id)``."""


def _reconciliation_hold(hold: reconciliations.HeldBlock) -> _Hold:
    return _Hold(
        HELD_BY_RECONCILIATION,
        (hold.block,),
        (
            f"units held: reconciliation {hold.reconciliation_id} and the scheduled one "
            f"before it found {hold.registry} differing from the ledger ({hold.detail}); "
            "they move again once a reconciliation finds them agreeing"
        ),
        (
            "carbonlink reconciliation (as the Kyoto ITL's check 3016: no transaction on "
            "units whose reconciliation is unresolved)"
        ),
        ("reconciliation", str(hold.reconciliation_id)),
    )


# Read by every transaction that checks a transfer or a use, and almost always empty: run
# as plain text (db.run_plain), whose cost is the index seek's, not SQLAlchemy's.
_FAILED_USES = sa.select(UnitUseRecord.id, UnitUseRecord.kind, UnitUseRecord.detail).where(
    UnitUseRecord.state == UseState.FAILED.value
)


def _failed_use_holds(session: Session) -> tuple[_Hold, ...]:
    """The units of every failed use no operator has resolved yet.

    Such a use is done at one registry and not at another: the units are used at the
    first and still active at the second (and in the ledger), so taking them again
    through the gateway would use them twice.  Failed uses are rare and read through the
    state index, so this costs one short query per transaction.
    """
    holds: list[_Hold] = []
    for use_id, kind, raw in run_plain(session, _FAILED_USES, {}):
        detail = json.loads(raw)
        legs = detail["legs"]
        done, refused = _done_and_refused(detail)
        done_at = ", ".join(dict.fromkeys(legs[i]["registry"] for i in done)) or "no registry"
        refused_at = legs[refused]["registry"] if refused is not None else "a registry"
        holds.append(
            _Hold(
                HELD_BY_FAILED_USE,
                tuple(dict.fromkeys(_use_blocks(detail))),
                (
                    f"units held: uses/{use_id} ({kind}) was done at {done_at} and refused "
                    f"at {refused_at}, and is not resolved yet; they move again once an "
                    "operator resolves it (ResolveUse: retry, or settle manually)"
                ),
                (
                    "carbonlink use settlement (DESIGN.md, double use: units used at one "
                    "registry and not at another are not used again until settled)"
                ),
                ("use", use_id),
            )
        )
    return tuple(holds)


def _done_and_refused(detail: dict[str, Any]) -> tuple[list[int], int | None]:
    """The positions of a use's legs done so far, and of the leg a registry refused last
    (None if none was, or the use was recorded before refusals were kept: then the first
    leg not done, where a failed use stopped)."""
    done_ops = set(detail.get("done_legs", ()))
    legs = detail["legs"]
    done = [i for i, leg in enumerate(legs) if leg["op"] in done_ops]
    refused_leg = detail.get("refused_leg")
    if refused_leg is not None:
        return done, int(refused_leg["index"])
    return done, (len(done) if done and len(done) < len(legs) else None)


def _remaining_legs(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The legs of a failed use not done: from its refused leg on."""
    done, _ = _done_and_refused(detail)
    return [leg for i, leg in enumerate(detail["legs"]) if i not in done]


def _use_blocks(detail: dict[str, Any]) -> list[BlockId]:
    """Every block a use's legs name: each leg's own, and the holder's origin behind it."""
    blocks: list[BlockId] = []
    for leg in detail["legs"]:
        blocks.append(block_id_from_dict(leg["block"]))
        if leg["origin"] is not None:
            blocks.append(block_id_from_dict(leg["origin"]))
    return blocks


ORIGIN_REGISTRY: Mapping[Program, str] = {
    Program.VCS: "verra",
    Program.GS: "gold-standard",
    Program.CCER: "national",
    Program.CEA: "national",
    Program.SZ_CI: "shenzhen",
    Program.SZA: "shenzhen",
    Program.GD_PHCER: "guangdong",
    Program.GDEA: "guangdong",
    Program.BRI_ITMO: "bri",
}
CUSTODY_VENUES = frozenset({"hkmo"})
# A conflict means another transaction changed the same rows and committed; re-planning
# then either proceeds or rejects with the real reason, so a few more rounds are cheap.
_MAX_CONFLICT_RETRIES = 10
# A batch larger than one part is driven as parts of this many transfers, this many at once.
_PIPELINE_PART = 250
_PIPELINE_PARTS = 3


def venue_account(venue: str) -> str:
    """The account a custody venue holds its clients' units in at an origin registry."""
    return f"venue-{venue}"


@dataclass(frozen=True)
class TransferCheck:
    """What the rules are asked about a transfer."""

    instruction: TransferInstruction
    kind: TransferKind
    blocks: tuple[UnitBlock, ...]
    """The origin blocks whose units move."""
    known: tuple[LedgerHolding, ...]
    """Every live ledger row touching the same origin units, for double counting."""
    at: datetime


@dataclass(frozen=True)
class UseCheck:
    """What the rules are asked about a retirement or a surrender."""

    request: UseRequest
    blocks: tuple[UnitBlock, ...]
    known: tuple[LedgerHolding, ...]
    at: datetime


class TransferRules(Protocol):
    """The rules engine as the bridge sees it (implemented over ``compliance_rules``)."""

    def check_transfer(self, check: TransferCheck) -> RulesDecision:
        """Allow or deny a transfer with every violation."""
        ...

    def check_use(self, check: UseCheck) -> RulesDecision:
        """Allow or deny a retirement or surrender with every violation."""
        ...


@dataclass(frozen=True)
class _Piece:
    """One contiguous run of moving units, as planned when the transfer is CHECKED."""

    source_block: BlockId
    origin_block: BlockId
    origin_account: str
    block: UnitBlock
    """The origin block's attributes over exactly this run."""

    def to_json(self) -> dict[str, Any]:
        return {
            "source_block": block_id_to_dict(self.source_block),
            "origin_block": block_id_to_dict(self.origin_block),
            "origin_account": self.origin_account,
            "block": block_to_json(self.block),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> _Piece:
        return _Piece(
            source_block=block_id_from_dict(data["source_block"]),
            origin_block=block_id_from_dict(data["origin_block"]),
            origin_account=data["origin_account"],
            block=block_from_json(data["block"]),
        )


def _ledger_violations(error: FailedPrecondition) -> tuple[RuleViolation, ...]:
    return tuple(
        RuleViolation(
            rule_id=f"CL-LEDGER-{v.type}",
            message=f"{v.subject}: {v.description}",
            source="carbonlink ledger (DESIGN.md invariants 2-3)",
        )
        for v in error.violations
    ) or (RuleViolation("CL-LEDGER", str(error), "carbonlink ledger"),)


def _decision_json(decision: RulesDecision) -> str:
    return json.dumps(decision_to_dict(decision), sort_keys=True)


def _surrender_keys(request: UseRequest) -> dict[str, Any]:
    """The columns of a use's row that find a surrender by entity, scheme and year."""
    if request.kind != "surrender":
        return {}
    return {
        "entity_id": request.entity_id,
        "jurisdiction": request.jurisdiction,
        "compliance_year": request.compliance_year,
    }


def _decision_from_json(text: str) -> RulesDecision | None:
    return decision_from_dict(json.loads(text)) if text else None


def _instruction_from_json(text: str) -> TransferInstruction:

    data = json.loads(text)
    settlement = data["settlement"]
    return TransferInstruction(
        source=AccountRef(**data["source"]),
        destination=AccountRef(**data["destination"]),
        units=tuple(block_id_from_dict(u) for u in data["units"]),
        intended_use=data["intended_use"],
        settlement=None
        if settlement is None
        else Settlement(
            settlement["currency"], Decimal(settlement["amount"]), settlement["trade_reference"]
        ),
        # Absent from instructions stored before the field existed, and from any without one.
        compliance_year=data.get("compliance_year", 0),
    )


_STEPS = TransferStepRecord.__table__

# session.info key: the steps recorded in the transaction, in order (see _Entered).
_ENTERED = "carbonlink.entered_states"
_Entered = tuple[str, int, TransferStep]
"""A step a transfer took: its id, the step's number and the step."""
# The steps committed so far by the _settle running on this thread, by transfer: enough
# to answer with a transfer it drove from its proposal to its end without reading it.
_SETTLED_STEPS: contextvars.ContextVar[dict[str, list[tuple[int, TransferStep]]] | None] = (
    contextvars.ContextVar("carbonlink_settled_steps", default=None)
)

# Where each non-final state sits on the state machine's one path (its step number).
_CHAIN_SEQ: dict[TransferState, int] = {
    TransferState.PROPOSED: 0,
    TransferState.CHECKED: 1,
    TransferState.SOURCE_LOCKED: 2,
    TransferState.DESTINATION_CREDITED: 3,
    TransferState.SOURCE_FINALIZED: 4,
}


@dataclass(frozen=True)
class _Leg:
    """One registry call a transfer step makes."""

    registry: str
    request: LockRequest | CreditRequest | FinalizeRequest
    piece: int = 0
    """The transfer's piece this call is for."""
    follows: bool = False
    """A second call for the same piece (at the origin registry, after the first)."""


_LegOutcome = RegistryHolding | RegistryRejected | RegistryUnavailable


def _first_failure(
    outcomes: Sequence[_LegOutcome],
) -> RegistryRejected | RegistryUnavailable | None:
    return next((o for o in outcomes if not isinstance(o, RegistryHolding)), None)


class _Submission(NamedTuple):
    """An instruction and the request id its caller gave it."""

    caller: str
    """Whose request-id space ``request_id`` is in (see ``idempotency.LOCAL_CALLER``)."""
    request_id: str
    instruction: TransferInstruction


_Answer = TypeVar("_Answer")
"""What a round answers each submission with (the transfer as the round left it)."""


@dataclass(eq=False)
class _Waiter(Generic[_Answer]):
    """One submission waiting for its round (see _SharedRounds)."""

    submission: _Submission
    leads: bool = False
    done: bool = False
    outcome: _Answer | Exception | None = None
    """The round's answer, or the error of this submission alone."""
    error: Exception | None = None
    """What failed the whole round."""


# A round's leader waits for the submitters of the round before to come back (see
# _SharedRounds._gather) at most this share of that round's time, and never longer than
# the cap: a wait that costs a tenth of a round to save up to a whole one.
_GATHER_SHARE = 0.1
_GATHER_CAP_SECONDS = 0.01


class _SharedRounds(Generic[_Answer]):
    """Settles concurrent single submissions together (group commit).

    A submission that finds no round running leads one: it takes every submission
    waiting at that moment, its own included, and settles them as one group, so the
    proposal, each step's transaction, each registry call and the replies' read serve
    all of them;
    submissions arriving meanwhile wait, and the first of them leads the next round,
    after waiting briefly for the last round's submitters to come back (``_gather``).
    One submission alone is settled at once; many at a time share rounds instead of
    queueing for the database one step each.
    """

    def __init__(
        self,
        settle: Callable[[Sequence[_Submission]], list[_Answer | Exception]],
        gather_cap_seconds: float = _GATHER_CAP_SECONDS,
    ) -> None:
        self._settle = settle
        self._gather_cap_seconds = gather_cap_seconds
        lock = threading.Lock()
        self._changed = threading.Condition(lock)
        """A round ended: its submissions are answered, or one of the waiting leads."""
        self._arrived = threading.Condition(lock)
        """A submission joined the queue (heard by a leader gathering its round)."""
        self._queue: list[_Waiter[_Answer]] = []
        self._leading = False
        self._submitters = 1
        """How many submissions the last round saw: its own and those queued meanwhile."""
        self._round_seconds = 0.0
        """How long the last round took."""

    def submit(self, submission: _Submission) -> _Answer:
        """Settle ``submission`` as far as the registries let it go now; the round's answer.

        Raises:
            RequestIdConflict: The request id was used for another instruction.
        """
        me: _Waiter[_Answer] = _Waiter(submission)
        with self._changed:
            self._queue.append(me)
            self._arrived.notify()
            if not self._leading:
                self._leading = me.leads = True
            while not (me.done or me.leads):
                self._changed.wait()
            if not me.done:
                self._gather()
                group, self._queue = self._queue, []
        if not me.done:
            outcomes: list[_Answer | Exception] = []
            error: Exception | None = None
            began = time.monotonic()
            try:
                outcomes = self._settle([w.submission for w in group])
            except Exception as exc:  # every submission of the group hears of it
                error = exc
            finally:
                if error is None and len(outcomes) != len(group):
                    error = RuntimeError("the round ended without answering every submission")
                with self._changed:
                    for position, waiter in enumerate(group):
                        waiter.done, waiter.error = True, error
                        if error is None:
                            waiter.outcome = outcomes[position]
                    self._submitters = len(group) + len(self._queue)
                    self._round_seconds = time.monotonic() - began
                    if self._queue:
                        self._queue[0].leads = True  # the next round's leader
                    else:
                        self._leading = False
                    self._changed.notify_all()
        if me.error is not None:
            raise me.error
        if isinstance(me.outcome, Exception):
            raise me.outcome
        assert me.outcome is not None  # done without an error: the round answered it
        return me.outcome

    def _gather(self) -> None:
        """Wait, briefly, until as many submissions queue as the last round saw.

        Clients that each submit again once answered (an exchange's order flow) come back
        a moment after their round ends.  A round led by the first of them alone left the
        others to the next: rounds alternated between one submission and all the rest,
        and a round costs nearly as much for one as for many.  One client alone, or one
        submission per round, never waits.  Called with the lock held.
        """
        window = min(_GATHER_SHARE * self._round_seconds, self._gather_cap_seconds)
        deadline = time.monotonic() + window
        while len(self._queue) < self._submitters:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.wait(remaining)


# Built once: a step's every transaction runs them, and building and keying a statement
# anew cost more than running it.
# What a reply shows of a transfer, as plain columns: a reply only reads them.
_VIEW_COLUMNS = sa.select(
    TransferRecord.id,
    TransferRecord.request_id,
    TransferRecord.instruction,
    TransferRecord.state,
    TransferRecord.decision,
    TransferRecord.failure_reason,
    TransferRecord.plan,
    TransferRecord.created_at,
    TransferRecord.updated_at,
).where(TransferRecord.id.in_(sa.bindparam("ids", expanding=True)))
_VIEW_STEPS = (
    sa.select(_STEPS.c.transfer_id, _STEPS.c.state, _STEPS.c.at, _STEPS.c.reason)
    .where(_STEPS.c.transfer_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_STEPS.c.transfer_id, _STEPS.c.seq)
)
_UNION_READS = 200
"""Reads of keys merged by one UNION: SQLite refuses a compound statement of more than
500 parts, and a bearer token may name 256 accounts (two reads each)."""


def _transfer_filters(
    query: sa.Select[Any], state: TransferState | None, registry: str
) -> sa.Select[Any]:
    """``query`` keeping the transfers in ``state`` and touching ``registry`` (either
    filter unset keeps all)."""
    if state is not None:
        query = query.where(TransferRecord.state == state.value)
    if registry:
        # Either side's registry, asked as "registry IN (source, destination)": SQLite,
        # which keeps no statistics, read the OR of two comparisons as two searches of the
        # side indexes (0016) by registry alone, then sorted every transfer of the
        # registry for one page; this form it does not search by, and tests it on the
        # reads of the accounts. (A registry alone is sought by _list_registry_transfers.)
        query = query.where(
            sa.literal(registry, sa.String()).in_(
                [TransferRecord.source_registry, TransferRecord.destination_registry]
            )
        )
    return query


def _first_keys(
    query: sa.Select[tuple[datetime, str]], count: int
) -> sa.Select[tuple[datetime, str]]:
    """The first ``count`` ``(created_at, id)`` (the columns ``query`` selects) of
    ``query`` in page order, as a part of a union (which takes no ORDER BY or LIMIT of
    its parts but in a subquery)."""
    first = query.order_by(*query.selected_columns).limit(count).subquery()
    return sa.select(first.c.created_at, first.c.id)


def _account_pairs(accounts: frozenset[str]) -> list[tuple[str, str]]:
    """``registry:account`` strings as (registry, account), sorted; a string of no colon
    names no account."""
    return sorted({(r, a) for r, colon, a in (x.partition(":") for x in accounts) if colon})


def _merged_keys(
    reads: Sequence[sa.Select[tuple[datetime, str]]], count: int
) -> sa.Select[tuple[str]]:
    """The ids of the first ``count`` distinct keys of ``reads``, in page order.

    Past ``_UNION_READS`` reads, the reads are merged a group at a time and the groups'
    firsts merged again: each group's first ``count`` hold every key of the overall
    first ``count`` that the group read.
    """
    while len(reads) > _UNION_READS:
        reads = [
            _first_merged(reads[at : at + _UNION_READS], count)
            for at in range(0, len(reads), _UNION_READS)
        ]
    union = (sa.union(*reads) if len(reads) > 1 else reads[0]).subquery()
    return sa.select(union.c.id).order_by(union.c.created_at, union.c.id).limit(count)


def _first_merged(
    reads: Sequence[sa.Select[tuple[datetime, str]]], count: int
) -> sa.Select[tuple[datetime, str]]:
    union = sa.union(*reads).subquery()
    first = (
        sa.select(union.c.created_at, union.c.id)
        .order_by(union.c.created_at, union.c.id)
        .limit(count)
        .subquery()
    )
    return sa.select(first.c.created_at, first.c.id)


_BY_REQUEST_IDS = sa.select(
    TransferRecord.request_id, TransferRecord.caller, TransferRecord.id, TransferRecord.body_sha256
).where(TransferRecord.request_id.in_(sa.bindparam("request_ids", expanding=True)))


def _proposed_under(
    session: Session, submissions: Sequence[_Submission]
) -> dict[tuple[str, str], tuple[str, bytes]]:
    """The transfers already proposed under these submissions' request ids, each by its
    caller: each one's id and body digest, by ``(caller, request_id)``."""
    # As plain text: through the ORM, the lookup cost a single transfer more than a
    # third of a millisecond.  By request id alone, which leads the unique index; other
    # callers' transfers under the same ids are found too, and left out here.
    wanted = {(s.caller, s.request_id) for s in submissions}
    request_ids = list(dict.fromkeys(s.request_id for s in submissions))
    found: dict[tuple[str, str], tuple[str, bytes]] = {}
    for r in read_plain_in(session, _BY_REQUEST_IDS, "request_ids", request_ids):
        key = (r["caller"], r["request_id"])
        if key in wanted:
            found[key] = (r["id"], bytes(r["body_sha256"]))
    return found


@dataclass(frozen=True)
class _ParsedPlan:
    pieces: tuple[_Piece, ...]
    locked_rows: tuple[int, ...]
    """The ledger rows the transfer locked at CHECKED (none in plans older than the field)."""


class _PlanCache:
    """Plans already parsed, by their text; the newest ``size`` kept.

    Every step of a transfer reads its plan, some more than once, and the step that writes
    a plan knows what it holds: it is parsed at most once per text, and most often never.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._plans: dict[str, _ParsedPlan] = {}
        self._lock = threading.Lock()

    def get(self, plan: str) -> _ParsedPlan:
        with self._lock:
            parsed = self._plans.get(plan)
        if parsed is None:
            data = json.loads(plan)
            parsed = _ParsedPlan(
                tuple(_Piece.from_json(p) for p in data["pieces"]),
                tuple(int(i) for i in data.get("locked_rows", [])),
            )
            self.remember(plan, parsed)
        return parsed

    def remember(self, plan: str, parsed: _ParsedPlan) -> None:
        with self._lock:
            self._plans[plan] = parsed
            if len(self._plans) > self._size:
                del self._plans[next(iter(self._plans))]  # the oldest


_PLANS = _PlanCache(8192)


def _piece_blocks(pieces: Sequence[_Piece]) -> list[BlockId]:
    """The blocks a transfer's pieces take, at their source and at their origin."""
    return [b for p in pieces for b in (p.source_block, p.origin_block)]


def _plan_pieces(plan: str) -> tuple[_Piece, ...]:
    return _PLANS.get(plan).pieces


def _locked_rows(plan: str) -> list[int]:
    """The ledger rows a transfer locked at CHECKED (none for a transfer with no plan)."""
    return list(_PLANS.get(plan).locked_rows) if plan else []


class _GroupConflict(Exception):
    """A transfer of a group recorded without savepoints met a conflict: redo it isolated."""


class _StaleStep(Exception):
    """A step found its transfer already moved on by another driver (not an error)."""


def _view(
    record: TransferRecord | TransferRow | sa.Row[Any], history: Sequence[TransferStep]
) -> Transfer:
    """A transfer as a reply shows it: its row and its steps, in order."""
    plan = json.loads(record.plan) if record.plan else {}
    return Transfer(
        transfer_id=record.id,
        request_id=record.request_id,
        instruction=_instruction_from_json(record.instruction),
        state=TransferState(record.state),
        decision=_decision_from_json(record.decision),
        history=tuple(history),
        failure_reason=record.failure_reason,
        credited_blocks=tuple(block_from_json(b) for b in plan.get("credited", [])),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


_IMPORTED_STATUSES = frozenset(
    {
        HoldingStatus.ACTIVE,
        HoldingStatus.RETIRED,
        HoldingStatus.CANCELLED,
        HoldingStatus.SURRENDERED,
    }
)
"""Registry holdings the ledger records when it learns them (see ``import_registry``)."""


_USE_START_PATIENCE_SECONDS = 10.0
"""How long a use's start tries again while concurrent writers keep winning its rows.

A time, not a count of attempts: each round one of the contenders wins, so n of them
all finish within n rounds, and a count below n failed the unluckiest for no reason."""
_REFUSED_USE_STATES = frozenset({"rejected", "failed"})
"""Final states of a use a registry refused: before any leg was done, or after some."""
_USED_ELSEWHERE = frozenset(
    {HoldingStatus.RETIRED, HoldingStatus.CANCELLED, HoldingStatus.SURRENDERED}
)
"""Registry statuses of units already used (a use's units found so are a double use)."""
_USED_CODES = frozenset({"UNITS_RETIRED", "UNITS_CANCELLED", "UNITS_SURRENDERED"})
"""The registries' refusal codes for units already used (see the emulators' ``_take``)."""


def _seen_whole(record: TransferRow, taken: Sequence[tuple[int, TransferStep]]) -> Transfer | None:
    """The transfer's view from steps this call committed, if they are its whole history.

    Whole: every step from the proposal (numbered from 0, none missing) to the state the
    row is in.  Anything else (a transfer finished by another gateway meanwhile, say) is
    read back instead.
    """
    if (
        taken
        and [seq for seq, _ in taken] == list(range(len(taken)))
        and taken[-1][1].state.value == record.state
    ):
        return _view(record, [step for _, step in taken])
    return None


class Bridge:
    """Drives transfers and uses of units across the wired registries."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registries: Mapping[str, RegistryPort],
        rules: TransferRules,
        *,
        clock: Callable[[], datetime],
        lock_ttl: timedelta = timedelta(minutes=5),
        registry_lock_grace: timedelta = timedelta(hours=24),
        owner: str = "",
        lease: timedelta = timedelta(seconds=15),
        on_state: Callable[[str, TransferState], None] | None = None,
        credited_programs: Mapping[str, frozenset[Program]] | None = None,
        accepted_backlog: int = 2000,
    ) -> None:
        """Build a bridge.

        Args:
            sessions: Database sessions of the ledger.
            registries: Adapters by registry id.
            rules: The rules engine.
            clock: Now, as an aware datetime (injected for tests).
            lock_ttl: How long a source lock may wait for the destination credit; past it
                a transfer not yet credited rolls back.
            registry_lock_grace: Extra time the registries keep the lock after the
                gateway's own expiry, so a transfer credited just before its expiry can
                still be finalized.
            owner: This gateway process, for the lease on transfers it drives.
            lease: How long a gateway's claim on driving a transfer lasts.
            on_state: Called after each new state of a transfer is committed (crash-test
                fault injection hooks in here).
            credited_programs: Per registry, the programs whose units it can be credited
                with from another registry (``adapters.registry.RegistryEntry``); one not
                named takes any (issuing a mirror).  A transfer of other units there is
                rejected before anything is locked, not rolled back once refused.
            accepted_backlog: How many accepted transfers (``accept``) may wait for or
                be in settlement at once before acceptance waits.
        """
        self._sessions = sessions
        self._registries = dict(registries)
        self._rules = rules
        self._clock = clock
        self._lock_ttl = lock_ttl
        self._registry_lock_grace = registry_lock_grace
        self._owner = owner or uuid.uuid4().hex
        self._held: tuple[int | None, tuple[_Hold, ...]] = (None, ())
        """Reconciliation's holds as of the newest completed reconciliation (its id)."""
        self._imported: dict[str, set[tuple[str, BlockId, HoldingStatus]]] = {}
        """Per registry, the holdings its imports have already looked at."""
        self._lease = lease
        self._on_state = on_state
        self._credited_programs = dict(credited_programs or {})
        self._driving: set[str] = set()
        self._driving_lock = threading.Lock()
        # Registry calls of a batch's transfers run side by side.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bridge")
        self._checking = threading.Lock()
        # Concurrent single submissions share rounds (see _SharedRounds).
        self._shared_rounds = _SharedRounds(self._settled_views)
        # Parts of a large batch are driven side by side (see drive_many).
        self._parts = ThreadPoolExecutor(max_workers=_PIPELINE_PARTS, thread_name_prefix="batch")
        # Accepted transfers are settled in the background, in groups (see accept).
        self._settler = Settler(
            self._settle_accepted,
            backlog=accepted_backlog,
            group_size=_PIPELINE_PART,
        )
        self._accepting_rounds = _SharedRounds(self._accept_many)
        self._changes = TransferChanges()

    # ----------------------------------------------------------------------------- reads

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The ledger database's sessions."""
        return self._sessions

    @property
    def changes(self) -> TransferChanges:
        """News of every transfer state change this bridge commits, told after the commit."""
        return self._changes

    def today(self) -> date:
        """The bridge clock's date (UTC)."""
        return self._clock().date()

    @property
    def registry_ids(self) -> tuple[str, ...]:
        """Ids of the wired registries."""
        return tuple(sorted(self._registries))

    def get(self, transfer_id: str) -> Transfer:
        """A transfer by id.

        Raises:
            NotFound: No such transfer.
        """
        return self._get_many([transfer_id])[transfer_id]

    def _get_many(self, transfer_ids: Sequence[str]) -> dict[str, Transfer]:
        with read_only(self._sessions) as session:
            records = list(session.execute(_VIEW_COLUMNS, {"ids": list(transfer_ids)}))
            found = {r.id for r in records}
            for transfer_id in transfer_ids:
                if transfer_id not in found:
                    raise NotFound(f"transfers/{transfer_id}")
            return {v.transfer_id: v for v in self._views(session, records)}

    def list_transfers(
        self,
        after: tuple[datetime, str] | None,
        limit: int,
        state: TransferState | None = None,
        registry: str = "",
        accounts: frozenset[str] | None = None,
    ) -> tuple[list[Transfer], bool]:
        """A page of transfers, oldest first (by creation, then id); the flag tells whether
        more follow.

        ``after`` is the ``(created_at, transfer_id)`` of the last transfer of the previous
        page: a position by key, which transfers changing state or committed late never
        shift (an offset did). ``accounts`` (``registry:account``), when given, keeps only
        the transfers whose source or destination is one of them.
        """
        if accounts is not None:
            return self._list_account_transfers(after, limit, state, registry, accounts)
        if registry:
            return self._list_registry_transfers(after, limit, state, registry)
        with unit_of_work(self._sessions) as session:
            query = sa.select(TransferRecord)
            if after is not None:
                # A row-value comparison, not its spelled-out OR: both databases bound an
                # index search on (created_at, id) with it, where the OR is a filter of a
                # scan from the first transfer ever recorded. (A plain tuple on the right
                # binds with the columns' types: the timestamp as UtcDateTime.)
                query = query.where(sa.tuple_(TransferRecord.created_at, TransferRecord.id) > after)
            query = _transfer_filters(query, state, registry)
            rows = list(
                session.execute(
                    query.order_by(TransferRecord.created_at, TransferRecord.id).limit(limit + 1)
                ).scalars()
            )
            return self._views(session, rows[:limit]), len(rows) > limit

    def _list_account_transfers(
        self,
        after: tuple[datetime, str] | None,
        limit: int,
        state: TransferState | None,
        registry: str,
        accounts: frozenset[str],
    ) -> tuple[list[Transfer], bool]:
        """``list_transfers`` of the transfers whose source or destination is one of
        ``accounts``, read a page at most per account and side.

        One OR over both sides served by no index walked every transfer after the
        position; instead each account is sought in the index of each side (0016) from
        the position, each read stops at ``limit + 1`` in page order, and the page is the
        first ``limit + 1`` of their union. A union, not UNION ALL: a transfer between two
        of the accounts (or from one to itself) is found by both its sides, and is one
        item of the page. The union is of keys only, read from the indexes alone; the
        page's rows are then read by id.
        """
        pairs = _account_pairs(accounts)
        if not pairs:
            return [], False
        reads: list[sa.Select[tuple[datetime, str]]] = []
        for side_registry, side_account in (
            (TransferRecord.source_registry, TransferRecord.source_account),
            (TransferRecord.destination_registry, TransferRecord.destination_account),
        ):
            for account_registry, account in pairs:
                read = sa.select(TransferRecord.created_at, TransferRecord.id).where(
                    side_registry == account_registry, side_account == account
                )
                if after is not None:
                    # Row values bound the index search, as in list_transfers.
                    read = read.where(
                        sa.tuple_(TransferRecord.created_at, TransferRecord.id) > after
                    )
                read = _transfer_filters(read, state, registry)
                reads.append(_first_keys(read, limit + 1))
        return self._page_of_keys(_merged_keys(reads, limit + 1), limit)

    def _list_registry_transfers(
        self,
        after: tuple[datetime, str] | None,
        limit: int,
        state: TransferState | None,
        registry: str,
    ) -> tuple[list[Transfer], bool]:
        """``list_transfers`` of the transfers whose source or destination is at
        ``registry``, read a page at most per side.

        The registry as a filter of the (created_at, id) order read every transfer after
        the position, the whole history for a page of a registry that transfers rarely;
        instead the registry is sought in the registry index of each side (0025) from the
        position and the two reads merged, as ``_list_account_transfers`` merges its
        accounts' (a transfer within the registry is found by both, and is one item).
        """
        reads: list[sa.Select[tuple[datetime, str]]] = []
        for side_registry in (TransferRecord.source_registry, TransferRecord.destination_registry):
            read = sa.select(TransferRecord.created_at, TransferRecord.id).where(
                side_registry == registry
            )
            if after is not None:
                # Row values bound the index search, as in list_transfers.
                read = read.where(sa.tuple_(TransferRecord.created_at, TransferRecord.id) > after)
            if state is not None:
                # Tested on the side's transfers, not sought: SQLite, which keeps no
                # statistics, took the state index's search, every transfer of every
                # registry in the state (as _list_account_uses explains for uses).
                read = read.where(TransferRecord.state.concat("") == state.value)
            reads.append(_first_keys(read, limit + 1))
        return self._page_of_keys(_merged_keys(reads, limit + 1), limit)

    def _page_of_keys(self, keys: sa.Select[tuple[str]], limit: int) -> tuple[list[Transfer], bool]:
        """The page of the transfers whose ids ``keys`` reads (``limit + 1`` at most, in
        page order), and whether more follow."""
        with unit_of_work(self._sessions) as session:
            found = [str(transfer_id) for transfer_id in session.execute(keys).scalars()]
            if not found:
                return [], False
            records = {r.id: r for r in session.execute(_VIEW_COLUMNS, {"ids": found[:limit]})}
            # A transfer is never deleted, so every key read names a row.
            return self._views(session, [records[i] for i in found[:limit]]), len(found) > limit

    def _views(
        self, session: Session, records: Sequence[TransferRecord | sa.Row[Any]]
    ) -> list[Transfer]:
        history: dict[str, list[TransferStep]] = {r.id: [] for r in records}
        if records:
            # Plain rows, not ORM objects: a batch's views read six steps per transfer.
            for transfer_id, state, at, reason in session.execute(
                _VIEW_STEPS, {"ids": list(history)}
            ):
                history[transfer_id].append(TransferStep(TransferState(state), at, reason))
        return [_view(record, history[record.id]) for record in records]

    # ------------------------------------------------------------------------ evaluation

    def _not_wired(self, registry: str) -> str:
        return (
            f"registry {registry!r} is not wired in this gateway; wired registries: "
            f"{', '.join(sorted(self._registries))}"
        )

    def _holds(self, session: Session) -> tuple[_Hold, ...]:
        """Every hold in force, read once per transaction: the units reconciliation holds
        and those of failed uses no operator has resolved."""
        transaction = session.get_transaction()
        cached_holds: tuple[Any, tuple[_Hold, ...]] | None = session.info.get(_HELD)
        if cached_holds is not None and cached_holds[0] is transaction:
            return cached_holds[1]
        # Reconciliation's holds change only with a completed reconciliation: kept across
        # transactions until a newer one completes.
        latest = reconciliations.latest_completed_id(session)
        cached_id, cached = self._held
        if latest != cached_id:
            cached = (
                ()
                if latest is None
                else tuple(_reconciliation_hold(h) for h in reconciliations.held_blocks(session))
            )
            self._held = (latest, cached)
        holds = cached + _failed_use_holds(session)
        session.info[_HELD] = (transaction, holds)
        return holds

    def held_violations(
        self, session: Session, blocks: Sequence[BlockId]
    ) -> tuple[RuleViolation, ...]:
        """The holds ``blocks`` run into, as violations (one per hold they touch), read in
        ``session``'s transaction; each names what holds them in its details (``use`` or
        ``reconciliation``).

        Units a registry and the ledger tell differently, found twice in a row by the
        scheduled reconciliation, are not moved or used until a reconciliation finds
        them agreeing: taking them could count them twice (the Kyoto ITL refuses any
        transaction on units whose reconciliation is unresolved).  Units of a use done at
        one registry and refused at another are not moved or used until an operator
        resolves it, for the same reason.
        """
        violations: list[RuleViolation] = []
        for hold in self._holds(session):
            touched = tuple(
                dict.fromkeys(b for b in blocks if any(b.overlaps(h) for h in hold.blocks))
            )
            if touched:
                violations.append(
                    RuleViolation(
                        rule_id=hold.rule_id,
                        message=hold.message,
                        source=hold.source,
                        blocks=touched,
                        details=(hold.subject,),
                    )
                )
        return tuple(violations)

    @staticmethod
    def _with_held(decision: RulesDecision, held: tuple[RuleViolation, ...]) -> RulesDecision:
        """``decision`` refused for ``held`` too (every violated rule is listed)."""
        if not held:
            return decision
        return RulesDecision(allowed=False, violations=held + decision.violations)

    def _validate(self, instruction: TransferInstruction) -> None:
        problems = []
        for name, ref in (("source", instruction.source), ("destination", instruction.destination)):
            if ref.registry not in self._registries:
                problems.append((f"instruction.{name}.registry", self._not_wired(ref.registry)))
            if not ref.account:
                problems.append((f"instruction.{name}.account", "is required"))
        if instruction.source.registry == instruction.destination.registry:
            problems.append(
                (
                    "instruction.destination.registry",
                    "is the source registry: carbonlink moves units across registries; "
                    "use the registry's own internal transfer",
                )
            )
        year = compliance_year_problem(instruction.intended_use, instruction.compliance_year)
        if year is not None:
            problems.append(("instruction.compliance_year", year))
        if not instruction.units:
            problems.append(("instruction.units", "must name at least one block"))
        for i, unit in enumerate(instruction.units):
            for other in instruction.units[i + 1 :]:
                if unit.overlaps(other):
                    problems.append((f"instruction.units[{i}]", "overlaps another unit selector"))
        if problems:
            raise InvalidRequest(
                "; ".join(f"{f}: {d}" for f, d in problems),
                [FieldViolation(f, d) for f, d in problems],
            )

    def _plan(
        self, session: Session, instruction: TransferInstruction
    ) -> tuple[TransferKind, list[_Piece], list[LedgerHolding], list[LedgerHolding]]:
        """Resolve the units to ledger rows and the pieces that move.

        Returns the kind, the pieces, the source rows and every row that knows the units.

        Raises:
            FailedPrecondition: The units are not all held, active, at the source, or the
                route is not one the bridge can take.
        """
        source, destination = instruction.source, instruction.destination
        found: dict[int, LedgerHolding] = {}
        for unit in instruction.units:
            for row in ledger.require_holding(session, source.registry, source.account, unit):
                # Several units of one instruction may lie in the same row: one entry
                # per row, or each of those units would become a piece twice.
                found[row.row_id] = row
        rows = list(found.values())
        mirrors = {h.is_mirror for h in rows}
        if len(mirrors) > 1:
            raise FailedPrecondition(
                "a transfer cannot mix mirror units and origin units",
                [PreconditionViolation("ROUTE", "instruction.units", "mixed mirrors and origins")],
            )
        kind = TransferKind.RETURN if mirrors == {True} else TransferKind.BRIDGE_OUT
        pieces: list[_Piece] = []
        known: list[LedgerHolding] = []
        route_problems: list[PreconditionViolation] = []
        for unit in instruction.units:
            for row in rows:
                if not row.block.id.overlaps(unit):
                    continue
                start = max(row.block.id.serial_start, unit.serial_start)
                end = min(row.block.id.serial_end, unit.serial_end)
                origin = ledger.origin_part(row, start, end)
                origin_registry = ORIGIN_REGISTRY[origin.program]
                source_block = BlockId(row.block.id.program, row.block.id.serial_series, start, end)
                takes = self._credited_programs.get(destination.registry)
                if takes is not None and origin.program not in takes:
                    # Its credit would be refused for good after the source was locked
                    # (Gold Standard takes back only its own units): refused before.
                    route_problems.append(
                        PreconditionViolation(
                            "ROUTE",
                            destination.registry,
                            f"cannot hold {origin.program.value} units: it is credited only "
                            f"with {', '.join(sorted(p.value for p in takes))} units",
                        )
                    )
                    continue
                if kind is TransferKind.BRIDGE_OUT:
                    if source.registry != origin_registry and source.registry not in CUSTODY_VENUES:
                        route_problems.append(
                            PreconditionViolation(
                                "ROUTE",
                                source.registry,
                                f"holds {origin.program.value} units neither as origin nor as a "
                                "custody venue",
                            )
                        )
                        continue
                    if (
                        destination.registry == origin_registry
                        or destination.registry in CUSTODY_VENUES
                    ):
                        route_problems.append(
                            PreconditionViolation(
                                "ROUTE",
                                destination.registry,
                                f"holds {origin.program.value} units natively; moves between an "
                                "origin registry and its custody venues are not bridged",
                            )
                        )
                        continue
                    origin_account = (
                        venue_account(source.registry)
                        if source.registry in CUSTODY_VENUES
                        else source.account
                    )
                    attributes = row.block.with_range(start, end)
                    pieces.append(_Piece(source_block, origin, origin_account, attributes))
                else:
                    if (
                        destination.registry != origin_registry
                        and destination.registry not in CUSTODY_VENUES
                    ):
                        route_problems.append(
                            PreconditionViolation(
                                "ROUTE",
                                destination.registry,
                                "a mirror returns to its origin registry or a custody venue",
                            )
                        )
                        continue
                    for origin_row in ledger.origin_rows(session, origin):
                        if origin_row.status is not HoldingStatus.BRIDGED:
                            route_problems.append(
                                PreconditionViolation(
                                    "ORIGIN",
                                    str(origin_row.block.id),
                                    f"origin of a live mirror is {origin_row.status.value}",
                                )
                            )
                            continue
                        o_start = max(origin_row.block.id.serial_start, origin.serial_start)
                        o_end = min(origin_row.block.id.serial_end, origin.serial_end)
                        m_start = source_block.serial_start + (o_start - origin.serial_start)
                        pieces.append(
                            _Piece(
                                BlockId(
                                    source_block.program,
                                    source_block.serial_series,
                                    m_start,
                                    m_start + (o_end - o_start),
                                ),
                                BlockId(origin.program, origin.serial_series, o_start, o_end),
                                origin_row.account,
                                origin_row.block.with_range(o_start, o_end),
                            )
                        )
                if kind is TransferKind.BRIDGE_OUT:
                    # Origin units held at the source: require_holding read every live row
                    # over these serials (and refused any held elsewhere), so the origin
                    # rows are the source rows read above.
                    known.extend(r for r in rows if r.origin.overlaps(origin))
                else:
                    known.extend(ledger.origin_rows(session, origin))
                known.extend(ledger.mirrors_of(session, origin))
        if route_problems:
            raise FailedPrecondition(
                "; ".join(f"{p.subject}: {p.description}" for p in route_problems), route_problems
            )
        # Units of one instruction may lie in the same row: the rules must see each row
        # once, or it would look like the same serials live twice (double issuance).
        unique_known = list({h.row_id: h for h in known}.values())
        return kind, pieces, rows, unique_known

    @staticmethod
    def _prefetch_plans(session: Session, instructions: Sequence[TransferInstruction]) -> None:
        """Read at once the ledger rows that a group's checks (``_plan``) look up.

        On PostgreSQL each lookup is a round trip, two or three per transfer: here they
        are three statements for the group (see ``ledger.prefetch``).
        """
        if len(instructions) < 2:
            return
        units = [(i.source, u) for i in instructions for u in i.units]
        if not ledger.prefetch(session, [u for _, u in units]):
            return
        origins: list[BlockId] = []
        returning: list[BlockId] = []
        for source, unit in units:
            for row in ledger.overlapping(session, unit):
                if row.registry != source.registry or row.account != source.account:
                    continue  # _plan refuses it; nothing of it is looked up
                start = max(row.block.id.serial_start, unit.serial_start)
                end = min(row.block.id.serial_end, unit.serial_end)
                origin = ledger.origin_part(row, start, end)
                origins.append(origin)
                if row.is_mirror:
                    returning.append(origin)
        ledger.prefetch(session, origins, mirrors=True)
        ledger.prefetch(session, returning)

    def evaluate(self, instruction: TransferInstruction) -> RulesDecision:
        """Dry run: the decision a transfer would get now; nothing changes.

        Raises:
            InvalidRequest: The instruction is malformed.
        """
        self._validate(instruction)
        with self._sessions() as session, session.begin():
            try:
                kind, pieces, _, known = self._plan(session, instruction)
            except FailedPrecondition as exc:
                return RulesDecision(allowed=False, violations=_ledger_violations(exc))
            decision = self._with_held(
                self._rules.check_transfer(
                    TransferCheck(
                        instruction,
                        kind,
                        tuple(p.block for p in pieces),
                        tuple(known),
                        self._clock(),
                    )
                ),
                self.held_violations(session, _piece_blocks(pieces)),
            )
            session.rollback()
        return decision

    # ------------------------------------------------------------------------- submission

    def submit(
        self, request_id: str, instruction: TransferInstruction, *, caller: str = LOCAL_CALLER
    ) -> Transfer:
        """Propose a transfer and drive it as far as the registries let it go now.

        The caller's request id with the same instruction returns the caller's first
        transfer; with a different instruction it is refused.  Another caller's request
        under the same id is another request.

        Args:
            request_id: The caller's id of the request.
            instruction: What to transfer.
            caller: Whose request-id space ``request_id`` is in.

        Raises:
            InvalidRequest: The instruction is malformed.
            RequestIdConflict: The caller used the request id for another instruction.
        """
        return self._shared_rounds.submit(self._submission(caller, request_id, instruction))

    def accept(
        self, request_id: str, instruction: TransferInstruction, *, caller: str = LOCAL_CALLER
    ) -> Transfer:
        """Propose and check a transfer, answer, and settle it in the background.

        The answer is the transfer as checked: CHECKED, or REJECTED by the rules (final),
        or, when another gateway's claim on the same units met the check, PROPOSED (it is
        checked in the background).  A repeated request answers its transfer as it stands
        and settles it on if it is unfinished and no one is driving it.  Concurrent
        acceptances share a proposal round; the settler drives what was accepted in
        groups (see ``settling``).  While the backlog is full, acceptance waits.

        Raises:
            InvalidRequest: The instruction is malformed.
            RequestIdConflict: The caller used the request id for another instruction.
        """
        return self._accepting_rounds.submit(self._submission(caller, request_id, instruction))

    def accept_many(
        self,
        items: Sequence[tuple[str, TransferInstruction]],
        *,
        caller: str = LOCAL_CALLER,
    ) -> list[Transfer | Exception]:
        """Accept a batch of settlement instructions (``accept``); each on its own.

        Each instruction is answered as ``accept`` answers one (CHECKED, REJECTED by the
        rules, or PROPOSED; a repeat with its transfer as it stands) and then settled by
        the settler.  The batch is proposed and checked in parts no larger than the
        backlog (nor than a settler group), a transaction each, and each part waits for
        room as a single acceptance does: a batch larger than the backlog is accepted
        part by part as the settler makes room, so the backlog's bound holds for batches
        too, and no part ever waits for room the backlog cannot make.

        Args:
            items: Each instruction with its request id.
            caller: Whose request-id space the batch's request ids are in.
        """
        results, valid = self._submissions(items, caller)
        size = min(_PIPELINE_PART, self._settler.backlog)
        for start in range(0, len(valid), size):
            part = valid[start : start + size]
            accepted = self._accept_many([s for _, s in part])
            for (position, _), outcome in zip(part, accepted, strict=True):
                results[position] = outcome
        return [r for r in results if r is not None]

    def _submissions(
        self, items: Sequence[tuple[str, TransferInstruction]], caller: str
    ) -> tuple[list[Transfer | Exception | None], list[tuple[int, _Submission]]]:
        """A batch's results so far (each malformed item's error) and its valid items,
        by their positions in it."""
        results: list[Transfer | Exception | None] = [None] * len(items)
        valid: list[tuple[int, _Submission]] = []
        for position, (request_id, instruction) in enumerate(items):
            try:
                valid.append((position, self._submission(caller, request_id, instruction)))
            except InvalidRequest as exc:
                results[position] = exc
        return results, valid

    def _submission(
        self, caller: str, request_id: str, instruction: TransferInstruction
    ) -> _Submission:
        """The request, once its id and instruction are found valid.

        Raises:
            InvalidRequest: The request id is missing or the instruction malformed.
        """
        if not request_id:
            raise InvalidRequest.field("request_id", "is required")
        self._validate(instruction)
        return _Submission(caller, request_id, instruction)

    def _accept_many(self, submissions: Sequence[_Submission]) -> list[Transfer | Exception]:
        """Propose and check submissions in one transaction and queue them for settling."""
        self._settler.make_room(len(submissions))
        steps: dict[str, list[tuple[int, TransferStep]]] = {}
        collecting = _SETTLED_STEPS.set(steps)
        try:
            with self._checking:
                outcomes, proposed = self._propose_many(submissions, check=True)
        finally:
            _SETTLED_STEPS.reset(collecting)
        views: dict[str, Transfer] = {}
        for transfer_id, record in proposed.items():
            view = _seen_whole(record, steps.get(transfer_id, []))
            if view is not None:
                views[transfer_id] = view
        unread = [o for o in dict.fromkeys(outcomes) if isinstance(o, str) and o not in views]
        if unread:
            views.update(self._get_many(unread))
        unsettled = [t for t, v in views.items() if not v.state.is_final]
        with self._driving_lock:
            # A repeat's transfer may be in another driver's hands (the recovery loop's,
            # or a settler group's): left to it.
            mine = [t for t in unsettled if t in proposed or t not in self._driving]
            self._driving.update(mine)
        if not self._settler.add(mine):
            self._let_go(mine, {})  # stopping: the next gateway's recovery settles them
        return [o if isinstance(o, Exception) else views[o] for o in outcomes]

    def _settle_accepted(self, transfer_ids: list[str]) -> None:
        """Drive accepted transfers as one group and give up what is left unfinished."""
        reached: dict[str, TransferRow] = {}
        try:
            reached = self._claim_and_drive(transfer_ids)
        finally:
            self._let_go(transfer_ids, reached)

    def stop_settling(self, timeout: float) -> None:
        """Settle no more accepted transfers; wait up to ``timeout`` s for groups settling.

        Those still queued are let go at once, for recovery (this gateway's next start, or
        another gateway) to settle.
        """
        left = self._settler.stop(timeout)
        if left:
            self._let_go(left, {})

    @property
    def accepted_pending(self) -> int:
        """Accepted transfers queued for or in settlement by this bridge."""
        return self._settler.pending

    def submit_many(
        self,
        items: Sequence[tuple[str, TransferInstruction]],
        *,
        caller: str = LOCAL_CALLER,
    ) -> list[Transfer | Exception]:
        """Submit a batch of settlement instructions; each succeeds or fails on its own.

        The batch's database work is grouped: one transaction proposes and checks every
        new transfer, then each step of the state machine is taken for the whole batch at
        once (see ``_settle``).  An instruction that is malformed or reuses a request id
        for another body fails alone, as its own exception in the result list.

        Args:
            items: Each instruction with its request id.
            caller: Whose request-id space the batch's request ids are in.
        """
        results, valid = self._submissions(items, caller)
        parts = [valid[i : i + _PIPELINE_PART] for i in range(0, len(valid), _PIPELINE_PART)]
        if len(parts) <= 1:
            settled = self._settled_views([s for _, s in valid])
        else:
            # While one part waits for the registries, another records its step: the
            # gateway's work and the registries' overlap instead of alternating.
            running = [self._parts.submit(self._settled_views, [s for _, s in p]) for p in parts]
            settled = [outcome for part in running for outcome in part.result()]
        for (position, _), outcome in zip(valid, settled, strict=True):
            results[position] = outcome
        return [r for r in results if r is not None]

    def _settled_views(self, submissions: Sequence[_Submission]) -> list[Transfer | Exception]:
        """Settle submissions (see ``_settle``); each one's transfer then, or its error.

        Those the settlement did not see to their end are read back together, in one
        transaction.
        """
        settled, ended = self._settle(submissions)
        unread = [o for o in settled if isinstance(o, str) and o not in ended]
        views = dict(ended)
        if unread:
            views.update(self._get_many(list(dict.fromkeys(unread))))
        return [o if isinstance(o, Exception) else views[o] for o in settled]

    def _settle(
        self, submissions: Sequence[_Submission]
    ) -> tuple[list[str | Exception], dict[str, Transfer]]:
        """Propose, check and drive submissions; each one's transfer id, or its error.

        Also returns the transfers this call proposed and saw to their end, as they ended:
        built from the rows and steps it committed, they need no reading back.

        A new transfer is proposed and checked in one transaction (nothing is asked of a
        registry in between, so nothing is lost by recording both at once: a crash before
        the commit leaves no trace, and the client's retry proposes it anew), then driven.
        A repeated request drives its transfer on, so a client retrying after an error
        never leaves its transfer stranded.
        """
        steps: dict[str, list[tuple[int, TransferStep]]] = {}
        collecting = _SETTLED_STEPS.set(steps)
        try:
            with self._checking:
                outcomes, proposed = self._propose_many(submissions, check=True)
            new = list(proposed)
            with self._driving_lock:
                self._driving.update(new)
            reached: dict[str, TransferRow] = {}
            try:
                reached = self._drive_rounds(new, proposed)
            finally:
                self._let_go(new, reached)
        finally:
            _SETTLED_STEPS.reset(collecting)
        repeats = [o for o in outcomes if isinstance(o, str) and o not in proposed]
        if repeats:
            self.drive_many(repeats)
        ended: dict[str, Transfer] = {}
        for transfer_id in proposed:
            record = reached.get(transfer_id)
            taken = steps.get(transfer_id, [])
            # Only a history this call saw whole: every step from the proposal (numbered
            # from 0, none missing) to the state the row ended in.  Anything else (a
            # transfer left waiting, or finished by another gateway) is read back.
            if record is not None and TransferState(record.state).is_final:
                view = _seen_whole(record, taken)
                if view is not None:
                    ended[transfer_id] = view
        return outcomes, ended

    def _propose_many(
        self, items: Sequence[_Submission], *, check: bool = False
    ) -> tuple[list[str | Exception], dict[str, TransferRow]]:
        """Propose many transfers in one transaction (and with ``check``, check them in it).

        Returns:
            Each item's transfer id or its error; and the new transfers' rows as committed
            (this gateway holds their lease), for driving them on.
        """
        if not items:
            return [], {}
        digests = [body_digest(item.instruction.canonical()) for item in items]
        now = self._clock()
        entered: list[_Entered] = []
        try:
            with unit_of_work(self._sessions) as session, read_scope(session):
                if check:
                    ledger.defer_claims(session)
                session.info[_ENTERED] = entered
                known = _proposed_under(session, items)
                results: list[str | Exception] = []
                new: dict[str, TransferRow] = {}
                new_instructions: list[TransferInstruction] = []
                for item, digest in zip(items, digests, strict=True):
                    key = (item.caller, item.request_id)
                    if key in known:
                        transfer_id, stored = known[key]
                        try:
                            results.append(
                                self._same_request(stored, digest, item.request_id, transfer_id)
                            )
                        except RequestIdConflict as exc:
                            results.append(exc)
                        continue
                    transfer_id = uuid.uuid4().hex
                    record = self._new_record(transfer_id, item, digest, now)
                    transfer_rows.add(session, record)
                    known[key] = (transfer_id, digest)
                    results.append(transfer_id)
                    new[transfer_id] = record
                    new_instructions.append(item.instruction)
                # The new transfers are written at the commit, with the state the check
                # leaves them in (one INSERT each, no UPDATE); their steps after them.
                for transfer_id in new:
                    self._step(session, transfer_id, TransferState.PROPOSED, now)
                if check:
                    self._prefetch_plans(session, new_instructions)
                    if len(new) > 1:
                        # Many transfers from one source row: split it once per 32 of
                        # them, not once each (see ledger.cut_together).
                        ledger.cut_together(
                            session,
                            [
                                (i.source.registry, i.source.account, unit, transfer_id)
                                for transfer_id, i in zip(new, new_instructions, strict=True)
                                for unit in i.units
                            ],
                        )
                    for transfer_id in new:
                        self._check_in(session, transfer_id, None, now)
                        ledger.checked(session, transfer_id)
        except (LedgerConflict, sa.exc.IntegrityError) as exc:
            if check and (isinstance(exc, LedgerConflict) or ledger.is_claim_conflict(exc)):
                # Another gateway claimed some of the same units meanwhile: propose alone;
                # the rounds check each transfer on its own, retrying its conflict.
                return self._propose_many(items)
            # Another gateway proposed one of these request ids at the same moment: fall
            # back to one transaction per instruction, which answers each race exactly.
            fallback: list[str | Exception] = []
            for item in items:
                try:
                    fallback.append(self._propose(item))
                except RequestIdConflict as exc:
                    fallback.append(exc)
            # Driven as repeats are: claimed afresh (the lease is this gateway's already).
            return fallback, {}
        self._entered(entered)
        return results, new

    def _new_record(
        self, transfer_id: str, submission: _Submission, digest: bytes, now: datetime
    ) -> TransferRow:
        instruction = submission.instruction
        return TransferRow(
            id=transfer_id,
            request_id=submission.request_id,
            caller=submission.caller,
            body_sha256=digest,
            state=TransferState.PROPOSED.value,
            kind="",
            source_registry=instruction.source.registry,
            source_account=instruction.source.account,
            destination_registry=instruction.destination.registry,
            destination_account=instruction.destination.account,
            instruction=json.dumps(instruction.canonical(), sort_keys=True),
            plan="",
            decision="",
            failure_reason="",
            lock_expires_at=None,
            lease_owner=self._owner,
            lease_expires_at=now + self._lease,
            created_at=now,
            updated_at=now,
        )

    def _propose(self, submission: _Submission) -> str:
        """Propose one transfer in a transaction of its own; its id (new or the request's)."""
        request_id = submission.request_id
        digest = body_digest(submission.instruction.canonical())
        now = self._clock()
        entered: list[_Entered] = []
        same_request = sa.select(TransferRecord).where(
            TransferRecord.request_id == request_id, TransferRecord.caller == submission.caller
        )
        try:
            with unit_of_work(self._sessions) as session:
                session.info[_ENTERED] = entered
                existing = session.execute(same_request).scalar_one_or_none()
                if existing is not None:
                    return self._same_request(existing.body_sha256, digest, request_id, existing.id)
                transfer_id = uuid.uuid4().hex
                transfer_rows.add(session, self._new_record(transfer_id, submission, digest, now))
                self._step(session, transfer_id, TransferState.PROPOSED, now)
        except sa.exc.IntegrityError:
            # Another gateway inserted the caller's request id first: answer with its
            # transfer.
            with unit_of_work(self._sessions) as session:
                existing = session.execute(same_request).scalar_one()
                return self._same_request(existing.body_sha256, digest, request_id, existing.id)
        self._entered(entered)
        return transfer_id

    @staticmethod
    def _same_request(stored: bytes, digest: bytes, request_id: str, transfer_id: str) -> str:
        if stored != digest:
            # Not named, though the request is the caller's own (ids are scoped per caller):
            # the caller gets its transfer back by repeating the instruction it first sent.
            raise RequestIdConflict(
                f"request_id {request_id!r} was already used for a different instruction; "
                "use a new request id for a new instruction"
            )
        return transfer_id

    @staticmethod
    def _step(
        session: Session,
        transfer_id: str,
        state: TransferState,
        at: datetime,
        reason: str = "",
        previous: TransferState | None = None,
    ) -> None:
        """Record that a transfer entered ``state`` (from ``previous``; none for PROPOSED)."""
        # The state machine has no cycles and every non-final state sits at a fixed place
        # on its one path, so a step's number follows from the state it leaves: no count
        # of the transfer's earlier steps is needed (the primary key still refuses a
        # step recorded twice).
        seq = 0 if previous is None else _CHAIN_SEQ[previous] + 1
        session.info.setdefault(_ENTERED, []).append(
            (transfer_id, seq, TransferStep(state, at, reason))
        )
        # Deferred, not an ORM object: see db.defer_insert.  The transfer row it refers to
        # is written before it (see transfer_rows).
        defer_insert(
            session,
            _STEPS,
            {
                "transfer_id": transfer_id,
                "seq": seq,
                "state": state.value,
                "reason": reason,
                "at": at,
            },
        )

    # ---------------------------------------------------------------------------- driving

    def _claim_many(self, transfer_ids: Sequence[str]) -> dict[str, TransferRow]:
        """Take (or renew) the lease on transfers no other live gateway holds.

        Returns:
            The claimed transfers, as read in the claiming transaction (detached copies
            the round plans from; every step re-reads its row locked before recording).
        """
        if not transfer_ids:
            return {}
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            session.execute(
                sa.update(TransferRecord)
                .where(
                    TransferRecord.id.in_(transfer_ids),
                    sa.or_(
                        TransferRecord.lease_owner == self._owner,
                        TransferRecord.lease_expires_at.is_(None),
                        TransferRecord.lease_expires_at < now,
                    ),
                )
                .values(lease_owner=self._owner, lease_expires_at=now + self._lease)
                .execution_options(synchronize_session=False)
            )
            return {
                r.id: r
                for r in transfer_rows.read(session, transfer_ids)
                if r.lease_owner == self._owner
            }

    def _load(self, session: Session, transfer_id: str, *expected: TransferState) -> TransferRow:
        """The transfer row, locked; with ``expected``, only if it is still in one of them.

        Raises:
            _StaleStep: Another driver moved the transfer on meanwhile; the step's outcome
                is already recorded and must not be recorded twice.
        """
        # Taken as the transaction holds it when it already read and locked it (see
        # _lock_rows) or inserted it.
        record = plain_rows.held(session, TransferRow, transfer_id)
        if record is None:
            record = transfer_rows.lock(session, [transfer_id]).get(transfer_id)
        if record is None:
            raise NotFound(f"transfers/{transfer_id}")
        if expected and TransferState(record.state) not in expected:
            raise _StaleStep(f"transfers/{transfer_id} is already {record.state}")
        return record

    def drive(self, transfer_id: str) -> TransferState:
        """Advance one transfer as far as the registries let it go now; its state then."""
        return self.drive_many([transfer_id])[transfer_id]

    def drive_many(self, transfer_ids: Sequence[str]) -> dict[str, TransferState]:
        """Advance transfers together, one state at a time, grouping database work per step.

        Each round makes the registry calls of every transfer in the same state (batched
        per registry) and records all their outcomes in one transaction; if one transfer
        meets a conflict there, the group is recorded again with a savepoint per transfer,
        so one transfer's conflict never undoes another's progress (see ``_commit_all``).
        A transient registry failure leaves a transfer where it is (the recovery loop
        resumes it); a transfer another thread of this gateway is driving, or another
        gateway holds the lease of, is left alone.

        Returns:
            The state each transfer reached.
        """
        with self._driving_lock:
            mine = [t for t in dict.fromkeys(transfer_ids) if t not in self._driving]
            self._driving.update(mine)
        reached: dict[str, TransferRow] = {}
        try:
            parts = [mine[i : i + _PIPELINE_PART] for i in range(0, len(mine), _PIPELINE_PART)]
            if len(parts) == 1:
                reached = self._claim_and_drive(mine)
            else:
                # While one part waits for the registries, another records its step:
                # the gateway's work and the registries' overlap instead of alternating.
                running = [self._parts.submit(self._claim_and_drive, p) for p in parts]
                for part in running:
                    reached.update(part.result())
        finally:
            self._let_go(mine, reached)
        states = {t: TransferState(r.state) for t, r in reached.items()}
        others = [t for t in dict.fromkeys(transfer_ids) if t not in states]
        if others:
            with unit_of_work(self._sessions) as session:
                states.update(
                    (row.id, TransferState(row.state))
                    for row in session.execute(
                        sa.select(TransferRecord.id, TransferRecord.state).where(
                            TransferRecord.id.in_(others)
                        )
                    )
                )
        missing = [t for t in transfer_ids if t not in states]
        if missing:
            raise NotFound(f"transfers/{missing[0]}")
        return {t: states[t] for t in transfer_ids}

    def _claim_and_drive(self, transfer_ids: list[str]) -> dict[str, TransferRow]:
        """Drive the transfers this gateway can claim; the last row seen of each."""
        return self._drive_rounds(transfer_ids, self._claim_many(transfer_ids))

    def _let_go(self, transfer_ids: Sequence[str], reached: Mapping[str, TransferRow]) -> None:
        """Stop driving transfers: give up the lease of those left unfinished.

        A lease is held only while a transfer is being driven, so one left waiting for a
        registry is free for the recovery loop (of any gateway) to resume at once.  A
        transfer that ended gave its lease up in the step that ended it.
        """
        try:
            unfinished = [
                t
                for t in transfer_ids
                if t not in reached or not TransferState(reached[t].state).is_final
            ]
            if unfinished:
                with unit_of_work(self._sessions) as session:
                    session.execute(
                        sa.update(TransferRecord)
                        .where(
                            TransferRecord.id.in_(unfinished),
                            TransferRecord.lease_owner == self._owner,
                        )
                        .values(lease_owner="", lease_expires_at=None)
                        .execution_options(synchronize_session=False)
                    )
        finally:
            with self._driving_lock:
                self._driving.difference_update(transfer_ids)

    def _drive_rounds(
        self, transfer_ids: list[str], snapshots: Mapping[str, TransferRow]
    ) -> dict[str, TransferRow]:
        """Drive claimed transfers (``snapshots``: their rows) round after round.

        Returns:
            The last row seen of each transfer this gateway still held when it stopped.
        """
        conflicts: dict[str, int] = {}
        reached: dict[str, TransferRow] = dict(snapshots)
        active = [t for t in transfer_ids if t in snapshots]
        while active:
            groups: dict[TransferState, list[str]] = {}
            for transfer_id in active:
                state = TransferState(reached[transfer_id].state)
                if not state.is_final:
                    groups.setdefault(state, []).append(transfer_id)
            moving = [t for group in groups.values() for t in group]
            # Each step's transaction renews the lease of the transfers it moves (a gateway
            # that dies stops renewing, and another takes them over once it runs out) and
            # hands back their rows for the next round; others are claimed afresh.
            fresh: dict[str, TransferRow] = {}
            reclaim: list[str] = []
            for state, group in groups.items():
                progressed, conflicted, renewed = self._round(state, group, reached)
                fresh.update(renewed)
                reclaim.extend(t for t in progressed if t not in renewed)
                for transfer_id in conflicted:
                    conflicts[transfer_id] = conflicts.get(transfer_id, 0) + 1
                    if conflicts[transfer_id] <= _MAX_CONFLICT_RETRIES:
                        reclaim.append(transfer_id)
            fresh.update(self._claim_many(reclaim))
            for transfer_id in moving:
                if transfer_id not in fresh:
                    reached.pop(transfer_id, None)  # no longer ours: another driver has it
            reached.update(fresh)
            active = [t for t in moving if t in fresh]
        return reached

    def _entered(self, entered: Sequence[_Entered]) -> None:
        """Tell the watchers, the on_state hook and the _settle running here of steps just
        committed.

        Every transaction that records a step calls it once committed, with the steps it
        recorded (less those a savepoint undid), and only then: what is told here is never
        rolled back.
        """
        # First: a hook that raises must not keep a watcher from a step that is committed.
        self._changes.announce(transfer_id for transfer_id, _, _ in entered)
        settled = _SETTLED_STEPS.get()
        for transfer_id, seq, step in entered:
            if settled is not None:
                settled.setdefault(transfer_id, []).append((seq, step))
            if self._on_state is not None:
                self._on_state(transfer_id, step.state)

    def _round(
        self, state: TransferState, group: list[str], snapshots: Mapping[str, TransferRow]
    ) -> tuple[list[str], list[str], dict[str, TransferRow]]:
        """One step for every transfer of ``group`` (all in ``state``).

        Returns the transfers that moved on, those that met a concurrent change, and the
        rows (lease renewed) of those of the first this gateway still drives.
        """
        if state is TransferState.PROPOSED:
            # Checking claims source rows, and a batch's parts often split the same one:
            # run side by side they would only meet as conflicts and redo their work.
            with self._checking:
                return self._commit_all(group, {t: None for t in group}, self._check_in)
        if state is TransferState.SOURCE_FINALIZED:
            return self._commit_all(group, {t: None for t in group}, self._complete_in)
        plan, verdict_of, commit = {
            TransferState.CHECKED: (self._lock_plan, self._lock_verdict, self._lock_commit),
            TransferState.SOURCE_LOCKED: (
                self._credit_plan,
                self._credit_verdict,
                self._credit_commit,
            ),
            TransferState.DESTINATION_CREDITED: (
                self._finalize_plan,
                self._finalize_verdict,
                self._finalize_commit,
            ),
        }[state]
        planned: dict[str, list[_Leg]] = {}
        early: dict[str, tuple[str, Any]] = {}
        for transfer_id in group:
            legs = plan(snapshots[transfer_id])
            if isinstance(legs, tuple):
                early[transfer_id] = legs
            else:
                planned[transfer_id] = legs
        # A step's locks (and its finalizations) are independent of each other: they go
        # out together.  A venue's credit and its origin's follow one another.
        leg_outcomes = self._run_legs(planned, in_order=state is TransferState.SOURCE_LOCKED)
        outcomes = [
            early[t] if t in early else verdict_of(snapshots[t], planned[t], leg_outcomes[t])
            for t in group
        ]
        done: dict[str, Any] = {}
        moved: list[str] = []
        ended: dict[str, TransferRow] = {}
        for transfer_id, (verdict, payload) in zip(group, outcomes, strict=True):
            if verdict == "ok":
                done[transfer_id] = payload
            elif verdict == "rollback":
                rolled_back = self._roll_back(transfer_id, str(payload))
                moved.append(transfer_id)
                if rolled_back is not None:
                    ended[transfer_id] = rolled_back
            else:
                self._note(transfer_id, f"waiting for a registry: {payload}")
                _logger.warning(
                    "transfer_waiting", transfer=transfer_id, state=state.value, error=str(payload)
                )
        progressed, conflicted, renewed = self._commit_all(list(done), done, commit)
        return moved + progressed, conflicted, renewed | ended

    def _commit_all(
        self,
        transfer_ids: list[str],
        payloads: Mapping[str, Any],
        commit: Callable[[Session, str, Any, datetime], None],
    ) -> tuple[list[str], list[str], dict[str, TransferRow]]:
        """Record many step outcomes in one transaction.

        Conflicts are rare, so the whole group is first recorded without savepoints (each
        costs a write of the rows so far and two statements per transfer); if any transfer
        meets a conflict, that transaction is rolled back and the group recorded again with
        a savepoint per transfer, so one transfer's conflict never undoes another's progress.
        """
        if not transfer_ids:
            return [], [], {}
        try:
            return self._commit_group(transfer_ids, payloads, commit, isolated=False)
        except _GroupConflict:
            return self._commit_group(transfer_ids, payloads, commit, isolated=True)

    def _commit_group(
        self,
        transfer_ids: list[str],
        payloads: Mapping[str, Any],
        commit: Callable[[Session, str, Any, datetime], None],
        *,
        isolated: bool,
    ) -> tuple[list[str], list[str], dict[str, TransferRow]]:
        progressed: list[str] = []
        conflicted: list[str] = []
        renewed: dict[str, TransferRow] = {}
        entered: list[_Entered] = []
        now = self._clock()
        try:
            with unit_of_work(self._sessions) as session, read_scope(session):
                session.info[_ENTERED] = entered
                if not isolated:
                    # A savepoint's rollback would leave its unwritten rows behind in the
                    # ledger's index of new rows: isolated groups write claims at once.
                    ledger.defer_claims(session)
                locked = self._lock_rows(session, transfer_ids)
                if commit == self._finalize_commit:
                    # The rows the group's transfers locked, read (and on PostgreSQL
                    # locked) in one query rather than one per transfer.
                    ledger.lock_rows_by_id(
                        session, [i for r in locked.values() for i in _locked_rows(r.plan)]
                    )
                for transfer_id in transfer_ids:
                    try:
                        if isolated:
                            with savepoint(session):
                                commit(session, transfer_id, payloads[transfer_id], now)
                        else:
                            # _StaleStep is raised before a commit function changes
                            # anything, so it needs no savepoint to undo.
                            commit(session, transfer_id, payloads[transfer_id], now)
                        progressed.append(transfer_id)
                    except _StaleStep:
                        progressed.append(transfer_id)
                    except (LedgerConflict, sa.exc.IntegrityError) as exc:
                        if isinstance(exc, sa.exc.IntegrityError) and not (
                            ledger.is_claim_conflict(exc)
                        ):
                            raise
                        if not isolated:
                            raise _GroupConflict from exc
                        _logger.info("transfer_step_conflict", transfer=transfer_id, error=str(exc))
                        conflicted.append(transfer_id)
                for transfer_id in progressed:
                    record = locked[transfer_id]  # reloaded if a savepoint expired it
                    if TransferState(record.state).is_final:
                        renewed[transfer_id] = record  # done: only reported, never driven
                    elif record.lease_owner == self._owner:
                        renewed[transfer_id] = record
                    # else taken over (our lease ran out): no longer ours to drive
        except sa.exc.IntegrityError as exc:
            # The group's new rows are written at commit (ledger.defer_claims): a
            # concurrent gateway's claim of the same serials is refused there.
            if isolated or not ledger.is_claim_conflict(exc):
                raise
            raise _GroupConflict from exc
        undone = set(conflicted)
        self._entered([e for e in entered if e[0] not in undone])
        return progressed, conflicted, renewed

    @staticmethod
    def _lock_rows(session: Session, transfer_ids: Sequence[str]) -> dict[str, TransferRow]:
        """Read and lock many transfer rows at once, for ``_load`` to reuse."""
        return transfer_rows.lock(session, transfer_ids)

    def _note(self, transfer_id: str, reason: str) -> None:
        with unit_of_work(self._sessions) as session:
            record = self._load(session, transfer_id)
            record.failure_reason = reason
            record.updated_at = self._clock()

    def _advance(
        self, session: Session, record: TransferRow, state: TransferState, reason: str = ""
    ) -> None:
        now = self._clock()
        previous = TransferState(record.state)
        record.state = state.value
        record.updated_at = now
        if state.is_final:
            # Nothing is left to drive: the lease is given up with the step that ends it.
            record.lease_owner = ""
            record.lease_expires_at = None
        elif record.lease_owner == self._owner:
            # The step renews the lease of the gateway driving it (one UPDATE writes both).
            record.lease_expires_at = now + self._lease
        if state.is_final or reason:
            record.failure_reason = reason
        elif record.failure_reason.startswith("waiting for a registry"):
            record.failure_reason = ""
        self._step(session, record.id, state, now, reason, previous)
        append_event(
            session,
            "transfer_state",
            {"transfer": record.id, "state": state.value, "reason": reason},
            now,
            record.id,
        )

    def _check_in(self, session: Session, transfer_id: str, _: Any, now: datetime) -> None:
        """PROPOSED -> CHECKED (units claimed in the ledger) or REJECTED, in the caller's tx."""
        record = self._load(session, transfer_id, TransferState.PROPOSED)
        instruction = _instruction_from_json(record.instruction)
        try:
            kind, pieces, rows, known = self._plan(session, instruction)
        except FailedPrecondition as exc:
            decision = RulesDecision(allowed=False, violations=_ledger_violations(exc))
            record.decision = _decision_json(decision)
            self._advance(session, record, TransferState.REJECTED, str(exc))
            return
        decision = self._with_held(
            self._rules.check_transfer(
                TransferCheck(instruction, kind, tuple(p.block for p in pieces), tuple(known), now)
            ),
            self.held_violations(session, _piece_blocks(pieces)),
        )
        record.decision = _decision_json(decision)
        if not decision.allowed:
            self._advance(
                session,
                record,
                TransferState.REJECTED,
                "; ".join(f"{v.rule_id}: {v.message}" for v in decision.violations),
            )
            return
        expires = now + self._lock_ttl
        locked_rows: list[int] = []
        # Claim the units in the ledger in the same transaction as CHECKED: of two
        # transfers racing for the same units, exactly one gets here.
        for piece in pieces:
            # Each piece lies inside one source row; an earlier piece may have split that
            # row, so its current row is read afresh (the rows _plan read may be gone).
            candidates = (
                rows
                if piece is pieces[0]
                else ledger.live_at(
                    session,
                    instruction.source.registry,
                    instruction.source.account,
                    piece.source_block,
                )
            )
            holder = next(r for r in candidates if r.block.id.overlaps(piece.source_block))
            carved = ledger.carve(session, holder, piece.source_block, now, transfer_id)
            locked_rows.append(carved.row_id)
            ledger.change(
                session,
                carved,
                "lock",
                now,
                status=HoldingStatus.LOCKED,
                lock_transfer_id=transfer_id,
                lock_expires_at=expires,
                transfer_id=transfer_id,
            )
        record.kind = kind.value
        record.plan = json.dumps(
            {"pieces": [p.to_json() for p in pieces], "credited": [], "locked_rows": locked_rows},
            sort_keys=True,
        )
        _PLANS.remember(record.plan, _ParsedPlan(tuple(pieces), tuple(locked_rows)))
        record.lock_expires_at = expires
        self._advance(session, record, TransferState.CHECKED)

    @staticmethod
    def _pieces(record: TransferRow) -> tuple[_Piece, ...]:
        return _plan_pieces(record.plan)

    def _port(self, registry: str) -> RegistryPort:
        port = self._registries.get(registry)
        if port is None:
            raise RegistryUnavailable(registry, "not wired in this gateway")
        return port

    def _lock_legs(self, record: TransferRow) -> Iterator[tuple[str, str, str, BlockId]]:
        """(operation id, registry, account, block) of every registry lock of a transfer."""
        for i, piece in enumerate(self._pieces(record)):
            yield (
                f"{record.id}:lock:{i}",
                record.source_registry,
                record.source_account,
                piece.source_block,
            )
            if record.kind == TransferKind.BRIDGE_OUT and record.source_registry in CUSTODY_VENUES:
                origin_registry = ORIGIN_REGISTRY[piece.origin_block.program]
                yield (
                    f"{record.id}:lock-origin:{i}",
                    origin_registry,
                    piece.origin_account,
                    piece.origin_block,
                )

    def _lock_plan(self, record: TransferRow) -> list[_Leg] | tuple[str, Any]:
        """Lock the units at the source (and, for a venue, at the origin registry)."""
        expires = record.lock_expires_at
        if expires is None or self._clock() >= expires:
            return "rollback", "the source lock expired before the units were locked"
        return [
            _Leg(
                registry,
                LockRequest(
                    operation_id, account, block, expires + self._registry_lock_grace, record.id
                ),
            )
            for operation_id, registry, account, block in self._lock_legs(record)
        ]

    @staticmethod
    def _lock_verdict(
        record: TransferRow, legs: Sequence[_Leg], outcomes: Sequence[_LegOutcome]
    ) -> tuple[str, Any]:
        failure = _first_failure(outcomes)
        if isinstance(failure, RegistryRejected):
            return "rollback", f"lock refused: {failure}"
        if isinstance(failure, RegistryUnavailable):
            return "wait", failure
        return "ok", None

    def _lock_commit(self, session: Session, transfer_id: str, _: Any, now: datetime) -> None:
        record = self._load(session, transfer_id, TransferState.CHECKED)
        self._advance(session, record, TransferState.SOURCE_LOCKED)

    def _credit_plan(self, record: TransferRow) -> list[_Leg]:
        """Credit the destination; the lock's expiry is the registry's deadline for it.

        Only the first credit has the lock's expiry as its deadline.  The legs run in
        order and stop at the first that fails, so a later leg goes out only once the
        first is applied, and from then on the transfer can no longer roll back (see
        ``_credit_verdict``): the rest of its credits must land even past the gateway's
        expiry, or a gateway back after a crash (or a destination back after an outage)
        past it would find them refused and the transfer stuck half credited.  Their
        deadline is the registries' lock instead, which holds the source units until
        then.
        """
        kind = TransferKind(record.kind)
        expires = record.lock_expires_at
        later = None if expires is None else expires + self._registry_lock_grace
        legs: list[_Leg] = []
        for i, piece in enumerate(self._pieces(record)):
            origin_registry = ORIGIN_REGISTRY[piece.origin_block.program]
            legs.append(
                _Leg(
                    record.destination_registry,
                    CreditRequest(
                        f"{record.id}:credit:{i}",
                        record.destination_account,
                        piece.block,
                        origin_registry,
                        record.id,
                        expires if not legs else later,
                    ),
                    piece=i,
                )
            )
            if kind is TransferKind.RETURN and record.destination_registry in CUSTODY_VENUES:
                legs.append(
                    _Leg(
                        origin_registry,
                        CreditRequest(
                            f"{record.id}:credit-origin:{i}",
                            venue_account(record.destination_registry),
                            piece.block,
                            origin_registry,
                            record.id,
                            later,
                        ),
                        piece=i,
                        follows=True,
                    )
                )
        return legs

    def _credit_verdict(
        self, record: TransferRow, legs: Sequence[_Leg], outcomes: Sequence[_LegOutcome]
    ) -> tuple[str, Any]:
        pieces = self._pieces(record)
        credited: list[tuple[_Piece, UnitBlock]] = []
        destination_block: UnitBlock | None = None
        for index, outcome in enumerate(outcomes):
            leg = legs[index]
            if isinstance(outcome, RegistryRejected):
                if index:
                    # An earlier leg was credited (a piece of a multi-block transfer, or
                    # a venue's credit before its origin's): the rest must follow, so the
                    # transfer waits.  Rolling back would unlock the source while the
                    # credited units stay at the destination: counted twice.
                    return "wait", f"credit refused after a partial credit: {outcome}"
                if outcome.code == ACCOUNT_NOT_OPEN:
                    # Said in the client's terms: the account it named does not exist there.
                    return "rollback", (
                        f"credit refused: the destination account {record.destination_account!r} "
                        f"is not open at registry {record.destination_registry} ({outcome.code})"
                    )
                return "rollback", f"credit refused: {outcome}"
            if isinstance(outcome, RegistryUnavailable):
                return "wait", outcome
            if not leg.follows:
                destination_block = outcome.block
            last_of_piece = index + 1 == len(legs) or legs[index + 1].piece != leg.piece
            if last_of_piece and destination_block is not None:
                credited.append((pieces[leg.piece], destination_block))
        return "ok", credited

    def _credit_commit(
        self,
        session: Session,
        transfer_id: str,
        credited: list[tuple[_Piece, UnitBlock]],
        now: datetime,
    ) -> None:
        record = self._load(session, transfer_id, TransferState.SOURCE_LOCKED)
        kind = TransferKind(record.kind)
        for piece, block in credited:
            if kind is TransferKind.BRIDGE_OUT:
                ledger.add_mirror(
                    session,
                    record.destination_registry,
                    record.destination_account,
                    block,
                    piece.origin_block,
                    now,
                    transfer_id,
                )
            else:
                for origin_row in ledger.origin_rows(session, piece.origin_block):
                    carved = ledger.carve(session, origin_row, piece.origin_block, now, transfer_id)
                    ledger.change(
                        session,
                        carved,
                        "credit",
                        now,
                        status=HoldingStatus.ACTIVE,
                        registry=record.destination_registry,
                        account=record.destination_account,
                        transfer_id=transfer_id,
                    )
        parsed = _PLANS.get(record.plan)
        plan = json.loads(record.plan)
        plan["credited"] = [block_to_json(b) for _, b in credited]
        record.plan = json.dumps(plan, sort_keys=True)
        _PLANS.remember(record.plan, parsed)  # the credited blocks change neither part
        self._advance(session, record, TransferState.DESTINATION_CREDITED)

    def _finalize_plan(self, record: TransferRow) -> list[_Leg]:
        """Immobilize (at the origin) or export (venue position, returning mirror)."""
        kind = TransferKind(record.kind)
        legs: list[_Leg] = []
        for i, piece in enumerate(self._pieces(record)):
            origin_registry = ORIGIN_REGISTRY[piece.origin_block.program]
            at_origin = record.source_registry == origin_registry
            disposition = (
                FinalizeDisposition.IMMOBILIZE
                if kind is TransferKind.BRIDGE_OUT and at_origin
                else FinalizeDisposition.EXPORT
            )
            legs.append(
                _Leg(
                    record.source_registry,
                    FinalizeRequest(
                        f"{record.id}:finalize:{i}",
                        record.source_account,
                        piece.source_block,
                        disposition,
                        record.id,
                        record.destination_registry,
                    ),
                    piece=i,
                )
            )
            if kind is TransferKind.BRIDGE_OUT and not at_origin:
                legs.append(
                    _Leg(
                        origin_registry,
                        FinalizeRequest(
                            f"{record.id}:finalize-origin:{i}",
                            piece.origin_account,
                            piece.origin_block,
                            FinalizeDisposition.IMMOBILIZE,
                            record.id,
                            record.destination_registry,
                        ),
                        piece=i,
                        follows=True,
                    )
                )
        return legs

    @staticmethod
    def _finalize_verdict(
        record: TransferRow, legs: Sequence[_Leg], outcomes: Sequence[_LegOutcome]
    ) -> tuple[str, Any]:
        failure = _first_failure(outcomes)
        if isinstance(failure, RegistryRejected):
            # After DESTINATION_CREDITED a transfer only rolls forward: keep retrying.
            _logger.error("finalize_refused", transfer=record.id, error=str(failure))
            return "wait", f"finalize refused: {failure}"
        if isinstance(failure, RegistryUnavailable):
            return "wait", failure
        return "ok", None

    def _run_legs(
        self, planned: Mapping[str, Sequence[_Leg]], *, in_order: bool
    ) -> dict[str, list[_LegOutcome]]:
        """Make every transfer's registry calls, batched across transfers.

        ``in_order``: a transfer's legs run one after another and it stops at its first
        leg that fails, exactly as if it were alone.  Otherwise its legs are independent
        and all go out at once.  Either way, the legs due at the same moment go to each
        registry as one batch call (calls to different registries run side by side), so
        a batch of transfers costs a few calls per registry rather than a few per transfer.

        Returns:
            Per transfer, the outcome of each leg that ran, in the order of its legs.
        """
        ran: dict[str, dict[int, _LegOutcome]] = {t: {} for t in planned}
        waves = max((len(legs) for legs in planned.values()), default=0) if in_order else 1
        for wave in range(waves):
            due: list[tuple[str, int, _Leg]] = []
            for transfer_id, legs in planned.items():
                if _first_failure(list(ran[transfer_id].values())) is not None:
                    continue  # stopped at a failed leg
                indexes = range(wave, min(wave + 1, len(legs))) if in_order else range(len(legs))
                due.extend((transfer_id, index, legs[index]) for index in indexes)
            if not due:
                break
            calls: dict[tuple[str, type], list[tuple[str, int, _Leg]]] = {}
            for item in due:
                leg = item[2]
                calls.setdefault((leg.registry, type(leg.request)), []).append(item)
            batches = list(calls.values())
            answers = (
                [self._call_batch(batches[0])]
                if len(batches) == 1
                else list(self._pool.map(self._call_batch, batches))
            )
            for batch, answer in zip(batches, answers, strict=True):
                for (transfer_id, index, _), outcome in zip(batch, answer, strict=True):
                    ran[transfer_id][index] = outcome
        return {t: [outcomes[i] for i in sorted(outcomes)] for t, outcomes in ran.items()}

    def _call_batch(self, batch: Sequence[tuple[str, int, _Leg]]) -> list[_LegOutcome]:
        """One batch call to one registry; a failure of the call is every item's outcome."""
        registry = batch[0][2].registry
        requests = [leg.request for _, _, leg in batch]
        answer: Sequence[RegistryHolding | RegistryRejected]
        try:
            port = self._port(registry)
            if len(requests) == 1:
                # One item (a single transfer's leg): the plain call, which every registry
                # answers faster than a batch of one.  Its refusal is the item's outcome.
                return [self._call_one(port, requests[0])]
            if isinstance(requests[0], LockRequest):
                answer = port.lock_many([r for r in requests if isinstance(r, LockRequest)])
            elif isinstance(requests[0], CreditRequest):
                answer = port.credit_many([r for r in requests if isinstance(r, CreditRequest)])
            else:
                answer = port.finalize_many([r for r in requests if isinstance(r, FinalizeRequest)])
        except (RegistryRejected, RegistryUnavailable) as exc:
            return [exc for _ in batch]
        if len(answer) != len(batch):
            failure = RegistryUnavailable(
                registry, f"answered {len(answer)} results for {len(batch)} requests"
            )
            return [failure for _ in batch]
        return list(answer)

    @staticmethod
    def _call_one(
        port: RegistryPort, request: LockRequest | CreditRequest | FinalizeRequest
    ) -> _LegOutcome:
        try:
            if isinstance(request, LockRequest):
                return port.lock(request)
            if isinstance(request, CreditRequest):
                return port.credit(request)
            return port.finalize(request)
        except (RegistryRejected, RegistryUnavailable) as exc:
            return exc

    def _finalize_commit(self, session: Session, transfer_id: str, _: Any, now: datetime) -> None:
        record = self._load(session, transfer_id, TransferState.DESTINATION_CREDITED)
        kind = TransferKind(record.kind)
        held = ledger.live_rows_by_id(session, _locked_rows(record.plan))
        for piece in self._pieces(record):
            for row in self._locked_over(session, record, piece, held):
                if kind is TransferKind.BRIDGE_OUT:
                    ledger.change(
                        session,
                        row,
                        "finalize",
                        now,
                        status=HoldingStatus.BRIDGED,
                        registry=ORIGIN_REGISTRY[piece.origin_block.program],
                        account=piece.origin_account,
                        transfer_id=transfer_id,
                    )
                else:
                    ledger.end_mirror(session, row, now, transfer_id)
        self._advance(session, record, TransferState.SOURCE_FINALIZED)
        # Completing asks nothing of a registry: recorded in the same transaction.
        self._complete(session, record)

    @staticmethod
    def _locked_over(
        session: Session,
        record: TransferRow,
        piece: _Piece,
        held: Sequence[LedgerHolding],
    ) -> list[LedgerHolding]:
        """The live rows of the transfer's source that it locked over ``piece``.

        ``held``: the live rows among those its plan says it locked (read for the whole
        group at once).  When those of them inside the piece add up to the piece, they
        are all there is (live rows never overlap): no lookup is needed.  Otherwise (a
        plan older than the field, or rows changed since) the ledger is asked.
        """
        mine = sorted(
            (
                h
                for h in held
                if h.lock_transfer_id == record.id
                and h.registry == record.source_registry
                and h.account == record.source_account
                and piece.source_block.contains(h.block.id)
            ),
            key=lambda h: h.block.id.serial_start,
        )
        if sum(h.block.quantity for h in mine) == piece.source_block.quantity:
            return mine
        return ledger.locked_by(
            session, record.source_registry, record.source_account, piece.source_block, record.id
        )

    def _complete_in(self, session: Session, transfer_id: str, _: Any, now: datetime) -> None:
        """SOURCE_FINALIZED -> COMPLETED, for a transfer a crash left finalized."""
        self._complete(session, self._load(session, transfer_id, TransferState.SOURCE_FINALIZED))

    def _complete(self, session: Session, record: TransferRow) -> None:
        self._advance(session, record, TransferState.COMPLETED)

    def _roll_back(self, transfer_id: str, reason: str) -> TransferRow | None:
        """Undo a transfer that has not reached DESTINATION_CREDITED: unlock everything.

        Returns:
            The transfer's row, rolled back; None when another driver moved it on first.
        """
        with unit_of_work(self._sessions) as session:
            record = self._load(session, transfer_id)
            state = TransferState(record.state)
            if state not in (TransferState.CHECKED, TransferState.SOURCE_LOCKED):
                _logger.info("rollback_not_needed", transfer=transfer_id, state=state.value)
                return None
            legs = list(self._lock_legs(record))
        for operation_id, registry, account, block in legs:
            try:
                self._port(registry).unlock(
                    UnlockRequest(f"{operation_id}:unlock", account, block, transfer_id)
                )
            except RegistryRejected as exc:
                # A lock that never took (or already expired) has nothing to release.
                _logger.info(
                    "unlock_not_needed", transfer=transfer_id, registry=registry, reason=str(exc)
                )
        now = self._clock()
        entered: list[_Entered] = []
        try:
            with unit_of_work(self._sessions) as session:
                session.info[_ENTERED] = entered
                record = self._load(
                    session, transfer_id, TransferState.CHECKED, TransferState.SOURCE_LOCKED
                )
                for piece in self._pieces(record):
                    _unlock(
                        session,
                        ledger.locked_by(
                            session,
                            record.source_registry,
                            record.source_account,
                            piece.source_block,
                            transfer_id,
                        ),
                        transfer_id,
                        now,
                        reason,
                    )
                self._advance(session, record, TransferState.ROLLED_BACK, reason)
        except _StaleStep:
            return None  # another driver resolved it meanwhile
        self._entered(entered)
        return record

    def resume_unfinished(self) -> dict[str, TransferState]:
        """Drive every unfinished transfer this gateway can claim; returns where each ended.

        Run at start-up and periodically: a transfer stuck before DESTINATION_CREDITED
        whose lock expired rolls back; one past it rolls forward.
        """
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            # Only transfers nobody is driving: a leased one is in a live driver's hands
            # (for example one just proposed, about to be driven by its submitter).
            pending = list(
                session.execute(
                    sa.select(TransferRecord.id, TransferRecord.state).where(
                        TransferRecord.state.in_(UNFINISHED_TRANSFER_STATES),
                        sa.or_(
                            TransferRecord.lease_expires_at.is_(None),
                            TransferRecord.lease_expires_at < now,
                        ),
                    )
                ).all()
            )
        # A SOURCE_LOCKED transfer past its expiry resends its credit with the lock's expiry
        # as deadline: the registry answers a credit it applied before a crash (roll
        # forward) and refuses a late one (roll back).
        return self.drive_many([transfer_id for transfer_id, _ in pending])

    def import_registry(self, registry_id: str) -> int:
        """Record in the ledger the units a registry issued that the ledger does not know.

        Units are issued at their registries; the gateway learns of them here (at start-up
        and every import interval), one ``issuance`` event per block, in the status the
        registry shows: active, or retired, cancelled or surrendered before the gateway
        knew them (the ledger must know those serials too, or it would take them for
        unissued and reconcile would count them as missing).  Blocks locked or exported at
        the registry are left until they settle.  Origin units a custody venue holds are
        recorded at the venue, not in the venue's account at the origin registry, so no
        unit is counted twice.  Returns how many blocks were recorded.

        Raises:
            RegistryUnavailable: The registry cannot be reached.
        """
        holdings = self._port(registry_id).list_holdings(ListHoldingsRequest())
        recorded = 0
        now = self._clock()
        # Holdings seen at an earlier look are known or were recorded then: each look
        # checks only what changed since, and reads the ledger for those in one snapshot.
        seen = self._imported.setdefault(registry_id, set())
        fresh: list[RegistryHolding] = []
        for holding in holdings:
            if holding.status not in _IMPORTED_STATUSES or holding.mirror_of is not None:
                continue
            origin_registry = ORIGIN_REGISTRY[holding.block.program]
            if registry_id == origin_registry and holding.account.startswith("venue-"):
                continue
            if registry_id != origin_registry and registry_id not in CUSTODY_VENUES:
                continue
            key = (holding.account, holding.block.id, holding.status)
            if key not in seen:
                fresh.append(holding)
        with read_only(self._sessions) as session:
            unknown = [
                h
                for h in fresh
                if not (
                    ledger.origin_rows(session, h.block.id)
                    or ledger.mirrors_of(session, h.block.id)
                )
            ]
        for holding in unknown:
            try:
                # Checked again in the transaction that records it: another gateway may
                # have recorded it since the snapshot.
                with unit_of_work(self._sessions) as session:
                    if ledger.origin_rows(session, holding.block.id) or ledger.mirrors_of(
                        session, holding.block.id
                    ):
                        continue
                    ledger.issue(
                        session, registry_id, holding.account, holding.block, now, holding.status
                    )
                    recorded += 1
            except LedgerConflict:
                # Another gateway recorded the same issuance first.
                continue
        seen.update((h.account, h.block.id, h.status) for h in fresh)
        return recorded

    # ------------------------------------------------------------------------ final uses

    def use(self, request_id: str, request: UseRequest, *, caller: str = LOCAL_CALLER) -> UnitUse:
        """Retire or surrender units: at their registry and, for a mirror, at its origin.

        The caller's request id with the same request returns the caller's first use;
        another caller's request under the same id is another request.

        Args:
            request_id: The caller's id of the request.
            request: What to retire or surrender.
            caller: Whose request-id space ``request_id`` is in.

        Raises:
            InvalidRequest: The request is malformed.
            RequestIdConflict: The caller used the request id for another request.
            FailedPrecondition: The units are not held active by the account, or the rules
                refuse the use (the violations say why).
        """
        self._validate_use(request_id, request)
        digest = body_digest(request.canonical())
        give_up_at = time.monotonic() + _USE_START_PATIENCE_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                use_id = self._start_or_find_use(caller, request_id, request, digest)
                break
            except LedgerConflict:
                # Another writer changed a row this use reads (a concurrent retirement of
                # another part of the same holding): nothing was kept, so it starts again
                # on the rows as they are now.
                if time.monotonic() >= give_up_at:
                    raise
                time.sleep(random.uniform(0, min(0.1, 0.01 * attempt)))
        self._finish_use(use_id)
        use = self.get_use(use_id)
        if use.state in _REFUSED_USE_STATES:
            # Another driver (the recovery loop) ended it refused meanwhile.
            raise self._use_refusal(use_id)
        return use

    def _start_or_find_use(
        self, caller: str, request_id: str, request: UseRequest, digest: bytes
    ) -> str:
        """The use the caller recorded under ``request_id``, or a new one started in one
        transaction."""
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            existing = session.execute(
                sa.select(UnitUseRecord).where(
                    UnitUseRecord.request_id == request_id, UnitUseRecord.caller == caller
                )
            ).scalar_one_or_none()
            if existing is not None:
                if existing.body_sha256 != digest:
                    # Not named, as a transfer is not (see _same_request).
                    raise RequestIdConflict(
                        f"request_id {request_id!r} was already used for a different request; "
                        "use a new request id for a new request"
                    )
                if existing.state in _REFUSED_USE_STATES:
                    raise _refusal_of(existing)
                use_id: str = existing.id
            else:
                use_id = self._start_use(session, caller, request_id, request, digest, now)
        return use_id

    def _validate_use(self, request_id: str, request: UseRequest) -> None:
        problems: list[FieldViolation] = []
        if not request_id:
            problems.append(FieldViolation("request_id", "is required"))
        if request.account.registry not in self._registries:
            problems.append(
                FieldViolation("account.registry", self._not_wired(request.account.registry))
            )
        if not request.account.account:
            problems.append(FieldViolation("account.account", "is required"))
        if not request.units:
            problems.append(FieldViolation("units", "must name at least one block"))
        for i, unit in enumerate(request.units):
            if any(unit.overlaps(other) for other in request.units[i + 1 :]):
                problems.append(FieldViolation(f"units[{i}]", "overlaps another unit selector"))
        if request.kind == "retirement" and not request.beneficiary:
            problems.append(FieldViolation("beneficiary", "is required for a retirement"))
        if request.kind == "surrender":
            if not request.entity_id:
                problems.append(FieldViolation("entity_id", "is required for a surrender"))
            if not 2000 <= request.compliance_year <= 2100:
                problems.append(
                    FieldViolation("compliance_year", "must be a year between 2000 and 2100")
                )
            if not request.jurisdiction:
                problems.append(FieldViolation("jurisdiction", "is required for a surrender"))
        if problems:
            raise InvalidRequest(
                "; ".join(f"{p.field}: {p.description}" for p in problems), problems
            )

    def _start_use(
        self,
        session: Session,
        caller: str,
        request_id: str,
        request: UseRequest,
        digest: bytes,
        now: datetime,
    ) -> str:
        use_id = uuid.uuid4().hex
        if request.kind == "surrender":
            # Every surrender of the entity, whatever its scheme and year, waits here for
            # the one before to commit: under an abandoned migration a year goes to the
            # scheme that claims it first (``covered_entities.claimed_by_the_other``), and
            # a pilot and a national surrender for one year decided side by side would
            # each find it unclaimed.  The entity's row first, as an upsert of the entity
            # takes it before its years', so the two never wait on each other.
            session.get(CoveredEntityRecord, request.entity_id, with_for_update=True)
            # The offset limits count the year's earlier surrenders: two decided side by side
            # would each miss the other's, so the second waits here for the first to commit.
            session.get(
                EntityYearRecord,
                (request.entity_id, request.jurisdiction, request.compliance_year),
                with_for_update=True,
            )
        rows: list[LedgerHolding] = []
        for unit in request.units:
            for row in ledger.require_holding(
                session, request.account.registry, request.account.account, unit
            ):
                rows.append(ledger.carve(session, row, unit, now))
        known: list[LedgerHolding] = []
        for row in rows:
            known.extend(ledger.origin_rows(session, row.origin))
            known.extend(ledger.mirrors_of(session, row.origin))
        decision = self._with_held(
            self._rules.check_use(
                UseCheck(request, tuple(r.block for r in rows), tuple(known), now)
            ),
            self.held_violations(session, [b for r in rows for b in (r.block.id, r.origin)]),
        )
        if not decision.allowed:
            raise FailedPrecondition(
                f"the {request.kind} is refused: "
                + "; ".join(f"{v.rule_id}: {v.message}" for v in decision.violations),
                [PreconditionViolation("RULE", v.rule_id, v.message) for v in decision.violations],
            )
        # The origin's legs go first: the origin registry is where a unit used behind
        # the gateway's back (retired at Verra by its account holder) shows, and a refusal
        # of the first leg leaves nothing of the use done anywhere (see _finish_use).
        legs: list[dict[str, Any]] = []
        origin_legs: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            ledger.change(
                session,
                row,
                "lock",
                now,
                status=HoldingStatus.LOCKED,
                lock_transfer_id=use_id,
                transfer_id=use_id,
            )
            legs.append(
                {
                    "op": f"{use_id}:{i}",
                    "registry": row.registry,
                    "account": row.account,
                    "block": block_id_to_dict(row.block.id),
                    "mirror": row.is_mirror,
                    "origin": block_id_to_dict(row.origin),
                    # What the use took, with its attributes, for every later answer:
                    # the row itself ends (or splits) with the use.
                    "unit": block_to_json(row.block),
                }
            )
            origin_registry = ORIGIN_REGISTRY[row.origin.program]
            if row.registry != origin_registry:
                for j, origin_row in enumerate(ledger.origin_rows(session, row.origin)):
                    o_start = max(origin_row.block.id.serial_start, row.origin.serial_start)
                    o_end = min(origin_row.block.id.serial_end, row.origin.serial_end)
                    origin_account = (
                        venue_account(row.registry)
                        if row.registry in CUSTODY_VENUES and not row.is_mirror
                        else origin_row.account
                    )
                    origin_legs.append(
                        {
                            "op": f"{use_id}:{i}:origin:{j}",
                            "registry": origin_registry,
                            "account": origin_account,
                            "block": block_id_to_dict(
                                BlockId(
                                    row.origin.program, row.origin.serial_series, o_start, o_end
                                )
                            ),
                            "mirror": False,
                            "origin": None,
                        }
                    )
        session.add(
            UnitUseRecord(
                id=use_id,
                request_id=request_id,
                caller=caller,
                body_sha256=digest,
                kind=request.kind,
                state="pending",
                registry_id=request.account.registry,
                account=request.account.account,
                detail=json.dumps(
                    {
                        "request": request.canonical(),
                        "legs": origin_legs + legs,
                        "under_way": False,
                    },
                    sort_keys=True,
                ),
                decision=_decision_json(decision),
                created_at=now,
                **_surrender_keys(request),
            )
        )
        return use_id

    def _finish_use(self, use_id: str) -> None:
        """Carry a pending use out at its registries and record the outcome.

        A use is checked at every registry it touches before any of them is asked to
        apply it (``_check_at_registries``), and is marked under way, committed, before
        its first leg goes out; legs then run in their recorded order and stop at the
        first that fails.  A registry's refusal is final: of the first leg, nothing of
        the use was done, and it ends ``rejected``; of a later one, what the earlier legs
        did cannot be undone (a retirement is terminal), and it ends ``failed``.  Either
        way its caller hears FAILED_PRECONDITION, the same on every repeat, and nothing
        retries it.  Only a registry that does not answer leaves the use pending.

        Raises:
            FailedPrecondition: A registry refused the use (it is final now).
            RegistryUnavailable: A registry did not answer; the use stays pending.
        """
        with unit_of_work(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id)
            if record is None:
                raise NotFound(f"uses/{use_id}")
            if record.state != "pending":
                return
            detail = json.loads(record.detail)
        # Uses recorded before the check existed may have legs done: they go on.
        if not detail.get("under_way", True):
            used = self._check_at_registries(detail)
            if not self._set_under_way(use_id, used):
                raise self._use_refusal(use_id)
        request = detail["request"]
        kind = request["kind"]
        # A retried failed use (resolve_use) goes on from its refused leg: the legs before
        # it were done, and recorded, when it failed.
        done_before = set(detail.get("done_legs", ()))
        for position, leg in enumerate(detail["legs"]):
            if leg["op"] in done_before:
                continue
            block = block_id_from_dict(leg["block"])
            port = self._port(leg["registry"])
            try:
                if kind == "surrender" and leg["origin"] is not None:
                    port.surrender(
                        SurrenderRequest(
                            leg["op"],
                            leg["account"],
                            block,
                            request["entity_id"],
                            request["compliance_year"],
                        )
                    )
                else:
                    # The origin behind a mirror or a venue position is retired for the
                    # use, whatever the use was (origin registries such as Verra know
                    # retirement, not foreign compliance).
                    port.retire(
                        RetireRequest(
                            leg["op"],
                            leg["account"],
                            block,
                            request["beneficiary"] or request["entity_id"],
                            request["claim_text"] or _surrender_claim(request),
                        )
                    )
            except RegistryRejected as exc:
                if position == 0:
                    self._reject_use(use_id, _refused_leg(kind, leg, exc, done=()), exc)
                else:
                    self._fail_use(use_id, position, exc)
                raise self._use_refusal(use_id) from exc
        with unit_of_work(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id, with_for_update=True)
            if record is None or record.state != "pending":
                return
            detail = json.loads(record.detail)
            self._record_done(session, use_id, detail, detail["legs"])
            _end_resolution(detail, UseState.COMPLETED, "")
            record.detail = json.dumps(detail, sort_keys=True)
            record.state = "completed"

    def _check_at_registries(self, detail: dict[str, Any]) -> str:
        """Why the use's units cannot be used, as its registries show them; "" if they can.

        Units retired, cancelled or surrendered at a registry behind the gateway's back
        (at Verra by its account holder, at Shenzhen by the mirror's) are a double use:
        found here, before any leg goes out, the use is refused with nothing done.  The
        ledger is not asked: it knows only what the gateway did.

        Raises:
            RegistryUnavailable: A registry did not answer (the use stays pending).
        """
        used: list[str] = []
        for leg in detail["legs"]:
            block = block_id_from_dict(leg["block"])
            for holding in self._port(leg["registry"]).block_status(BlockStatusRequest(block)):
                if holding.block.id.overlaps(block) and holding.status in _USED_ELSEWHERE:
                    used.append(
                        f"units {holding.block.id} are already {holding.status.value} at "
                        f"{leg['registry']}"
                    )
        if not used:
            return ""
        kind = detail["request"]["kind"]
        return (
            f"double use: {'; '.join(used)}, by a use the gateway did not make; nothing of "
            f"this {kind} was done"
        )

    def _set_under_way(self, use_id: str, used: str) -> bool:
        """Mark a checked use under way, or end it rejected for ``used``; whether it goes on.

        Decided under the use's row lock: of two drivers of one use (its caller and a
        recovery loop), one that checked after the other's first leg went out sees that
        leg's own retirement, and must not take it for a double use.
        """
        with unit_of_work(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id, with_for_update=True)
            if record is None or record.state != "pending":
                return record is not None and record.state == "completed"
            detail = json.loads(record.detail)
            if detail.get("under_way", True):
                return True
            if used:
                self._release(session, record, detail, detail["legs"], "rejected", used)
                return False
            detail["under_way"] = True
            record.detail = json.dumps(detail, sort_keys=True)
            return True

    def _record_legs(
        self,
        session: Session,
        use_id: str,
        detail: dict[str, Any],
        legs: Sequence[dict[str, Any]],
    ) -> None:
        """Record in the ledger what ``legs``, done at their registries, did, and add the
        holder's units they used to the use's ``surrendered`` (kept for offset limits)."""
        request = detail["request"]
        kind = request["kind"]
        terminal = HoldingStatus.RETIRED if kind == "retirement" else HoldingStatus.SURRENDERED
        now = self._clock()
        used: list[dict[str, Any]] = []
        for leg in legs:
            block = block_id_from_dict(leg["block"])
            if leg["origin"] is not None:
                # The holder's own rows (an origin row, or a mirror).
                for row in ledger.locked_by(
                    session, leg["registry"], leg["account"], block, use_id
                ):
                    used.append(
                        {
                            "program": row.origin.program.value,
                            "quantity": row.block.quantity,
                            "country": row.block.country,
                            "region": row.block.region,
                            "offset": row.block.unit_kind.value == "offset_credit",
                        }
                    )
                    ledger.change(
                        session,
                        row,
                        kind_event(kind),
                        now,
                        status=terminal,
                        transfer_id=use_id,
                        detail=_use_detail(request),
                    )
            else:
                # The origin behind a mirror or a custody position ends with it, retired
                # at its registry whatever the use was.
                for origin_row in ledger.origin_rows(session, block):
                    if origin_row.status in (HoldingStatus.BRIDGED, HoldingStatus.ACTIVE):
                        carved = ledger.carve(session, origin_row, block, now, use_id)
                        ledger.change(
                            session,
                            carved,
                            "retire",
                            now,
                            status=HoldingStatus.RETIRED,
                            transfer_id=use_id,
                            detail=_use_detail(request),
                        )
        detail["surrendered"] = detail.get("surrendered", []) + used

    def _record_done(
        self,
        session: Session,
        use_id: str,
        detail: dict[str, Any],
        done: Sequence[dict[str, Any]],
    ) -> None:
        """Make ``done`` the use's done legs, recording in the ledger those not recorded
        yet (a retried use recorded its earlier legs when it first failed)."""
        recorded = set(detail.get("done_legs", ()))
        self._record_legs(session, use_id, detail, [g for g in done if g["op"] not in recorded])
        detail["done_legs"] = [leg["op"] for leg in done]

    def _release(
        self,
        session: Session,
        record: UnitUseRecord,
        detail: dict[str, Any],
        legs: Sequence[dict[str, Any]],
        state: str,
        reason: str,
    ) -> None:
        """End a use ``state`` for ``reason``, unlocking the holder's rows of ``legs``."""
        now = self._clock()
        for leg in legs:
            if leg["origin"] is None:
                continue
            block = block_id_from_dict(leg["block"])
            locked = ledger.locked_by(session, leg["registry"], leg["account"], block, record.id)
            _unlock(session, locked, record.id, now, reason)
        detail["rejection"] = reason
        record.detail = json.dumps(detail, sort_keys=True)
        record.state = state

    def _reject_use(self, use_id: str, reason: str, error: RegistryRejected) -> None:
        """A use its first leg's registry refused, before any applied it: release its units."""
        with unit_of_work(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id, with_for_update=True)
            if record is None or record.state != "pending":
                return
            detail = json.loads(record.detail)
            detail["refused_leg"] = _refusal_record(0, error)
            self._release(session, record, detail, detail["legs"], "rejected", reason)

    def _fail_use(self, use_id: str, refused_at: int, error: RegistryRejected) -> None:
        """A use a registry refused after the legs before ``refused_at`` were done.

        Those cannot be undone (a retirement is terminal): the ledger records them, the
        holder's units no leg used are released, and the use ends ``failed``, logged
        once at error level for an operator to settle with the registries (the refusing
        registry's units were used by someone else: a double use).
        """
        with unit_of_work(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id, with_for_update=True)
            if record is None or record.state != "pending":
                return
            detail = json.loads(record.detail)
            legs = detail["legs"]
            done, rest = legs[:refused_at], legs[refused_at:]
            reason = _refused_leg(detail["request"]["kind"], legs[refused_at], error, done)
            self._record_done(session, use_id, detail, done)
            detail["refused_leg"] = _refusal_record(refused_at, error)
            _end_resolution(detail, UseState.FAILED, reason)
            self._release(session, record, detail, rest, "failed", reason)
        _logger.error("use_failed", use=use_id, registry=error.registry, reason=reason)

    def _use_refusal(self, use_id: str) -> FailedPrecondition:
        """The answer to a use that ended refused (the same on every repeat)."""
        with read_only(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id)
            if record is None:
                raise NotFound(f"uses/{use_id}")
            return _refusal_of(record)

    # ------------------------------------------------------------------- resolving uses

    def resolve_use(
        self,
        request_id: str,
        use_id: str,
        action: UseResolutionAction,
        reason: str,
        *,
        caller: str = LOCAL_CALLER,
    ) -> UnitUse:
        """Settle a failed use (done at one registry, refused at a later one).

        RETRY puts the use back under way from its refused leg: the holder's units of the
        remaining legs are locked for it again, each remaining leg goes out under a new
        operation id (a registry answers a repeated one with its first refusal), and the
        use ends completed, or failed again with the new refusal (the answer, not an
        error: the resolution was carried out).  SETTLE_MANUALLY first asks every
        remaining leg's registry whether its units are used there (retired, cancelled or
        surrendered), then records them used in the ledger and ends the use resolved.
        Either appends one ``use_resolution`` event to the provenance log, over the use's
        units, naming the action, the reason and who asked.

        The caller's request id, asked again, answers the use as it stands and changes
        nothing more (a retry still under way is carried on); with another action or
        reason it is refused.

        Args:
            request_id: The caller's id of the resolution.
            use_id: The failed use.
            action: Retry, or settle manually.
            reason: The operator's words; required to settle manually.
            caller: Whose request-id space ``request_id`` is in.

        Raises:
            InvalidRequest: No request id, or no reason to settle manually.
            NotFound: No such use.
            RequestIdConflict: The caller used the request id on this use for another
                resolution.
            FailedPrecondition: The use is not failed; or, to settle it, a registry does
                not show the remaining units used; or, to retry it, the ledger no longer
                holds the holder's units active.  Nothing changed.
            RegistryUnavailable: A registry did not answer: a settlement changed nothing;
                a retry stays pending, and the gateway carries it on.
        """
        problems: list[FieldViolation] = []
        if not request_id:
            problems.append(FieldViolation("request_id", "is required"))
        if action is UseResolutionAction.SETTLE_MANUALLY and not reason.strip():
            problems.append(
                FieldViolation(
                    "reason",
                    "is required to settle a use manually: say what was settled where "
                    "(the registry's reference)",
                )
            )
        if problems:
            raise InvalidRequest(
                "; ".join(f"{p.field}: {p.description}" for p in problems), problems
            )
        digest = body_digest({"action": action.value, "reason": reason}).hex()
        with read_only(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id)
            if record is None:
                raise NotFound(f"uses/{use_id}")
            detail = json.loads(record.detail)
            state = record.state
            # Refused before a settlement asks any registry, and again under the use's
            # lock (a concurrent resolution of another use may take the id meanwhile).
            _check_resolution_id(session, caller, request_id, use_id)
        if _resolution_of(detail, caller, request_id, digest) is not None:
            return self._answer_resolution(use_id, state)
        if state != UseState.FAILED.value:
            raise _not_failed(use_id, state)
        if action is UseResolutionAction.RETRY:
            if self._start_retry(use_id, caller, request_id, digest, reason):
                # Refused again, the use is failed again, and its answer says why.
                with contextlib.suppress(FailedPrecondition):
                    self._finish_use(use_id)
            return self.get_use(use_id)
        unsettled = self._unsettled(_remaining_legs(detail))
        if unsettled:
            raise FailedPrecondition(
                f"uses/{use_id} cannot be settled manually: "
                + "; ".join(unsettled)
                + "; settle them at their registries first, or retry the use",
                [PreconditionViolation("UNSETTLED", f"uses/{use_id}", u) for u in unsettled],
            )
        self._settle_manually(use_id, caller, request_id, digest, reason)
        return self.get_use(use_id)

    def _answer_resolution(self, use_id: str, state: str) -> UnitUse:
        """The answer to a resolution asked again: the use as it stands, a retry still
        under way carried on."""
        if state == UseState.PENDING.value:
            with contextlib.suppress(FailedPrecondition):
                self._finish_use(use_id)
        return self.get_use(use_id)

    def _claim_resolution(
        self,
        session: Session,
        use_id: str,
        caller: str,
        request_id: str,
        digest: str,
    ) -> tuple[UnitUseRecord, dict[str, Any]] | None:
        """The failed use locked for a new resolution; None when the same resolution was
        recorded meanwhile (by a concurrent repeat of the request).

        Raises:
            NotFound: No such use.
            FailedPrecondition: Another resolution ended the use's failure meanwhile.
        """
        record = session.get(UnitUseRecord, use_id, with_for_update=True)
        if record is None:
            raise NotFound(f"uses/{use_id}")
        detail = json.loads(record.detail)
        if _resolution_of(detail, caller, request_id, digest) is not None:
            return None
        if record.state != UseState.FAILED.value:
            raise _not_failed(use_id, record.state)
        if _check_resolution_id(session, caller, request_id, use_id):
            return record, detail
        session.add(
            IdempotencyRecord(
                caller=caller,
                method=_RESOLVE_USE,
                request_id=request_id,
                body_sha256=body_digest({"use": use_id}),
                response=use_id.encode(),
            )
        )
        try:
            # Now, not at commit: of two resolutions of different uses under one id, the
            # second meets the first's row here (on PostgreSQL once the first commits).
            session.flush()
        except sa.exc.IntegrityError as exc:
            raise _resolution_id_taken(request_id) from exc
        return record, detail

    def _start_retry(
        self, use_id: str, caller: str, request_id: str, digest: str, reason: str
    ) -> bool:
        """Put a failed use back under way from its refused leg; whether this call did
        (False: a concurrent repeat of the same request did)."""
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            claimed = self._claim_resolution(session, use_id, caller, request_id, digest)
            if claimed is None:
                return False
            record, detail = claimed
            retries = 1 + sum(1 for r in detail.get("resolutions", ()) if r["action"] == "retry")
            remaining = _remaining_legs(detail)
            for leg in remaining:
                # A registry answers an operation id it refused with that refusal again.
                leg["op"] = f"{leg['op'].split(':retry-')[0]}:retry-{retries}"
            self._take_back(session, use_id, remaining, now)
            self._resolution(
                session,
                record,
                detail,
                _new_resolution(UseResolutionAction.RETRY, caller, request_id, digest, reason, now),
            )
            detail["under_way"] = True
            record.detail = json.dumps(detail, sort_keys=True)
            record.state = UseState.PENDING.value
        _logger.warning("use_retry", use=use_id, request_id=request_id, caller=caller)
        return True

    def _settle_manually(
        self, use_id: str, caller: str, request_id: str, digest: str, reason: str
    ) -> None:
        """Record a failed use's remaining legs as settled outside the gateway: their
        units used in the ledger, the use resolved."""
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            claimed = self._claim_resolution(session, use_id, caller, request_id, digest)
            if claimed is None:
                return
            record, detail = claimed
            remaining = _remaining_legs(detail)
            self._take_back(session, use_id, remaining, now)
            self._record_legs(session, use_id, detail, remaining)
            detail["settled_legs"] = [leg["op"] for leg in remaining]
            resolution = _new_resolution(
                UseResolutionAction.SETTLE_MANUALLY, caller, request_id, digest, reason, now
            )
            resolution["outcome"] = UseState.RESOLVED.value
            self._resolution(session, record, detail, resolution)
            record.detail = json.dumps(detail, sort_keys=True)
            record.state = UseState.RESOLVED.value
        _logger.warning("use_settled_manually", use=use_id, request_id=request_id, caller=caller)

    def _resolution(
        self,
        session: Session,
        record: UnitUseRecord,
        detail: dict[str, Any],
        resolution: dict[str, Any],
    ) -> None:
        """Keep ``resolution`` with the use and append its provenance event, over the
        use's units (so a trace of them shows it)."""
        detail.setdefault("resolutions", []).append(resolution)
        append_event(
            session,
            "use_resolution",
            {
                "use": record.id,
                "use_kind": record.kind,
                "action": resolution["action"],
                "reason": resolution["reason"],
                "request_id": resolution["request_id"],
                "resolved_by": resolution["caller"],
                "outcome": resolution["outcome"],
                "refusal": detail.get("rejection", ""),
                "legs": [
                    {
                        "registry": leg["registry"],
                        "account": leg["account"],
                        "block": leg["block"],
                        "done": leg["op"] in set(detail.get("done_legs", ())),
                    }
                    for leg in detail["legs"]
                ],
            },
            self._clock(),
            record.id,
            blocks=_use_blocks(detail),
        )

    def _take_back(
        self, session: Session, use_id: str, legs: Sequence[dict[str, Any]], now: datetime
    ) -> None:
        """Lock for the use again the holder's units of ``legs``, released when it failed.

        Raises:
            FailedPrecondition: The ledger no longer holds them active for the holder.
        """
        for leg in legs:
            if leg["origin"] is None:
                continue
            block = block_id_from_dict(leg["block"])
            for row in ledger.require_holding(session, leg["registry"], leg["account"], block):
                ledger.change(
                    session,
                    ledger.carve(session, row, block, now, use_id),
                    "lock",
                    now,
                    status=HoldingStatus.LOCKED,
                    lock_transfer_id=use_id,
                    transfer_id=use_id,
                )

    def _unsettled(self, legs: Sequence[dict[str, Any]]) -> list[str]:
        """What of ``legs`` their registries do not show used (retired, cancelled or
        surrendered), as they answer now.

        Raises:
            RegistryUnavailable: A registry did not answer.
        """
        unsettled: list[str] = []
        for leg in legs:
            block = block_id_from_dict(leg["block"])
            used = sorted(
                (
                    max(h.block.id.serial_start, block.serial_start),
                    min(h.block.id.serial_end, block.serial_end),
                )
                for h in self._port(leg["registry"]).block_status(BlockStatusRequest(block))
                if h.block.id.overlaps(block) and h.status in _USED_ELSEWHERE
            )
            covered = block.serial_start
            for start, end in used:
                if start > covered:
                    break
                covered = max(covered, end + 1)
            if covered <= block.serial_end:
                unsettled.append(
                    f"{leg['registry']} does not show units {block} used (serials from "
                    f"{covered} are not retired, cancelled or surrendered there)"
                )
        return unsettled

    def resume_uses(self) -> int:
        """Finish or end refused every pending retirement or surrender; returns how many
        completed."""
        with unit_of_work(self._sessions) as session:
            pending = list(
                session.execute(
                    sa.select(UnitUseRecord.id).where(UnitUseRecord.state == "pending")
                ).scalars()
            )
        done = 0
        for use_id in pending:
            try:
                self._finish_use(use_id)
                done += 1
            except FailedPrecondition as exc:
                # Final now (refused by a registry); a partial one was logged as an error.
                _logger.info("use_refused", use=use_id, error=str(exc))
            except RegistryUnavailable as exc:
                _logger.warning("use_waiting", use=use_id, error=str(exc))
        return done

    def get_use(self, use_id: str) -> UnitUse:
        """A retirement or surrender by id.

        Raises:
            NotFound: No such use.
        """
        with unit_of_work(self._sessions) as session:
            record = session.get(UnitUseRecord, use_id)
            if record is None:
                raise NotFound(f"uses/{use_id}")
            return _use_view(session, record)

    def list_uses(
        self,
        after: tuple[datetime, str] | None,
        limit: int,
        *,
        kind: str = "",
        holder: AccountRef | None = None,
        state: UseState | None = None,
        accounts: frozenset[str] | None = None,
    ) -> tuple[list[UnitUse], bool]:
        """A page of retirements and surrenders, oldest first (by creation, then id); the
        flag tells whether more follow.

        ``after`` is the ``(created_at, use_id)`` of the last use of the previous page, a
        position by key as ``list_transfers``'s.  ``holder`` keeps the uses of one account
        (of every account of its registry when its account is ""); ``accounts``
        (``registry:account``), when given, only the uses of those accounts.
        """
        if accounts is not None:
            return self._list_account_uses(after, limit, kind, holder, state, accounts)
        with unit_of_work(self._sessions) as session:
            query = sa.select(UnitUseRecord)
            if after is not None:
                # As in list_transfers: a row-value comparison bounds the index search.
                query = query.where(sa.tuple_(UnitUseRecord.created_at, UnitUseRecord.id) > after)
            if kind:
                query = query.where(UnitUseRecord.kind == kind)
            if holder is not None:
                query = query.where(UnitUseRecord.registry_id == holder.registry)
                if holder.account:
                    query = query.where(UnitUseRecord.account == holder.account)
            if state is not None:
                if holder is not None:
                    # Tested on the holder's uses, not sought, as in _list_account_uses:
                    # SQLite took the state index's search over the holder's.
                    query = query.where(UnitUseRecord.state.concat("") == state.value)
                else:
                    query = query.where(UnitUseRecord.state == state.value)
            rows = list(
                session.execute(
                    query.order_by(UnitUseRecord.created_at, UnitUseRecord.id).limit(limit + 1)
                ).scalars()
            )
            return [_use_view(session, r) for r in rows[:limit]], len(rows) > limit

    def _list_account_uses(
        self,
        after: tuple[datetime, str] | None,
        limit: int,
        kind: str,
        holder: AccountRef | None,
        state: UseState | None,
        accounts: frozenset[str],
    ) -> tuple[list[UnitUse], bool]:
        """``list_uses`` of the uses held by one of ``accounts``, read a page at most per
        account.

        The accounts as a filter of the (created_at, id) order read every use of every
        holder after the position, the whole history for a page of an account that
        uses units rarely; instead each account is sought in the holder index from the
        position, each read stops at ``limit + 1`` in page order, and the page is the
        first ``limit + 1`` of their union (of keys, read from the index alone; the
        page's rows are then read by id), as ``_list_account_transfers`` does.
        """
        pairs = _account_pairs(accounts)
        if holder is not None:
            pairs = [(r, a) for r, a in pairs if r == holder.registry and holder.account in ("", a)]
        if not pairs:
            return [], False
        reads: list[sa.Select[tuple[datetime, str]]] = []
        for registry, account in pairs:
            read = sa.select(UnitUseRecord.created_at, UnitUseRecord.id).where(
                UnitUseRecord.registry_id == registry, UnitUseRecord.account == account
            )
            if after is not None:
                read = read.where(sa.tuple_(UnitUseRecord.created_at, UnitUseRecord.id) > after)
            if kind:
                read = read.where(UnitUseRecord.kind == kind)
            if state is not None:
                # Tested on the account's uses, not sought: SQLite, which keeps no
                # statistics, prices a search of the state index as it prices the
                # holder's, and took the state's, a walk through every holder's uses in
                # the state (for a completed one, nearly the whole history).
                read = read.where(UnitUseRecord.state.concat("") == state.value)
            reads.append(_first_keys(read, limit + 1))
        keys = _merged_keys(reads, limit + 1)
        with unit_of_work(self._sessions) as session:
            found = [str(use_id) for use_id in session.execute(keys).scalars()]
            if not found:
                return [], False
            records = {
                r.id: r
                for r in session.execute(
                    sa.select(UnitUseRecord).where(UnitUseRecord.id.in_(found[:limit]))
                ).scalars()
            }
            # A use is never deleted, so every key read names a row.
            return [_use_view(session, records[i]) for i in found[:limit]], len(found) > limit


def _use_view(session: Session, record: UnitUseRecord) -> UnitUse:
    """A use as its row records it."""
    detail = json.loads(record.detail)
    request_data = detail["request"]
    request = UseRequest(
        kind=request_data["kind"],
        account=AccountRef(**request_data["account"]),
        units=tuple(block_id_from_dict(u) for u in request_data["units"]),
        beneficiary=request_data["beneficiary"],
        claim_text=request_data["claim_text"],
        entity_id=request_data["entity_id"],
        compliance_year=request_data["compliance_year"],
        jurisdiction=request_data["jurisdiction"],
    )
    return UnitUse(
        use_id=record.id,
        request_id=record.request_id,
        request=request,
        state=UseState(record.state),
        blocks=tuple(
            _leg_unit(session, leg) for leg in detail["legs"] if leg["origin"] is not None
        ),
        decision=_decision_from_json(record.decision),
        created_at=record.created_at,
        legs=_leg_views(record.state, detail),
        # The words _refusal_of answers Retire and Surrender with: what a client read
        # then, it reads again here.
        refusal=(detail.get("rejection", "refused") if record.state in _REFUSED_USE_STATES else ""),
        resolutions=_resolution_views(detail),
    )


def _refusal_record(index: int, error: RegistryRejected) -> dict[str, Any]:
    """What a use keeps of a registry's refusal of its leg ``index``."""
    return {"index": index, "code": error.code, "message": str(error)}


def _new_resolution(
    action: UseResolutionAction,
    caller: str,
    request_id: str,
    digest: str,
    reason: str,
    at: datetime,
) -> dict[str, Any]:
    return {
        "action": action.value,
        "caller": caller,
        "request_id": request_id,
        "digest": digest,
        "reason": reason,
        "at": at.isoformat(),
        "outcome": UseState.PENDING.value,
        "refusal": "",
    }


_RESOLVE_USE = "ResolveUse"
"""The request-id space of use resolutions in ``idempotency_records``."""


def _resolution_id_taken(request_id: str) -> RequestIdConflict:
    return RequestIdConflict(
        f"request_id {request_id!r} was already used to resolve another use; use a new "
        "request id for each resolution"
    )


def _check_resolution_id(session: Session, caller: str, request_id: str, use_id: str) -> bool:
    """Refuse a request id the caller already used to resolve another use; whether it is
    already recorded for this one.

    A resolution's id is recorded with the use, which answers a repeat of it; it is also
    recorded for the caller across uses, as every request id is (DESIGN.md, invariant 4):
    an id used again for another use is another request under the same id.

    Raises:
        RequestIdConflict: The caller resolved another use under ``request_id``.
    """
    taken = session.get(IdempotencyRecord, (caller, _RESOLVE_USE, request_id))
    if taken is not None and taken.response != use_id.encode():
        raise _resolution_id_taken(request_id)
    return taken is not None


def _resolution_of(
    detail: dict[str, Any], caller: str, request_id: str, digest: str
) -> dict[str, Any] | None:
    """The caller's resolution of the use under ``request_id``, if one was recorded.

    Raises:
        RequestIdConflict: It was recorded for another action or reason.
    """
    for resolution in detail.get("resolutions", ()):
        if (resolution["caller"], resolution["request_id"]) == (caller, request_id):
            if resolution["digest"] != digest:
                raise RequestIdConflict(
                    f"request_id {request_id!r} was already used for a different resolution "
                    "of this use; use a new request id for a new resolution"
                )
            return dict(resolution)
    return None


def _end_resolution(detail: dict[str, Any], outcome: UseState, refusal: str) -> None:
    """Record how a retry under way ended, if one is."""
    resolutions = detail.get("resolutions", [])
    if resolutions and resolutions[-1]["outcome"] == UseState.PENDING.value:
        resolutions[-1]["outcome"] = outcome.value
        resolutions[-1]["refusal"] = refusal


def _not_failed(use_id: str, state: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"uses/{use_id} is {state}, not failed: only a use done at one registry and refused "
        "at another is resolved",
        [PreconditionViolation("STATE", f"uses/{use_id}", state)],
    )


def _leg_views(state: str, detail: dict[str, Any]) -> tuple[UseLeg, ...]:
    """Where each leg of a use stands, as its record says."""
    done, refused = _done_and_refused(detail)
    settled = set(detail.get("settled_legs", ()))
    refusal = detail.get("refused_leg") or {}
    views: list[UseLeg] = []
    for i, leg in enumerate(detail["legs"]):
        if state == UseState.COMPLETED.value or i in done:
            leg_state = UseLegState.DONE
        elif leg["op"] in settled:
            leg_state = UseLegState.SETTLED
        elif i == refused and state in _REFUSED_USE_STATES:
            leg_state = UseLegState.REFUSED
        else:
            leg_state = UseLegState.OPEN
        mine = i == refused and state != UseState.PENDING.value
        views.append(
            UseLeg(
                registry=leg["registry"],
                account=leg["account"],
                block=block_id_from_dict(leg["block"]),
                holder=leg["origin"] is not None,
                state=leg_state,
                refusal_code=refusal.get("code", "") if mine else "",
                refusal=refusal.get("message", "") if mine else "",
            )
        )
    return tuple(views)


def _resolution_views(detail: dict[str, Any]) -> tuple[UseResolution, ...]:
    return tuple(
        UseResolution(
            request_id=r["request_id"],
            action=UseResolutionAction(r["action"]),
            reason=r["reason"],
            resolved_by=r["caller"],
            at=datetime.fromisoformat(r["at"]),
            outcome=UseState(r["outcome"]),
            refusal=r["refusal"],
        )
        for r in detail.get("resolutions", ())
    )


def _refused_leg(
    kind: str, leg: dict[str, Any], error: RegistryRejected, done: Sequence[dict[str, Any]]
) -> str:
    """Why a registry's refusal of ``leg`` ended a use whose ``done`` legs were applied."""
    block = block_id_from_dict(leg["block"])
    what = (
        f"double use: units {block} are already used at {leg['registry']}, by a use the "
        "gateway did not make"
        if error.code in _USED_CODES
        else f"{leg['registry']} refused units {block}"
    )
    reason = f"{what} ({error})"
    if not done:
        return f"{reason}; nothing of this {kind} was done"
    registries = ", ".join(dict.fromkeys(leg["registry"] for leg in done))
    return (
        f"{reason}; {registries} had already done its part of this {kind}, which cannot be "
        "undone: the use needs an operator to settle it with the registries"
    )


def _refusal_of(record: UnitUseRecord) -> FailedPrecondition:
    reason = json.loads(record.detail).get("rejection", "refused")
    return FailedPrecondition(
        f"the {record.kind} is refused: {reason}",
        [PreconditionViolation("REGISTRY", record.registry_id, reason)],
    )


def _leg_unit(session: Session, leg: dict[str, Any]) -> UnitBlock:
    """The holder's block a use's leg took, with its attributes."""
    if "unit" in leg:
        return block_from_json(leg["unit"])
    # A use recorded before its legs kept their blocks: the holder's rows over the leg
    # still carry the attributes (a row only splits, keeping them, or ends terminal).
    block = block_id_from_dict(leg["block"])
    for row in ledger.live_at(session, leg["registry"], leg["account"], block):
        return dataclasses.replace(row.block, id=block)
    raise LedgerConflict(f"the ledger holds no row for the use's block {block}")


def _unlock(
    session: Session, rows: Sequence[LedgerHolding], owner: str, at: datetime, reason: str
) -> None:
    """Release rows ``owner`` (a transfer or a use) locked, undoing it for ``reason``."""
    for row in rows:
        ledger.change(
            session,
            row,
            "rollback",
            at,
            status=HoldingStatus.ACTIVE,
            transfer_id=owner,
            detail={"reason": reason},
        )


def kind_event(kind: str) -> str:
    """The provenance event kind of a use."""
    return "retire" if kind == "retirement" else "surrender"


def _surrender_claim(request: dict[str, Any]) -> str:
    return (
        f"surrendered for compliance in {request['jurisdiction']} by {request['entity_id']} "
        f"for {request['compliance_year']}"
    )


def _use_detail(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "beneficiary": request["beneficiary"],
        "claim_text": request["claim_text"],
        "entity_id": request["entity_id"],
        "compliance_year": request["compliance_year"],
        "jurisdiction": request["jurisdiction"],
    }
