"""ITL-style reconciliation of the gateway's ledger with each registry (DESIGN.md, I6).

The Kyoto ITL reconciles in three phases (ANCHORS §1.6): ``TOTALS(1)``, then
``UNIT_BLOCK_DETAIL(2)``, then ``TRAIL(3)``.  Here:

1. totals: each registry's quantities per program and status against the ledger's (a
   custody venue's origin units count at the venue and, as its backing, in the venue's
   account at their origin registry);
2. unit blocks: for every block the ledger places at a registry, the same account must
   hold every serial of it there, in the same status; and the other way round, every
   serial a registry lists (in any status but exported) must be one the ledger places
   in that account there, in that status -- units a registry holds that the ledger does
   not know (created, or moved, behind the gateway's back) are named, not netted into a
   total.  Both directions compare one listing of each registry's holdings with the
   ledger in memory: a registry is asked for its totals once, then for its holdings a
   page per call (its adapter reads every page), however many blocks the ledger holds;
   the pages follow each other without a snapshot, so a holding that changes while a
   reconciliation runs may differ, as with any change not yet settled;
3. trail: for every block that differs, the ledger's own audit trail of it, read from
   the provenance log (the trails of many blocks per statement), so an operator sees
   which change the registry missed or made behind the gateway's back.

The phases return structured :class:`Discrepancy` values; ``invariants.check_registries``
formats the same values as invariant violations for the test suite.

A registry that cannot be read (unreachable or failing after the adapter's retries, or
refusing the read) is named in the report with the error, and nothing is said of whether
it agrees; the registries that answer are reconciled all the same.

A reconciliation whose caller is gone stops with :class:`~registry_bridge.errors.Abandoned`:
before its next registry read (the next page of a listing included) or phase, and within
a registry read under way, which the adapter cancels (``registry_bridge.port.StillWanted``)
rather than wait for the registry's answer or the read's deadline.  It changes nothing, so
stopping anywhere leaves nothing half done.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import ledger, reconciliations, serial_nodes
from registry_bridge.bridge import CUSTODY_VENUES, ORIGIN_REGISTRY, venue_account
from registry_bridge.db import read_only, unit_of_work
from registry_bridge.errors import (
    Abandoned,
    RegistryRejected,
    RegistryUnavailable,
    ResourceExhausted,
)
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, HoldingStatus, Program, merge_spans, spans_missing
from registry_bridge.port import (
    ListHoldingsRequest,
    ProgramTotal,
    RegistryHolding,
    RegistryPort,
)
from registry_bridge.reconcile_report import (
    COMPLETED,
    TOTALS,
    TRAIL,
    UNIT_BLOCKS,
    Discrepancy,
    ReconcileReport,
    UnreadableRegistry,
    report_json,
)
from registry_bridge.schema import LedgerEvent, ReconciliationRecord

__all__ = [
    "COMPLETED",
    "TOTALS",
    "TRAIL",
    "UNIT_BLOCKS",
    "Discrepancy",
    "ReconcileBusy",
    "ReconcileReport",
    "Reconciler",
    "UnreadableRegistry",
    "reconcile",
]

_TRAIL_EVENTS = 20
"""Most events of one block's trail put in a report (the newest ones)."""

_logger = structlog.get_logger(__name__)


def registry_view(row: LedgerHolding) -> list[tuple[str, str]]:
    """(registry, account) where a ledger row's units must show at the registries.

    A row shows at its own registry; an origin row held at a custody venue also shows
    at its origin registry, in the venue's account there (the venue's backing).
    """
    where = [(row.registry, row.account)]
    if not row.is_mirror and row.registry in CUSTODY_VENUES:
        where.append((ORIGIN_REGISTRY[row.block.id.program], venue_account(row.registry)))
    return where


def expected_totals(
    rows: Iterable[LedgerHolding],
) -> dict[str, Counter[tuple[Program, HoldingStatus]]]:
    """Per registry, the quantities per (program, status) the ledger says it holds."""
    expected: dict[str, Counter[tuple[Program, HoldingStatus]]] = defaultdict(Counter)
    for row in rows:
        for registry, _ in registry_view(row):
            expected[registry][(row.block.id.program, row.status)] += row.block.quantity
    return expected


def compare_totals(
    rows: Sequence[LedgerHolding], totals: Mapping[str, Sequence[ProgramTotal]]
) -> list[Discrepancy]:
    """Phase 1: each registry's totals per program and status against the ledger's.

    Args:
        rows: The ledger's live rows.
        totals: Each registry's totals (``RegistryPort.totals``), by registry id.
    """
    found: list[Discrepancy] = []
    expected = expected_totals(rows)
    for registry_id, registry_totals in sorted(totals.items()):
        reported: Counter[tuple[Program, HoldingStatus]] = Counter()
        for total in registry_totals:
            reported[(total.program, total.status)] += total.quantity
        want = expected.get(registry_id, Counter())
        for program, status in sorted(set(reported) | set(want)):
            if reported[(program, status)] != want[(program, status)]:
                found.append(
                    Discrepancy(
                        registry=registry_id,
                        phase=TOTALS,
                        detail=(
                            f"{registry_id} reports {reported[(program, status)]} "
                            f"{program.value} {status.value}, the ledger "
                            f"{want[(program, status)]}"
                        ),
                        program=program,
                        status=status,
                        gateway_quantity=want[(program, status)],
                        registry_quantity=reported[(program, status)],
                    )
                )
    return found


class _Overlaps:
    """One registry's holdings of one program and serial series, found by overlap.

    What a registry's ``block_status`` answers for a block, looked up in its listing
    instead of asked for: every holding sharing a serial with the block, by first serial
    (holdings of one first serial in listing order), as the registries answer both.
    """

    def __init__(self, holdings: Iterable[RegistryHolding]) -> None:
        self._holdings = sorted(holdings, key=lambda h: h.block.id.serial_start)
        self._starts = [h.block.id.serial_start for h in self._holdings]
        # The furthest serial reached by any holding up to each position: it only grows,
        # so one search finds the first holding that can reach a block's start.
        self._reach = list(
            itertools.accumulate((h.block.id.serial_end for h in self._holdings), max)
        )

    def of(self, block: BlockId) -> list[RegistryHolding]:
        """The holdings sharing a serial with ``block``."""
        first = bisect.bisect_left(self._reach, block.serial_start)
        last = bisect.bisect_right(self._starts, block.serial_end)
        return [
            h for h in self._holdings[first:last] if h.block.id.serial_end >= block.serial_start
        ]


def _overlaps_by_series(
    holdings: Iterable[RegistryHolding],
) -> dict[tuple[Program, str], _Overlaps]:
    grouped: dict[tuple[Program, str], list[RegistryHolding]] = defaultdict(list)
    for holding in holdings:
        grouped[(holding.block.id.program, holding.block.id.serial_series)].append(holding)
    return {key: _Overlaps(group) for key, group in grouped.items()}


def compare_blocks(
    rows: Sequence[LedgerHolding], listings: Mapping[str, Sequence[RegistryHolding]]
) -> list[Discrepancy]:
    """Phase 2: every ledger block, serial by serial, at the registries that must hold it.

    Args:
        rows: The ledger's live rows.
        listings: Each registry's holdings (``RegistryPort.list_holdings`` of every
            account), by registry id; rows at registries not given are skipped.
    """
    shown_at = {registry_id: _overlaps_by_series(h) for registry_id, h in listings.items()}
    found: list[Discrepancy] = []
    for row in rows:
        for registry_id, account in registry_view(row):
            series = shown_at.get(registry_id)
            if series is None:
                continue
            overlapping = series.get((row.block.id.program, row.block.id.serial_series))
            shown = [] if overlapping is None else overlapping.of(row.block.id)
            held = [h for h in shown if h.account == account and h.status is row.status]
            spans = merge_spans(
                [
                    (
                        max(h.block.id.serial_start, row.block.id.serial_start),
                        min(h.block.id.serial_end, row.block.id.serial_end),
                    )
                    for h in held
                ]
            )
            if spans != [(row.block.id.serial_start, row.block.id.serial_end)]:
                others = [(h.block.id.label, h.account, h.status.value) for h in shown]
                found.append(
                    Discrepancy(
                        registry=registry_id,
                        phase=UNIT_BLOCKS,
                        detail=(
                            f"ledger has {row.block.id.label} {row.status.value} at "
                            f"{registry_id}/{account}; {registry_id} shows {others}"
                        ),
                        program=row.block.id.program,
                        status=row.status,
                        gateway_quantity=row.block.quantity,
                        registry_quantity=sum(e - s + 1 for s, e in spans),
                        block=row.block.id,
                        differing=tuple(
                            BlockId(row.block.id.program, row.block.id.serial_series, s, e)
                            for s, e in spans_missing(
                                row.block.id.serial_start, row.block.id.serial_end, spans
                            )
                        ),
                    )
                )
    return found


def compare_holdings(
    rows: Sequence[LedgerHolding], listings: Mapping[str, Sequence[RegistryHolding]]
) -> list[Discrepancy]:
    """Phase 2, the registries' side: every serial each registry lists, against the ledger.

    Args:
        rows: The ledger's live rows.
        listings: Each registry's holdings (``RegistryPort.list_holdings`` of every
            account), by registry id.
    """
    placed: dict[tuple[str, str, HoldingStatus, Program, str], list[tuple[int, int]]] = defaultdict(
        list
    )
    for row in rows:
        block = row.block.id
        for registry_id, account in registry_view(row):
            key = (registry_id, account, row.status, block.program, block.serial_series)
            placed[key].append((block.serial_start, block.serial_end))
    merged = {key: merge_spans(spans) for key, spans in placed.items()}
    found: list[Discrepancy] = []
    for registry_id, holdings in listings.items():
        for holding in holdings:
            if holding.status is HoldingStatus.EXPORTED:
                continue  # gone from this registry: the ledger keeps no live row of it
            block = holding.block.id
            key = (registry_id, holding.account, holding.status, block.program, block.serial_series)
            placed_here = merged.get(key, [])
            for start, end in spans_missing(block.serial_start, block.serial_end, placed_here):
                unknown = BlockId(block.program, block.serial_series, start, end)
                found.append(
                    Discrepancy(
                        registry=registry_id,
                        phase=UNIT_BLOCKS,
                        detail=(
                            f"{registry_id} shows {unknown.label} {holding.status.value} at "
                            f"{registry_id}/{holding.account}; the ledger has no such units there"
                        ),
                        program=block.program,
                        status=holding.status,
                        gateway_quantity=0,
                        registry_quantity=unknown.quantity,
                        block=unknown,
                    )
                )
    return found


def _always() -> bool:
    return True


def _go_on(still_wanted: Callable[[], bool], before: str) -> None:
    if not still_wanted():
        raise Abandoned(f"reconciliation stopped before {before}: its caller is gone")


_TRAIL_BLOCKS_PER_QUERY = 100
"""Blocks whose trails one statement reads: their reads are bound as one list (a JSON
array on SQLite, arrays on PostgreSQL), so this bounds the statement's work and the rows
it holds, not its parameters."""

_LIMITED = "GROUP BY b.event_idx ORDER BY b.event_idx DESC LIMIT :limit"
"""Each read's newest ``limit`` events (an event indexed under two of its ranges once),
read back from the log's end in its index, the ranges tested inside it."""

_SQLITE_TRAIL_READS = {
    "node_reads": (
        "node_reads(block_position, program, serial_series, node, first, last) AS ("
        "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
        "json_extract(value, '$[2]'), json_extract(value, '$[3]'), "
        "json_extract(value, '$[4]'), json_extract(value, '$[5]') FROM json_each(:node_reads))",
        "SELECT r.block_position, e.event_idx FROM node_reads AS r JOIN event_blocks AS e "
        "ON e.program = r.program AND e.serial_series = r.serial_series "
        "AND e.serial_node = r.node AND e.event_idx IN (SELECT b.event_idx "
        "FROM event_blocks AS b WHERE b.program = r.program "
        "AND b.serial_series = r.serial_series AND b.serial_node = r.node "
        f"AND b.serial_start <= r.last AND b.serial_end >= r.first {_LIMITED})",
    ),
    "scans": (
        "scans(block_position, program, serial_series, first, last) AS ("
        "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
        "json_extract(value, '$[2]'), json_extract(value, '$[3]'), "
        "json_extract(value, '$[4]') FROM json_each(:scans))",
        "SELECT r.block_position, e.event_idx FROM scans AS r JOIN event_blocks AS e "
        "ON e.program = r.program AND e.serial_series = r.serial_series "
        "AND e.event_idx IN (SELECT b.event_idx FROM event_blocks AS b "
        "WHERE b.program = r.program AND b.serial_series = r.serial_series "
        f"AND b.serial_start <= r.last AND b.serial_end >= r.first {_LIMITED})",
    ),
}
"""SQLite's reads, by name: per node of each block (``ix_event_blocks_node``), or per block
in log order (``ix_event_blocks_log_order``), a table bound as one JSON array, and the
statement reading them.  SQLite has no ``LATERAL``: a correlated ``IN`` list, run once per
read, stands for it, its events found again in the same index (by an event's other entries
too, which :func:`_newest_statement` drops)."""

_POSTGRES_TRAIL_READS = {
    "node_reads": (
        "node_reads(block_position, program, serial_series, node, first, last) AS ("
        "SELECT * FROM unnest(CAST(:node_positions AS INTEGER[]), "
        "CAST(:node_programs AS VARCHAR[]), CAST(:node_series AS VARCHAR[]), "
        "CAST(:nodes AS BIGINT[]), CAST(:node_firsts AS BIGINT[]), "
        "CAST(:node_lasts AS BIGINT[])))",
        "SELECT r.block_position, found.event_idx FROM node_reads AS r "
        "CROSS JOIN LATERAL (SELECT b.event_idx FROM event_blocks AS b "
        "WHERE b.program = r.program AND b.serial_series = r.serial_series "
        "AND b.serial_node = r.node AND b.serial_start <= r.last "
        f"AND b.serial_end >= r.first {_LIMITED}) AS found",
    ),
    "scans": (
        "scans(block_position, program, serial_series, first, last) AS ("
        "SELECT * FROM unnest(CAST(:scan_positions AS INTEGER[]), "
        "CAST(:scan_programs AS VARCHAR[]), CAST(:scan_series AS VARCHAR[]), "
        "CAST(:scan_firsts AS BIGINT[]), CAST(:scan_lasts AS BIGINT[])))",
        "SELECT r.block_position, found.event_idx FROM scans AS r "
        "CROSS JOIN LATERAL (SELECT b.event_idx FROM event_blocks AS b "
        "WHERE b.program = r.program AND b.serial_series = r.serial_series "
        f"AND b.serial_start <= r.last AND b.serial_end >= r.first {_LIMITED}) AS found",
    ),
}
"""PostgreSQL's reads, as SQLite's (:data:`_SQLITE_TRAIL_READS`): bound as arrays, each a
``LATERAL`` limited read."""


@functools.lru_cache(maxsize=8)
def _newest_statement(postgres: bool, kinds: tuple[str, ...]) -> sa.Select[Any]:
    """The newest ``limit`` events of each block that the reads of ``kinds`` find (see
    :data:`_SQLITE_TRAIL_READS`), with the block's position: an event found under several
    of a block's nodes, or by several of its entries, counts once."""
    reads = [(_POSTGRES_TRAIL_READS if postgres else _SQLITE_TRAIL_READS)[k] for k in kinds]
    tables = ", ".join(table for table, _ in reads)
    found = " UNION ALL ".join(read for _, read in reads)
    newest = (
        sa.text(
            f"WITH {tables}, found(block_position, event_idx) AS ({found}), "
            "ranked AS (SELECT once.block_position, once.event_idx, row_number() OVER "
            "(PARTITION BY once.block_position ORDER BY once.event_idx DESC) AS newness "
            "FROM (SELECT DISTINCT block_position, event_idx FROM found) AS once) "
            "SELECT block_position, event_idx FROM ranked WHERE newness <= :limit"
        )
        .columns(block_position=sa.Integer, event_idx=sa.BigInteger)
        .subquery("newest")
    )
    return (
        sa.select(newest.c.block_position, LedgerEvent)
        .join(LedgerEvent, LedgerEvent.idx == newest.c.event_idx)
        .order_by(newest.c.block_position, LedgerEvent.idx)
    )


def _trail_reads(
    planned: Sequence[tuple[int, BlockId, list[int] | None]], postgres: bool
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The kinds of reads of the blocks (their nodes as planned, at their positions) and
    their values, as :func:`_newest_statement` binds them: one read per node a block is
    sought under, or one in log order (where its nodes are None)."""
    node_reads = [
        (position, block, node) for position, block, nodes in planned for node in nodes or ()
    ]
    scans = [(position, block) for position, block, nodes in planned if nodes is None]
    parameters: dict[str, Any] = {}
    if node_reads and postgres:
        parameters.update(
            node_positions=[p for p, _, _ in node_reads],
            node_programs=[b.program.value for _, b, _ in node_reads],
            node_series=[b.serial_series for _, b, _ in node_reads],
            nodes=[node for _, _, node in node_reads],
            node_firsts=[b.serial_start for _, b, _ in node_reads],
            node_lasts=[b.serial_end for _, b, _ in node_reads],
        )
    elif node_reads:
        parameters["node_reads"] = json.dumps(
            [
                [p, b.program.value, b.serial_series, node, b.serial_start, b.serial_end]
                for p, b, node in node_reads
            ]
        )
    if scans and postgres:
        parameters.update(
            scan_positions=[p for p, _ in scans],
            scan_programs=[b.program.value for _, b in scans],
            scan_series=[b.serial_series for _, b in scans],
            scan_firsts=[b.serial_start for _, b in scans],
            scan_lasts=[b.serial_end for _, b in scans],
        )
    elif scans:
        parameters["scans"] = json.dumps(
            [[p, b.program.value, b.serial_series, b.serial_start, b.serial_end] for p, b in scans]
        )
    kinds = (*(("node_reads",) if node_reads else ()), *(("scans",) if scans else ()))
    return kinds, parameters


def _trail_line(event: LedgerEvent) -> str:
    try:
        body = json.loads(event.payload)
    except ValueError:
        return f"#{event.idx} {event.kind}: payload is not JSON"
    where = f"{body.get('registry', '?')}/{body.get('account', '?')}"
    via = f" ({event.transfer_id})" if event.transfer_id else ""
    return f"#{event.idx} {event.kind}{via}: {where} {body.get('status', '?')}"


def trails(
    session: Session,
    blocks: Sequence[BlockId],
    limit: int = _TRAIL_EVENTS,
    still_wanted: Callable[[], bool] = _always,
) -> list[list[str]]:
    """The ledger's audit trail of each of ``blocks``: its newest ``limit`` events, oldest
    first, one line each.

    One statement per :data:`_TRAIL_BLOCKS_PER_QUERY` blocks, not one per block (a
    registry far out of step differs in thousands of blocks), and two more that find
    which nodes of the serials' tree to seek for them all (``serial_nodes``): each
    block's newest events are read from its own index entries, node by node, however
    busy its program since.

    Args:
        session: A session on the ledger (only read).
        blocks: The blocks, in any order, repeats allowed.
        limit: Events per block at most (the newest).
        still_wanted: Asked before each statement (see :func:`reconcile`).

    Returns:
        Per block, in the order given, its trail's lines.

    Raises:
        Abandoned: ``still_wanted`` answered false.
    """
    lines: list[list[str]] = [[] for _ in blocks]
    postgres = session.get_bind().dialect.name == "postgresql"
    nodes: list[list[int] | None] = []
    for first in range(0, len(blocks), _TRAIL_BLOCKS_PER_QUERY):
        _go_on(still_wanted, "reading the trail of the blocks that differ")
        if not first:
            # Each block is sought under the nodes of the serials' tree that its events'
            # ranges are filed under, not in its program's entries back from the log's
            # end: the trail of an old block in a busy program read every newer entry of
            # the program.  Worked out for every block at once, in two statements.
            nodes = serial_nodes.nodes_to_seek(session, blocks)
        chunk = [
            (position, blocks[position], nodes[position])
            for position in range(first, min(first + _TRAIL_BLOCKS_PER_QUERY, len(blocks)))
        ]
        kinds, reads = _trail_reads(chunk, postgres)
        if not kinds:
            continue  # nothing is filed in their programs and series
        found = session.execute(_newest_statement(postgres, kinds), {**reads, "limit": limit})
        for position, event in found.tuples():
            lines[position].append(_trail_line(event))
    return lines


def _holdings(
    registry_id: str, port: RegistryPort, still_wanted: Callable[[], bool]
) -> Sequence[RegistryHolding]:
    """Every holding ``port`` lists.  The adapter asks ``still_wanted`` before each page
    of the listing and while one is under way, so a caller gone stops a long listing at
    once (see :data:`~registry_bridge.port.StillWanted`).

    Raises:
        Abandoned: ``still_wanted`` answered false.
    """
    _go_on(still_wanted, f"reading {registry_id}'s holdings")
    return port.list_holdings(ListHoldingsRequest(), still_wanted)


def reconcile(
    session: Session,
    ports: Mapping[str, RegistryPort],
    registries: Iterable[str] = (),
    still_wanted: Callable[[], bool] = _always,
) -> ReconcileReport:
    """Reconcile the ledger with the given registries (all of ``ports`` when none named).

    Call it while no transfer is between two registry calls for an exact answer: a step
    committed in the ledger and not yet acted on differs from the registries by design.

    Args:
        session: A session on the ledger (only read).
        ports: The wired registries by id.
        registries: Registry ids to reconcile; empty means every wired registry.
        still_wanted: Asked before each registry read and each phase, and while a read
            is under way: false when the caller is gone (a gRPC call's
            ``context.is_active``).  A read under way is then cancelled, and none is
            started after.

    Returns:
        The report: every discrepancy of phases 1 and 2 with the registries read, the
        ledger's trail of every block that differs (phase 3), and the registries that
        could not be read.

    Raises:
        Abandoned: ``still_wanted`` answered false; nothing was reported.
    """
    wanted = set(registries)
    chosen = {r: p for r, p in ports.items() if not wanted or r in wanted}
    rows = ledger.all_live(session)
    totals: dict[str, Sequence[ProgramTotal]] = {}
    listings: dict[str, Sequence[RegistryHolding]] = {}
    unreadable: list[UnreadableRegistry] = []
    for registry_id, port in chosen.items():
        try:
            _go_on(still_wanted, f"reading {registry_id}'s totals")
            registry_totals = port.totals(still_wanted)
            holdings = _holdings(registry_id, port, still_wanted)
        except (RegistryUnavailable, RegistryRejected) as exc:
            # One registry down must not hide what the others say; its totals, if read,
            # are left out too, so nothing is claimed of it from half its answers.
            _logger.warning("reconcile_registry_unreadable", registry=registry_id, error=str(exc))
            unreadable.append(UnreadableRegistry(registry_id, exc))
            continue
        totals[registry_id] = registry_totals
        listings[registry_id] = holdings
    _go_on(still_wanted, "comparing")
    found = (
        compare_totals(rows, totals)
        + compare_blocks(rows, listings)
        + compare_holdings(rows, listings)
    )
    if not found:
        return ReconcileReport(COMPLETED, (), tuple(unreadable))
    differing = [(item, item.block) for item in found if item.block is not None]
    trailed: list[Discrepancy] = []
    read = trails(session, [block for _, block in differing], still_wanted=still_wanted)
    for (item, block), lines in zip(differing, read, strict=True):
        trailed.append(
            Discrepancy(
                registry=item.registry,
                phase=TRAIL,
                detail=f"ledger trail of {block.label}: "
                + ("; ".join(lines) or "no event of the log concerns these units"),
                program=item.program,
                status=item.status,
                gateway_quantity=item.gateway_quantity,
                registry_quantity=item.registry_quantity,
                block=block,
            )
        )
    return ReconcileReport(
        TRAIL if trailed else UNIT_BLOCKS, tuple(found + trailed), tuple(unreadable)
    )


RUN_LEASE = timedelta(seconds=60)
"""How long a run counts as alive without its gateway renewing it."""
RENEW_EVERY = timedelta(seconds=15)
"""How often a run renews its lease while it reads (at each registry page or phase)."""


_logger = structlog.get_logger(__name__)


class ReconcileBusy(ResourceExhausted):
    """A reconciliation is already under way, on this gateway or another sharing its
    database.

    Each one reads every holding of the registries it covers: run side by side they would
    only multiply the load on the registries and answer the same.
    """

    def __init__(self, running: reconciliations.Reconciliation | None) -> None:
        where = (
            ""
            if running is None
            else f" (reconciliation {running.id}, started {running.started_at.isoformat()} "
            f"by gateway {running.runner})"
        )
        super().__init__(f"a reconciliation is already under way{where}; retry when it ends")
        self.running = running
        self.subject = "reconciliations"
        self.description = "one reconciliation at a time over the gateways sharing a database"


class _Renewing:
    """``still_wanted`` for a run that also renews the run's lease every so often."""

    def __init__(
        self,
        reconciler: Reconciler,
        run_id: int,
        still_wanted: Callable[[], bool],
    ) -> None:
        self._reconciler = reconciler
        self._run_id = run_id
        self._still_wanted = still_wanted
        self._renewed = reconciler.clock()
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        wanted = self._still_wanted()
        if wanted:
            now = self._reconciler.clock()
            with self._lock:
                due = now - self._renewed >= self._reconciler.renew_every
                if due:
                    self._renewed = now
            if due:
                self._reconciler.renew(self._run_id, now)
        return wanted


class Reconciler:
    """Runs reconciliations of the ledger with the wired registries, one at a time over
    every gateway sharing the database, and records each.

    Each reads the ledger read-only: it waits on every registry's totals and holdings,
    which takes a while on a large ledger, and on SQLite a write transaction would hold
    the one write lock all that time, stopping every transfer.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ports: Mapping[str, RegistryPort],
        *,
        runner: str,
        clock: Callable[[], datetime],
        lease: timedelta = RUN_LEASE,
        renew_every: timedelta = RENEW_EVERY,
    ) -> None:
        self._sessions = sessions
        self._ports = ports
        self.runner = runner
        self.clock = clock
        self.lease = lease
        self.renew_every = renew_every

    def run(
        self,
        registries: Iterable[str] = (),
        still_wanted: Callable[[], bool] = _always,
        *,
        requested_by: str = "",
    ) -> reconciliations.Reconciliation:
        """Reconcile now with ``registries`` (every wired one when none named).

        Raises:
            ReconcileBusy: Another reconciliation is under way.
            Abandoned: ``still_wanted`` answered false; the run is recorded abandoned.
        """
        run = self._start(
            reconciliations.REQUEST, tuple(registries) or tuple(self._ports), requested_by, None
        )
        assert run is not None  # only a scheduled run is ever not due
        return self._complete(run, still_wanted, previous=None)

    def run_scheduled(
        self, interval: timedelta, still_wanted: Callable[[], bool] = _always
    ) -> reconciliations.Reconciliation | None:
        """The schedule's run with every wired registry, if one is due: when no scheduled
        run (of any gateway sharing the database) has started within ``interval``.

        Returns:
            The run, or None when none was due or another reconciliation is under way.

        Raises:
            Abandoned: ``still_wanted`` answered false; the run is recorded abandoned.
        """
        previous = self.last_completed(reconciliations.SCHEDULE)
        try:
            run = self._start(reconciliations.SCHEDULE, tuple(self._ports), "", interval)
        except ReconcileBusy:
            _logger.info("scheduled_reconcile_skipped", reason="a reconciliation is under way")
            return None
        if run is None:
            return None
        return self._complete(
            run, still_wanted, previous=None if previous is None else previous.report
        )

    def _complete(
        self,
        run: reconciliations.Reconciliation,
        still_wanted: Callable[[], bool],
        previous: ReconcileReport | None,
    ) -> reconciliations.Reconciliation:
        wanted = _Renewing(self, run.id, still_wanted)
        try:
            with read_only(self._sessions) as session:
                report = reconcile(session, self._ports, run.registries, wanted)
        except Abandoned as exc:
            self._end(run.id, reconciliations.ABANDONED, str(exc))
            raise
        except Exception as exc:
            self._end(run.id, reconciliations.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        persistent = (
            reconciliations.persisting(previous, report)
            if run.trigger == reconciliations.SCHEDULE
            else ()
        )
        ended = self._end(run.id, reconciliations.COMPLETED, report_json(report, persistent))
        return replace(
            run,
            state=reconciliations.COMPLETED,
            ended_at=ended,
            report=report,
            persistent=persistent,
            lease_expires_at=None,
        )

    def _start(
        self,
        trigger: str,
        registries: tuple[str, ...],
        requested_by: str,
        interval: timedelta | None,
    ) -> reconciliations.Reconciliation | None:
        """Record a run as running; None when ``interval`` is given and a scheduled run
        started within it.

        Raises:
            ReconcileBusy: A run is under way (its lease not run out).
        """
        now = self.clock()
        try:
            with unit_of_work(self._sessions) as session:
                running = session.scalars(
                    sa.select(ReconciliationRecord).where(
                        ReconciliationRecord.state == reconciliations.RUNNING
                    )
                ).one_or_none()
                if running is not None:
                    if running.lease_expires_at > now:
                        raise ReconcileBusy(reconciliations.run_from_row(running))
                    running.state = reconciliations.ABANDONED
                    running.report = reconciliations.DIED
                    running.ended_at = now
                    _logger.warning(
                        "reconcile_run_died", reconciliation=running.id, runner=running.runner
                    )
                    session.flush()
                if interval is not None:
                    last = session.scalar(
                        sa.select(sa.func.max(ReconciliationRecord.started_at)).where(
                            ReconciliationRecord.trigger == reconciliations.SCHEDULE
                        )
                    )
                    if last is not None and last > now - interval:
                        return None
                row = ReconciliationRecord(
                    trigger=trigger,
                    requested_by=requested_by,
                    runner=self.runner,
                    registries=json.dumps(list(registries)),
                    state=reconciliations.RUNNING,
                    report="",
                    started_at=now,
                    lease_expires_at=now + self.lease,
                    ended_at=None,
                )
                session.add(row)
                session.flush()
                return reconciliations.run_from_row(row)
        except sa.exc.IntegrityError as exc:
            # Another gateway recorded its run between the read and the insert.
            raise ReconcileBusy(self.running()) from exc

    def renew(self, run_id: int, now: datetime) -> None:
        """Extend a run's lease; a failure is logged, not raised (the run goes on, and at
        worst another may start once the lease has run out)."""
        try:
            with unit_of_work(self._sessions) as session:
                session.execute(
                    sa.update(ReconciliationRecord)
                    .where(
                        ReconciliationRecord.id == run_id,
                        ReconciliationRecord.state == reconciliations.RUNNING,
                    )
                    .values(lease_expires_at=now + self.lease)
                )
        except sa.exc.SQLAlchemyError:
            _logger.exception("reconcile_lease_not_renewed", reconciliation=run_id)

    def _end(self, run_id: int, state: str, report: str) -> datetime:
        now = self.clock()
        try:
            with unit_of_work(self._sessions) as session:
                # By id, whatever its state: a run whose lease ran out (marked abandoned
                # by another gateway) that completed all the same is recorded as such.
                session.execute(
                    sa.update(ReconciliationRecord)
                    .where(ReconciliationRecord.id == run_id)
                    .values(state=state, report=report, ended_at=now)
                )
        except sa.exc.SQLAlchemyError:
            if state == reconciliations.COMPLETED:
                raise
            # Already failing: the lease runs out and the next run records it abandoned.
            _logger.exception("reconcile_run_not_ended", reconciliation=run_id, state=state)
        return now

    def running(self) -> reconciliations.Reconciliation | None:
        """The run under way, if any."""
        with read_only(self._sessions) as session:
            row = session.scalars(
                sa.select(ReconciliationRecord).where(
                    ReconciliationRecord.state == reconciliations.RUNNING
                )
            ).one_or_none()
            return None if row is None else reconciliations.run_from_row(row)

    def runs(
        self, *, before_id: int | None, limit: int, trigger: str = ""
    ) -> list[reconciliations.Reconciliation]:
        """Recorded runs newest first (see :func:`reconciliations.list_runs`), each as it
        stands now (:meth:`reconciliations.Reconciliation.as_seen_at`)."""
        now = self.clock()
        with read_only(self._sessions) as session:
            runs = reconciliations.list_runs(
                session, before_id=before_id, limit=limit, trigger=trigger
            )
        return [run.as_seen_at(now) for run in runs]

    def last_completed(self, trigger: str) -> reconciliations.Reconciliation | None:
        """The latest completed run of ``trigger``, of any gateway."""
        with read_only(self._sessions) as session:
            return reconciliations.last_completed(session, trigger)
