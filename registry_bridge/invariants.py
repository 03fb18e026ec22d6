"""Checks of the invariants of DESIGN.md over the ledger, its log and the registries.

Every check reads; none writes.  Each returns human-readable violations, one string per
broken fact, prefixed with the invariant it breaks (``[I1 conservation] ...``); an empty
list means every invariant holds.  Tests call :func:`check_ledger` after every step of a
scenario and :func:`check_registries` whenever no transfer is between two registry calls.

What is checked, by DESIGN.md number:

1. Conservation.  The units issued (the ``issuance`` events of the log) are exactly the
   units of the live *origin* rows, serial by serial, whatever their status; a bridged
   origin and its mirror count once because mirrors are not origin rows.  Every live
   mirror stands for live origin rows in a fitting status (mirror active or locked ->
   origin bridged, or origin locked by the bridge-out that is crediting it, or origin
   active again while the return of the mirror is between credit and finalize; mirror
   retired/surrendered/cancelled -> origin in the same terminal status), no origin
   serial has two live mirrors, and every bridged origin serial has a live mirror.
2. No two live rows of one program and serial series overlap.
3. Terminal states are terminal: no event moves a row out of retired, cancelled or
   surrendered; every transfer's history is a path of the state machine that ends at
   most once in a final state; a locked row is locked by a transfer or use still in
   flight; a :class:`Snapshot` taken earlier shows that final transfers and terminal
   units have not changed since.
5. Exactly one event per change: the log's indexes are dense from 0 and match its head,
   each leaf hash is SHA-256(0x00 || payload), each transfer's ``transfer_state`` events
   are its steps, and replaying the log rebuilds the live ledger exactly.
6. Reconciliation with each registry (ITL style): totals per program and status, then
   block by block.

Idempotency (4) is a property of requests, not of state, and is checked by tests.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import ledger, reconcile
from registry_bridge.block_json import block_id_from_dict
from registry_bridge.event_log import leaf_hash
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, HoldingStatus, merge_spans
from registry_bridge.port import ListHoldingsRequest, RegistryPort
from registry_bridge.schema import (
    LedgerEvent,
    LogHead,
    TransferRecord,
    TransferStepRecord,
    UnitUseRecord,
)
from registry_bridge.transfers import TransferKind, TransferState

_S = TransferState

# The edges of DESIGN.md's state machine: each state and the states it may go to next.
TRANSITIONS: Mapping[TransferState, frozenset[TransferState]] = {
    _S.PROPOSED: frozenset({_S.CHECKED, _S.REJECTED}),
    _S.CHECKED: frozenset({_S.SOURCE_LOCKED, _S.ROLLED_BACK}),
    _S.SOURCE_LOCKED: frozenset({_S.DESTINATION_CREDITED, _S.ROLLED_BACK}),
    _S.DESTINATION_CREDITED: frozenset({_S.SOURCE_FINALIZED}),
    _S.SOURCE_FINALIZED: frozenset({_S.COMPLETED}),
    _S.COMPLETED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.ROLLED_BACK: frozenset(),
}
"""Allowed transitions; final states have none."""

# Events that replace a row by new rows or end it; every other event with a "row" keeps
# the row and sets its holder and status (ledger.change, ledger.add_mirror, ledger.issue).
_SPLIT = "split"

# A block's identity and where it is: what replaying the log must rebuild.
_RowKey = tuple[str, str, int, int]
_RowState = tuple[str, str, str, bool]


def _key(block: BlockId) -> _RowKey:
    return (block.program.value, block.serial_series, block.serial_start, block.serial_end)


def _intervals(blocks: Iterable[BlockId]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Blocks as sorted serial intervals per (program, series)."""
    spans: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for block in blocks:
        spans[(block.program.value, block.serial_series)].append(
            (block.serial_start, block.serial_end)
        )
    return {k: sorted(v) for k, v in spans.items()}


# ------------------------------------------------------------------------ invariant 2


def check_no_overlap(rows: Iterable[LedgerHolding]) -> list[str]:
    """Invariant 2: no two live rows of one program and serial series overlap."""
    problems: list[str] = []
    by_series: dict[tuple[str, str], list[LedgerHolding]] = defaultdict(list)
    for row in rows:
        by_series[(row.block.id.program.value, row.block.id.serial_series)].append(row)
    for series_rows in by_series.values():
        series_rows.sort(key=lambda r: (r.block.id.serial_start, r.block.id.serial_end))
        for left, right in itertools.pairwise(series_rows):
            if right.block.id.serial_start <= left.block.id.serial_end:
                problems.append(
                    f"[I2 overlap] live rows {left.row_id} ({left.block.id.label} at "
                    f"{left.registry}/{left.account}, {left.status.value}) and {right.row_id} "
                    f"({right.block.id.label} at {right.registry}/{right.account}, "
                    f"{right.status.value}) overlap"
                )
    return problems


# ------------------------------------------------------------------------ invariant 1


def _issued(events: Iterable[tuple[str, dict[str, Any]]]) -> list[BlockId]:
    # A malformed issuance is reported by check_log (its payload does not name itself).
    return [
        block_id_from_dict(body["block"])
        for kind, body in events
        if kind == "issuance" and "block" in body
    ]


def check_conservation(
    rows: list[LedgerHolding],
    issued: list[BlockId],
    transfers: Mapping[str, TransferRecord],
) -> list[str]:
    """Invariant 1: issued units = live origin units, and every mirror fits its origin.

    Args:
        rows: Every live ledger row.
        issued: The block of every issuance event.
        transfers: Every transfer by id (to tell an in-flight credit from a stray one).

    Returns:
        The violations found.
    """
    problems: list[str] = []
    origins = [r for r in rows if not r.is_mirror]
    mirrors = [r for r in rows if r.is_mirror]

    # Totals per program first: the figure DESIGN.md states.
    issued_total: Counter[str] = Counter()
    for block in issued:
        issued_total[block.program.value] += block.quantity
    live_total: Counter[str] = Counter()
    by_status: dict[str, Counter[str]] = defaultdict(Counter)
    for row in origins:
        live_total[row.block.id.program.value] += row.block.quantity
        by_status[row.block.id.program.value][row.status.value] += row.block.quantity
    for program in sorted(set(issued_total) | set(live_total)):
        if issued_total[program] != live_total[program]:
            problems.append(
                f"[I1 conservation] {program}: issued {issued_total[program]} but the live "
                f"origin rows hold {live_total[program]} ({dict(by_status[program])})"
            )

    # Then serial by serial: equal totals could still hide a lost run and a doubled one.
    issued_spans = {k: merge_spans(v) for k, v in _intervals(issued).items()}
    live_spans = {k: merge_spans(v) for k, v in _intervals(r.block.id for r in origins).items()}
    for series in sorted(set(issued_spans) | set(live_spans)):
        if issued_spans.get(series, []) != live_spans.get(series, []):
            problems.append(
                f"[I1 conservation] {series[0]}/{series[1] or '-'}: issued serial runs "
                f"{issued_spans.get(series, [])} but live origin rows cover "
                f"{live_spans.get(series, [])}"
            )

    # Every live mirror stands for live origin rows in a fitting state.
    origin_index: dict[tuple[str, str], list[LedgerHolding]] = defaultdict(list)
    for row in origins:
        origin_index[(row.block.id.program.value, row.block.id.serial_series)].append(row)
    mirrored: dict[tuple[str, str], list[tuple[int, int, LedgerHolding]]] = defaultdict(list)
    for mirror in mirrors:
        target = mirror.origin
        series = (target.program.value, target.serial_series)
        mirrored[series].append((target.serial_start, target.serial_end, mirror))
        covering = [r for r in origin_index.get(series, []) if r.block.id.overlaps(target)]
        covered = sum(
            min(r.block.id.serial_end, target.serial_end)
            - max(r.block.id.serial_start, target.serial_start)
            + 1
            for r in covering
        )
        if covered != target.quantity:
            problems.append(
                f"[I1 mirror] mirror {mirror.block.id.label} at {mirror.registry}/"
                f"{mirror.account} stands for {target.label}, but live origin rows "
                f"cover only {covered} of its {target.quantity} units"
            )
        for origin in covering:
            if not _fits(mirror, origin, transfers):
                problems.append(
                    f"[I1 mirror] mirror {mirror.block.id.label} at {mirror.registry}/"
                    f"{mirror.account} is {mirror.status.value} (lock "
                    f"{mirror.lock_transfer_id or '-'}) but its origin "
                    f"{origin.block.id.label} at {origin.registry}/{origin.account} is "
                    f"{origin.status.value} (lock {origin.lock_transfer_id or '-'})"
                )

    # No origin serial has two live mirrors (that would count it twice).
    for series, spans in mirrored.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        for (_, l_end, left), (r_start, _, right) in itertools.pairwise(spans):
            if r_start <= l_end:
                problems.append(
                    f"[I1 mirror] mirrors {left.block.id.label} at {left.registry} and "
                    f"{right.block.id.label} at {right.registry} both stand for "
                    f"serials of {series[0]}/{series[1] or '-'} from {r_start}"
                )

    # Every bridged origin serial has a live mirror somewhere (otherwise units vanished).
    for row in origins:
        if row.status is not HoldingStatus.BRIDGED:
            continue
        series = (row.block.id.program.value, row.block.id.serial_series)
        spans_here = merge_spans(
            [
                (max(s, row.block.id.serial_start), min(e, row.block.id.serial_end))
                for s, e, _ in mirrored.get(series, [])
                if s <= row.block.id.serial_end and e >= row.block.id.serial_start
            ]
        )
        if spans_here != [(row.block.id.serial_start, row.block.id.serial_end)]:
            problems.append(
                f"[I1 mirror] origin {row.block.id.label} at {row.registry}/{row.account} "
                f"is bridged but live mirrors cover only {spans_here}"
            )
    return problems


def _fits(
    mirror: LedgerHolding, origin: LedgerHolding, transfers: Mapping[str, TransferRecord]
) -> bool:
    """Whether an origin row's status fits the status of a live mirror of it."""
    if mirror.status is HoldingStatus.SURRENDERED:
        # Origin registries know retirement, not a foreign compliance surrender: the origin
        # behind a surrendered mirror is retired for that use.
        return origin.status is HoldingStatus.RETIRED
    if mirror.status.is_terminal:
        return origin.status is mirror.status
    if origin.status is HoldingStatus.BRIDGED:
        return True
    if origin.status is HoldingStatus.LOCKED:
        # A bridge-out between DESTINATION_CREDITED and SOURCE_FINALIZED: the mirror
        # exists and the origin is still locked by that very transfer.
        record = transfers.get(origin.lock_transfer_id or "")
        return (
            record is not None
            and record.kind == TransferKind.BRIDGE_OUT.value
            and record.state == TransferState.DESTINATION_CREDITED.value
        )
    if origin.status is HoldingStatus.ACTIVE and mirror.status is HoldingStatus.LOCKED:
        # A return between DESTINATION_CREDITED and SOURCE_FINALIZED: the origin is active
        # at its destination and the mirror, still locked by the return, ends next.
        record = transfers.get(mirror.lock_transfer_id or "")
        return (
            record is not None
            and record.kind == TransferKind.RETURN.value
            and record.state == TransferState.DESTINATION_CREDITED.value
        )
    return False


# ------------------------------------------------------------------------ invariant 3


def check_locks(
    rows: Iterable[LedgerHolding],
    transfers: Mapping[str, TransferRecord],
    pending_uses: set[str],
) -> list[str]:
    """Invariant 3: every locked row is locked by a transfer or use still in flight.

    A row locked by a final transfer (or one never known) would stay locked forever, and
    a transfer whose lock another transfer overwrote would resolve twice.
    """
    problems: list[str] = []
    in_flight = {_S.CHECKED.value, _S.SOURCE_LOCKED.value, _S.DESTINATION_CREDITED.value}
    for row in rows:
        if row.status is not HoldingStatus.LOCKED:
            if row.lock_transfer_id:
                problems.append(
                    f"[I3 lock] {row.block.id.label} at {row.registry}/{row.account} is "
                    f"{row.status.value} but still names lock {row.lock_transfer_id}"
                )
            continue
        owner = row.lock_transfer_id or ""
        record = transfers.get(owner)
        if owner in pending_uses:
            continue
        if record is None or record.state not in in_flight:
            problems.append(
                f"[I3 lock] {row.block.id.label} at {row.registry}/{row.account} is "
                f"locked by {owner or 'nothing'}, which is "
                f"{'unknown' if record is None else record.state}: the lock can never resolve"
            )
    return problems


def check_transfer_histories(
    transfers: Mapping[str, TransferRecord],
    steps: Mapping[str, list[TransferStepRecord]],
    state_events: Mapping[str, list[str]],
) -> list[str]:
    """Invariant 3 (transfers): each history is a path of the machine, final at most once."""
    problems: list[str] = []
    for transfer_id, record in transfers.items():
        history = steps.get(transfer_id, [])
        states = [TransferState(s.state) for s in history]
        where = f"[I3 transfer] transfers/{transfer_id}"
        if [s.seq for s in history] != list(range(len(history))):
            problems.append(f"{where}: step numbers {[s.seq for s in history]} are not dense")
        if not states or states[0] is not _S.PROPOSED:
            problems.append(f"{where}: history {states} does not start at PROPOSED")
            continue
        for before, after in itertools.pairwise(states):
            if after not in TRANSITIONS[before]:
                problems.append(
                    f"{where}: {before.value} -> {after.value} is not a transition of the "
                    f"state machine (history {[s.value for s in states]})"
                )
        if states[-1].value != record.state:
            problems.append(
                f"{where}: is {record.state} but its history ends at {states[-1].value}"
            )
        finals = [s for s in states if s.is_final]
        if len(finals) > 1:
            problems.append(f"{where}: resolved {len(finals)} times ({finals})")
        # The log records every step after PROPOSED, once, in order.
        logged = state_events.get(transfer_id, [])
        if logged != [s.value for s in states[1:]]:
            problems.append(
                f"[I5 log] transfers/{transfer_id}: transfer_state events {logged} differ "
                f"from its steps {[s.value for s in states[1:]]}"
            )
    for transfer_id in set(state_events) - set(transfers):
        problems.append(f"[I5 log] transfer_state events for unknown transfers/{transfer_id}")
    return problems


@dataclass(frozen=True)
class Snapshot:
    """What must never change once reached: final transfers and terminal units."""

    final_transfers: Mapping[str, tuple[str, int]]
    """Transfer id -> (final state, number of steps)."""
    terminal: tuple[tuple[BlockId, HoldingStatus, bool], ...]
    """(block, terminal status, is mirror) of every terminal live row."""


def snapshot(session: Session) -> Snapshot:
    """Record the final transfers and terminal units as they are now."""
    finals: dict[str, tuple[str, int]] = {}
    counts: dict[str, int] = {
        transfer_id: int(count)
        for transfer_id, count in session.execute(
            sa.select(TransferStepRecord.transfer_id, sa.func.count()).group_by(
                TransferStepRecord.transfer_id
            )
        ).tuples()
    }
    for record in session.execute(sa.select(TransferRecord)).scalars():
        if TransferState(record.state).is_final:
            finals[record.id] = (record.state, int(counts.get(record.id, 0)))
    terminal = tuple(
        (row.block.id, row.status, row.is_mirror)
        for row in ledger.all_live(session)
        if row.status.is_terminal
    )
    return Snapshot(finals, terminal)


def check_unchanged(session: Session, earlier: Snapshot) -> list[str]:
    """Invariant 3 across time: nothing final or terminal in ``earlier`` has changed."""
    problems: list[str] = []
    now = snapshot(session)
    for transfer_id, (state, count) in earlier.final_transfers.items():
        later = now.final_transfers.get(transfer_id)
        if later != (state, count):
            problems.append(
                f"[I3 final] transfers/{transfer_id} was {state} with {count} steps and is "
                f"now {later}"
            )
    live = [(row.block.id, row.status) for row in ledger.all_live(session)]
    for block, status, _ in earlier.terminal:
        # A terminal run may be split later only if every piece keeps its status.
        here = [(b, s) for b, s in live if b.overlaps(block)]
        covered = sum(
            min(b.serial_end, block.serial_end) - max(b.serial_start, block.serial_start) + 1
            for b, _ in here
        )
        changed = sorted({s.value for _, s in here if s is not status})
        if changed or covered != block.quantity:
            problems.append(
                f"[I3 terminal] {block.label} was {status.value}; now its live rows "
                f"cover {covered} units with statuses {changed or [status.value]}"
            )
    return problems


# ------------------------------------------------------------------------ invariant 5


def _events(session: Session) -> list[LedgerEvent]:
    return list(session.execute(sa.select(LedgerEvent).order_by(LedgerEvent.idx)).scalars())


def _body(event: LedgerEvent) -> dict[str, Any]:
    """An event's payload as a mapping; ``{}`` when it is not JSON (check_log says so)."""
    try:
        body = json.loads(event.payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def check_log(session: Session, events: list[LedgerEvent]) -> list[str]:
    """Invariant 5 (log shape): dense indexes matching the head, and correct leaf hashes."""
    problems: list[str] = []
    size = session.execute(sa.select(LogHead.size).where(LogHead.id == 1)).scalar_one_or_none()
    indexes = [e.idx for e in events]
    if indexes != list(range(len(events))):
        missing = sorted(set(range(max(indexes, default=-1) + 1)) - set(indexes))
        problems.append(f"[I5 log] indexes are not dense from 0: missing {missing[:10]}")
    if size != len(events):
        problems.append(f"[I5 log] the log head says {size} events but {len(events)} exist")
    for event in events:
        if bytes(event.leaf_hash) != leaf_hash(bytes(event.payload)):
            problems.append(f"[I5 log] event {event.idx}: leaf hash is not SHA-256(0x00||payload)")
        body = _body(event)
        if body.get("index") != event.idx or body.get("kind") != event.kind:
            problems.append(
                f"[I5 log] event {event.idx}: payload names index {body.get('index')} and kind "
                f"{body.get('kind')}, not {event.idx} and {event.kind}"
            )
    return problems


def replay(
    bodies: Iterable[tuple[str, dict[str, Any]]],
) -> tuple[dict[_RowKey, _RowState], list[str]]:
    """Rebuild the live ledger from the log: block -> (registry, account, status, mirror).

    Returns the rebuilt rows and the problems met (an event about a block not live at
    that point, a terminal row leaving its status, ...).
    """
    live: dict[_RowKey, _RowState] = {}
    problems: list[str] = []
    for kind, body in bodies:
        if not {"block", "row", "registry", "account", "status", "mirror"} <= set(body):
            continue  # transfer_state and other events that change no row
        block = block_id_from_dict(body["block"])
        key = _key(block)
        at = f"event {body.get('index')} ({kind})"
        state: _RowState = (body["registry"], body["account"], body["status"], bool(body["mirror"]))
        if kind == "issuance" or (kind == "credit" and "previous_status" not in body):
            if key in live:
                problems.append(f"[I5 replay] {at}: {block.label} is already live")
            live[key] = state
            continue
        previous = live.get(key)
        if previous is None:
            problems.append(f"[I5 replay] {at}: {block.label} is not live at this point")
            continue
        was = HoldingStatus(previous[2])
        if kind == _SPLIT:
            if previous != state:
                problems.append(
                    f"[I5 replay] {at}: split of {block.label} as {state}, live as {previous}"
                )
            del live[key]
            for piece in body.get("pieces", []):
                live[_key(block_id_from_dict(piece))] = previous
            continue
        if body.get("exported"):
            if was.is_terminal:
                problems.append(f"[I3 terminal] {at}: {block.label} ended while {was.value}")
            del live[key]
            continue
        if was.is_terminal and state != previous:
            problems.append(
                f"[I3 terminal] {at}: {block.label} left {was.value} for {state[2]} at "
                f"{state[0]}/{state[1]}"
            )
        if body.get("previous_status", was.value) != was.value:
            problems.append(
                f"[I5 replay] {at}: says {block.label} was {body['previous_status']}, "
                f"the log says {was.value}"
            )
        live[key] = state
    return live, problems


def check_replay(rows: list[LedgerHolding], bodies: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Invariant 5: replaying the log gives exactly the live ledger rows."""
    rebuilt, problems = replay(bodies)
    actual: dict[_RowKey, _RowState] = {
        _key(r.block.id): (r.registry, r.account, r.status.value, r.is_mirror) for r in rows
    }
    for key in sorted(set(rebuilt) | set(actual)):
        if rebuilt.get(key) != actual.get(key):
            problems.append(
                f"[I5 replay] {key[0]}/{key[1] or '-'} {key[2]}-{key[3]}: the log rebuilds "
                f"{rebuilt.get(key)} but the ledger has {actual.get(key)}"
            )
    return problems


# ------------------------------------------------------------------------ all of it


def check_ledger(session: Session, earlier: Snapshot | None = None) -> list[str]:
    """Invariants 1, 2, 3 and 5 over the ledger, its transfers and its log.

    Args:
        session: A session on the ledger database (only read).
        earlier: A snapshot taken before; when given, final transfers and terminal units
            in it must be unchanged.

    Returns:
        The violations; empty when every invariant holds.
    """
    rows = ledger.all_live(session)
    events = _events(session)
    bodies = [(e.kind, _body(e)) for e in events]
    transfers = {r.id: r for r in session.execute(sa.select(TransferRecord)).scalars()}
    steps: dict[str, list[TransferStepRecord]] = defaultdict(list)
    for step in session.execute(
        sa.select(TransferStepRecord).order_by(
            TransferStepRecord.transfer_id, TransferStepRecord.seq
        )
    ).scalars():
        steps[step.transfer_id].append(step)
    state_events: dict[str, list[str]] = defaultdict(list)
    for kind, body in bodies:
        if kind == "transfer_state":
            state_events[body["transfer"]].append(body["state"])
    pending_uses = set(
        session.execute(
            sa.select(UnitUseRecord.id).where(UnitUseRecord.state == "pending")
        ).scalars()
    )
    problems = check_no_overlap(rows)
    problems += check_conservation(rows, _issued(bodies), transfers)
    problems += check_locks(rows, transfers, pending_uses)
    problems += check_transfer_histories(transfers, steps, state_events)
    problems += check_log(session, events)
    problems += check_replay(rows, bodies)
    if earlier is not None:
        problems += check_unchanged(session, earlier)
    return problems


# ------------------------------------------------------------------------ invariant 6


# The ITL phases live in registry_bridge.reconcile (the Reconcile RPC reports them);
# invariant 6 is the same comparison, formatted as violations.
expected_totals = reconcile.expected_totals


def check_registries(
    session: Session, ports: Mapping[str, RegistryPort], *, blocks: bool = True
) -> list[str]:
    """Invariant 6: the ledger reconciles with every wired registry, ITL style.

    Phase 1 compares each registry's totals per program and status with the ledger's
    (a custody venue's origin units count at the venue and, as its backing, at their
    origin registry).  Phase 2 (``blocks``) lists each registry's holdings once and
    checks, in memory, that the same account holds every serial of each block the ledger
    places there, in the same status, and that the ledger places there every serial the
    registry lists.  Call it only while no transfer is between two registry calls: a
    step committed in the ledger but not yet acted on differs from the registries by
    design.

    Args:
        session: A session on the ledger database (only read).
        ports: The registries, by id; ledger rows at registries not given are skipped.
        blocks: Also compare block by block (one more registry call per registry).

    Returns:
        The violations; empty when the registries agree with the ledger.
    """
    rows = ledger.all_live(session)
    totals = {registry_id: port.totals() for registry_id, port in ports.items()}
    problems = [f"[I6 totals] {d.detail}" for d in reconcile.compare_totals(rows, totals)]
    if blocks:
        listings = {
            registry_id: port.list_holdings(ListHoldingsRequest())
            for registry_id, port in ports.items()
        }
        problems += [f"[I6 blocks] {d.detail}" for d in reconcile.compare_blocks(rows, listings)]
        problems += [f"[I6 blocks] {d.detail}" for d in reconcile.compare_holdings(rows, listings)]
    return problems


def check_all(
    session: Session,
    ports: Mapping[str, RegistryPort] | None = None,
    earlier: Snapshot | None = None,
) -> list[str]:
    """Every invariant: the ledger's (1, 2, 3, 5) and, given the ports, reconciliation (6).

    Args:
        session: A session on the ledger database (only read).
        ports: The registries to reconcile with; ``None`` skips invariant 6.
        earlier: A snapshot whose final transfers and terminal units must be unchanged.

    Returns:
        The violations; empty when every invariant holds.
    """
    problems = check_ledger(session, earlier)
    if ports is not None:
        problems += check_registries(session, ports)
    return problems
