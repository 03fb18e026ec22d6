"""The ledger of unit blocks: where every run of units is, in what state, and its mirrors.

All functions work inside the caller's transaction (repositories never commit) and
append exactly one provenance event per state change.  Live rows of one program and
serial series never overlap: ``_claim_range`` checks before every insert, on SQLite
inside the serialized write transaction, and PostgreSQL's exclusion constraint backs
the check up against any writer that got past it.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import plain_rows
from registry_bridge.block_json import attributes_to_json, block_from_parts, block_id_to_dict
from registry_bridge.db import run_plain
from registry_bridge.errors import FailedPrecondition, LedgerConflict, PreconditionViolation
from registry_bridge.event_log import append_event, hold_head
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock, origin_serials
from registry_bridge.plain_rows import PlainRow
from registry_bridge.schema import LedgerBlock


def _ledger_table() -> sa.Table:
    table = LedgerBlock.__table__
    if not isinstance(table, sa.Table):
        raise TypeError(f"LedgerBlock maps {table!r}, not a table")
    return table


class LedgerRow(PlainRow):
    """One row of ``ledger_blocks`` as plain attributes (the names of ``LedgerBlock``'s).

    Held through a transaction (see ``plain_rows``): a group's step reads, splits and
    changes thousands, and as ORM objects they cost more than the rest of the step.
    """

    __slots__ = (
        "account",
        "attributes",
        "id",
        "is_mirror",
        "live",
        "lock_expires_at",
        "lock_transfer_id",
        "origin_program",
        "origin_series",
        "origin_start",
        "program",
        "registry_id",
        "serial_end",
        "serial_series",
        "serial_start",
        "status",
    )

    TABLE = _ledger_table()
    # Every column but created_at, which the database fills in and nothing here reads.
    COLUMNS: ClassVar[Mapping[str, str]] = {
        a: "registry" if a == "registry_id" else a for a in __slots__
    }
    # A row's range and origin never change: a split ends it and inserts its pieces.
    CHANGEABLE: ClassVar[tuple[str, ...]] = (
        "registry_id",
        "account",
        "status",
        "live",
        "lock_transfer_id",
        "lock_expires_at",
    )

    id: int
    program: str
    serial_series: str
    serial_start: int
    serial_end: int
    registry_id: str
    account: str
    status: str
    live: bool
    is_mirror: bool
    origin_program: str
    origin_series: str
    origin_start: int
    attributes: str
    lock_transfer_id: str | None
    lock_expires_at: datetime | None


@dataclass(frozen=True)
class LedgerHolding:
    """A live ledger row: a block, where it is, its state and, for a mirror, its origin."""

    row_id: int
    block: UnitBlock
    registry: str
    account: str
    status: HoldingStatus
    is_mirror: bool
    origin: BlockId
    """The origin range this row stands for (itself, for an origin row)."""
    lock_transfer_id: str | None = None
    lock_expires_at: datetime | None = None


def origin_part(holding: LedgerHolding, start: int, end: int) -> BlockId:
    """The origin serials that ``start``..``end`` of ``holding`` stand for."""
    return origin_serials(holding.block.id, holding.origin, start, end)


def _to_holding(row: LedgerRow) -> LedgerHolding:
    block_id = BlockId(Program(row.program), row.serial_series, row.serial_start, row.serial_end)
    origin = BlockId(
        Program(row.origin_program),
        row.origin_series,
        row.origin_start,
        row.origin_start + (row.serial_end - row.serial_start),
    )
    return LedgerHolding(
        row_id=row.id,
        block=block_from_parts(block_id, row.attributes),
        registry=row.registry_id,
        account=row.account,
        status=HoldingStatus(row.status),
        is_mirror=row.is_mirror,
        origin=origin,
        lock_transfer_id=row.lock_transfer_id,
        lock_expires_at=row.lock_expires_at,
    )


# session.info key: ids of rows read FOR UPDATE in the transaction (see lock_rows_by_id).
_LOCKED_ROWS = "carbonlink.ledger_locked_rows"
# session.info key: the transaction's new rows not yet written (see defer_claims).
_PENDING = "carbonlink.ledger_pending"
# session.info key: the transaction's _Ids.
_IDS = "carbonlink.ledger_ids"
# session.info key: what the transaction's group lookups read at once (see prefetch).
_PREFETCHED = "carbonlink.ledger_prefetched"
# session.info key: the ranges a group checked in this transaction will carve (_Cuts).
_CUTS = "carbonlink.ledger_cuts"
# At most this many ranges are carved by one split: each piece and the transfer it was
# cut for make ~110 bytes of the event, which a trace page of the smallest size allowed
# (16 KiB, see gateway.config) must hold whole with its proof.
_CUTS_PER_SPLIT = 32
# session.info key: the last row id allocated on SQLite in this transaction.
_LAST_SQLITE_ID = "carbonlink.ledger_last_id"
# Ids are allocated for a transaction's new rows a few at first, then in doubling chunks
# up to the largest: a single transfer needs two or three, a batch thousands (on
# PostgreSQL each allocation is a round trip returning one row per id).
_FIRST_ID_CHUNK = 4
_ID_CHUNK = 256


class _Ids:
    """Ids for a transaction's new rows, allocated a chunk at a time (see _fresh_ids)."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._chunk = _FIRST_ID_CHUNK

    def next(self, session: Session) -> int:
        if not self._ids:
            # Reversed, so that pop() hands them out in ascending order.
            self._ids = _allocate_ids(session, self._chunk)[::-1]
            self._chunk = min(self._chunk * 2, _ID_CHUNK)
        return self._ids.pop()


def _next_id(session: Session) -> int:
    ids: _Ids | None = session.info.get(_IDS)
    if ids is None:
        ids = session.info[_IDS] = _Ids()
    return ids.next(session)


class _Pending:
    """New rows of a transaction that writes them only at commit (see ``defer_claims``).

    The overlap checks and mirror lookups that follow in the same transaction must see
    them; they are indexed by serial start per run (and by origin start per origin run,
    for mirrors) so a lookup costs a bisection, not a walk over every new row.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[tuple[int, int, LedgerRow]]] = {}
        self._mirrors: dict[tuple[str, str], list[tuple[int, int, LedgerRow]]] = {}
        self._count = 0

    def add(self, row: LedgerRow) -> None:
        # (start, insertion count) is unique, so entries order without comparing rows.
        self._count += 1
        bisect.insort(
            self._rows.setdefault((row.program, row.serial_series), []),
            (row.serial_start, self._count, row),
        )
        if row.is_mirror:
            bisect.insort(
                self._mirrors.setdefault((row.origin_program, row.origin_series), []),
                (row.origin_start, self._count, row),
            )

    @staticmethod
    def _reaching(
        entries: list[tuple[int, int, LedgerRow]],
        start: int,
        end: int,
        span: Callable[[LedgerRow], tuple[int, int]],
    ) -> list[LedgerRow]:
        # Entries starting after ``end`` cannot overlap; walking back from there, live rows
        # never overlap one another, so the first live one that ends before ``start``
        # closes the search (ended rows are stepped over).
        found: list[LedgerRow] = []
        position = bisect.bisect_right(entries, (end, sys.maxsize))
        for _, _, row in reversed(entries[:position]):
            if not row.live:
                continue
            first, last = span(row)
            if last < start:
                break
            if first <= end:
                found.append(row)
        return found

    def overlapping(self, block_id: BlockId) -> list[LedgerRow]:
        entries = self._rows.get((block_id.program.value, block_id.serial_series), [])
        return self._reaching(
            entries,
            block_id.serial_start,
            block_id.serial_end,
            lambda r: (r.serial_start, r.serial_end),
        )

    def mirrors(self, origin: BlockId) -> list[LedgerRow]:
        entries = self._mirrors.get((origin.program.value, origin.serial_series), [])
        return self._reaching(
            entries,
            origin.serial_start,
            origin.serial_end,
            lambda r: (r.origin_start, r.origin_start + (r.serial_end - r.serial_start)),
        )


_Run = tuple[str, str]
"""A program and serial series: the run of serials a range lies in."""
_Found = list[tuple[int, int, tuple[int, ...]]]
"""Per run, sorted: each range read (first and last serial) and the ids it found."""


class _Prefetched:
    """What one statement read for a whole group's lookups (see ``prefetch``).

    By range: the ids of the live rows (and, apart, of the live mirrors by origin range)
    that the range's own lookup would have found at that moment.  A later lookup of a
    range inside one of them is answered from those rows as the transaction holds them
    now, with the rows it created since (its _Pending), instead of with a statement.
    """

    def __init__(self) -> None:
        self.rows: dict[_Run, _Found] = {}
        self.mirrors: dict[_Run, _Found] = {}

    @staticmethod
    def record(index: dict[_Run, _Found], block_id: BlockId, ids: tuple[int, ...]) -> None:
        bisect.insort(
            index.setdefault((block_id.program.value, block_id.serial_series), []),
            (block_id.serial_start, block_id.serial_end, ids),
        )

    @staticmethod
    def find(index: dict[_Run, _Found], block_id: BlockId) -> tuple[int, ...] | None:
        """The ids read for a range holding all of ``block_id``; None if none was read."""
        entries = index.get((block_id.program.value, block_id.serial_series))
        if not entries:
            return None
        # The range read last among those starting at or before the block; ranges of
        # one group may overlap, so a block another of them holds may be missed: it is
        # then looked up on its own, which is always right.
        position = bisect.bisect_right(entries, (block_id.serial_start, sys.maxsize))
        if position == 0:
            return None
        _, last, ids = entries[position - 1]
        return ids if last >= block_id.serial_end else None


def _allocate_ids(session: Session, count: int) -> list[int]:
    """``count`` unused row ids for this transaction's new rows."""
    with session.no_autoflush:  # allocating writes nothing
        return _fresh_ids(session, count)


# Fixed statements, run as plain text (see db.run_plain): ids are allocated in every
# transaction that adds a row.
_LARGEST_ID = sa.select(sa.func.coalesce(sa.func.max(LedgerBlock.id), 0))
_NEXT_IDS = sa.text(
    "SELECT nextval(pg_get_serial_sequence('ledger_blocks', 'id')) FROM generate_series(1, :n)"
)


def _fresh_ids(session: Session, count: int) -> list[int]:
    if session.get_bind().dialect.name == "sqlite":
        # One writer at a time (BEGIN IMMEDIATE), and rows are never deleted: the ids
        # after the largest are this transaction's to use.
        taken = int(run_plain(session, _LARGEST_ID, {})[0][0])
        last = session.info.get(_LAST_SQLITE_ID, taken)
        start = max(taken, last) + 1
        session.info[_LAST_SQLITE_ID] = start + count - 1
        return list(range(start, start + count))
    return [int(row[0]) for row in run_plain(session, _NEXT_IDS, {"n": count})]


def defer_claims(session: Session) -> None:
    """From now on in this transaction, new and split rows are written at commit.

    For a group of transfers recorded in one transaction: a write per split or mirror cost
    more than the rest of the step.  The ledger's own lookups see them before they are
    written.  On PostgreSQL the exclusion constraint
    then refuses a concurrent claim at the commit, as an ``IntegrityError`` that
    ``is_claim_conflict`` recognizes, instead of as a LedgerConflict at the insert.
    """
    session.info.setdefault(_PENDING, _Pending())


class _Cuts:
    """Ranges that transfers of one group will each carve from their source's rows (see
    ``cut_together``), by holder and run, sorted; none overlaps another."""

    def __init__(self, wanted: Sequence[tuple[str, str, BlockId, str]]) -> None:
        runs: dict[tuple[str, str, str, str], list[tuple[int, int, str]]] = {}
        for registry, account, block_id, transfer_id in wanted:
            key = (registry, account, block_id.program.value, block_id.serial_series)
            runs.setdefault(key, []).append(
                (block_id.serial_start, block_id.serial_end, transfer_id)
            )
        self._runs: dict[tuple[str, str, str, str], list[tuple[int, int, str]]] = {}
        for key, ranges in runs.items():
            ranges.sort()
            # Ranges two transfers want are left to be carved one by one: at most one of
            # the two gets them, and a cut for the other would only cut the winner's.
            apart = [
                r
                for i, r in enumerate(ranges)
                if (i == 0 or ranges[i - 1][1] < r[0])
                and (i + 1 == len(ranges) or r[1] < ranges[i + 1][0])
            ]
            if apart:
                self._runs[key] = apart
        self._decided: set[str] = set()

    def decide(self, transfer_id: str) -> None:
        """``transfer_id`` is checked: nothing more is cut for it."""
        self._decided.add(transfer_id)

    def take(
        self, holding: LedgerHolding, start: int, end: int, transfer_id: str
    ) -> list[tuple[int, int, str]]:
        """The cuts of one split of ``holding``: ``start``..``end`` for ``transfer_id``
        and the other wanted ranges inside the row (at most ``_CUTS_PER_SPLIT`` in all),
        sorted; those are taken and never cut again."""
        own = holding.block.id
        key = (holding.registry, holding.account, own.program.value, own.serial_series)
        ranges = self._runs.get(key, [])
        first = bisect.bisect_left(ranges, (own.serial_start, -1, ""))
        last = bisect.bisect_right(ranges, (own.serial_end, sys.maxsize, ""))
        inside = [
            r for r in ranges[first:last] if r[1] <= own.serial_end and r[2] not in self._decided
        ]
        after = [r for r in inside if r[0] > end]
        before = [r for r in inside if r[1] < start]
        others = (after + before[::-1])[: _CUTS_PER_SPLIT - 1]
        cut = {(s, e) for s, e, _ in others}
        # Taken: the ranges cut here, and any over the requested one (cut here as asked).
        ranges[first:last] = [
            r
            for r in ranges[first:last]
            if (r[0], r[1]) not in cut and not (r[0] <= end and start <= r[1])
        ]
        return sorted([(start, end, transfer_id), *others])


def cut_together(session: Session, wanted: Sequence[tuple[str, str, BlockId, str]]) -> None:
    """Tell this transaction's splits what a group it checks will carve: (registry,
    account, range, transfer) for each range a transfer will take from its source.

    When one of them carves a row, the split cuts out at once the others' ranges inside
    that row too (up to ``_CUTS_PER_SPLIT``): a later carve of such a range finds it a
    row already and splits nothing.  1,000 transfers from one row so leave 32 splits and
    32 remainder rows, not 1,000 of each; the split's event names the transfer each piece
    was cut for.  A range whose transfer is then refused stays a row of its own, with
    the same holder and state: the pieces still sum to the whole.
    """
    session.info[_CUTS] = _Cuts(wanted)


def checked(session: Session, transfer_id: str) -> None:
    """``transfer_id``'s check is over (claimed or refused): no later split of this
    transaction cuts anything for it (see ``cut_together``)."""
    cuts: _Cuts | None = session.info.get(_CUTS)
    if cuts is not None:
        cuts.decide(transfer_id)


def is_claim_conflict(error: sa.exc.IntegrityError) -> bool:
    """Whether ``error`` is PostgreSQL's refusal of overlapping live serials."""
    return "ex_ledger_blocks_live_overlap" in str(error.orig)


def _overlap_query() -> sa.Select[tuple[int]]:
    same_run = (
        LedgerBlock.program == sa.bindparam("program"),
        LedgerBlock.serial_series == sa.bindparam("series"),
        LedgerBlock.live.is_(True),
    )
    # Live rows of one run never overlap one another, so of the live rows starting before
    # the block only the last can reach into it.  Bounding the scan below by that row's
    # start turns "every row starting before the end" (O(n) index entries) into an index
    # seek plus the rows inside the range (O(log n)); the result is the same.
    previous_start = (
        sa.select(LedgerBlock.serial_start)
        .where(*same_run, LedgerBlock.serial_start < sa.bindparam("start"))
        .order_by(LedgerBlock.serial_start.desc())
        .limit(1)
        .scalar_subquery()
    )
    return (
        sa.select(LedgerBlock.id)
        .where(
            *same_run,
            LedgerBlock.serial_start >= sa.func.coalesce(previous_start, sa.bindparam("start")),
            LedgerBlock.serial_start <= sa.bindparam("end"),
            LedgerBlock.serial_end >= sa.bindparam("start"),
        )
        .order_by(LedgerBlock.serial_start)
    )


# Built once: the check runs before every ledger insert, and building and keying the
# statement anew cost more than running it.
_OVERLAP = _overlap_query()


_BY_IDS = LedgerRow.SELECT.where(LedgerBlock.id.in_(sa.bindparam("keys", expanding=True)))
_BY_ID = LedgerRow.SELECT.where(LedgerBlock.id == sa.bindparam("key"))
# Locked in id order: two transactions locking overlapping groups wait for each other
# instead of deadlocking.
_BY_IDS_LOCKED = _BY_IDS.order_by(LedgerBlock.id).with_for_update()
_BY_ID_LOCKED = _BY_ID.with_for_update()


def _read_rows(
    session: Session, id_query: sa.Select[tuple[int]], params: dict[str, Any]
) -> list[LedgerRow]:
    """The live rows whose ids ``id_query`` finds, in its order.

    The ids come from a plain statement on the transaction's connection; rows this
    transaction already holds are taken as it holds them and only the others are read,
    in one query.  Every change that adds or ends a row is written where it is made, or
    indexed in memory (see defer_claims), so nothing needs writing first; a row ended in
    memory but not yet written is dropped by the ``live`` test.

    Raises:
        LedgerConflict: A concurrent transaction ended one of the rows between the two
            reads (PostgreSQL only: SQLite runs one writer at a time).
    """
    ids = [int(row[0]) for row in run_plain(session, id_query, params)]
    unheld = [i for i in ids if plain_rows.held(session, LedgerRow, i) is None]
    kept = read_rows_by_id(session, ids)
    # The ids and the rows are read by two statements.  On PostgreSQL another transaction
    # may commit in between; a row it ended then is gone from what the ids promised, and
    # the rows replacing it are not among them: answering without it would report units
    # missing that are there.  The caller meets a conflict instead, and retries.
    gone = [i for i in unheld if i not in kept or not kept[i].live]
    if gone:
        raise LedgerConflict(
            f"ledger rows {gone} changed under a concurrent writer while being read"
        )
    return [kept[i] for i in ids if i in kept and kept[i].live]


def read_rows_by_id(session: Session, row_ids: Sequence[int]) -> dict[int, LedgerRow]:
    """Read these rows into the transaction at once, for the lookups that follow.

    Returns:
        Those of them that exist, by id, as the transaction holds them.
    """
    return plain_rows.read(session, LedgerRow, row_ids, _BY_ID, _BY_IDS)


def lock_rows_by_id(session: Session, row_ids: Sequence[int]) -> None:
    """Read and lock these rows at once, before the transaction changes any of them.

    On PostgreSQL each change otherwise locks its row with a query of its own (see
    ``_row``); here one statement locks a group's rows, in id order, after the log head
    (see ``event_log.hold_head``), so that two writers never deadlock.  On SQLite the
    transaction holds the whole database already: the rows are only read.
    """
    if session.get_bind().dialect.name == "sqlite":
        read_rows_by_id(session, row_ids)
        return
    locked: set[int] = session.info.setdefault(_LOCKED_ROWS, set())
    wanted = sorted(set(row_ids) - locked)
    if wanted:
        locked.update(_read_locked(session, wanted))


def _read_locked(session: Session, row_ids: Sequence[int]) -> dict[int, LedgerRow]:
    """These rows read afresh and locked (PostgreSQL), after the log head.

    Every ledger row lock is taken here, so that every writer locks in one order, the
    head and then rows (see ``event_log.hold_head``).
    """
    hold_head(session)
    return plain_rows.read(session, LedgerRow, row_ids, _BY_ID_LOCKED, _BY_IDS_LOCKED, fresh=True)


def live_rows_by_id(session: Session, row_ids: Sequence[int]) -> list[LedgerHolding]:
    """The live rows among ``row_ids`` (read into the transaction if it does not hold them)."""
    kept = read_rows_by_id(session, row_ids)
    return [_to_holding(kept[i]) for i in dict.fromkeys(row_ids) if i in kept and kept[i].live]


def _range_params(block_id: BlockId) -> dict[str, Any]:
    """The parameters of the range lookups (``_OVERLAP``, ``_MIRRORS``) for ``block_id``."""
    return {
        "program": block_id.program.value,
        "series": block_id.serial_series,
        "start": block_id.serial_start,
        "end": block_id.serial_end,
    }


def _overlapping(session: Session, block_id: BlockId) -> list[LedgerRow]:
    rows = _prefetched(session, block_id, mirrors=False)
    if rows is None:
        rows = _read_rows(session, _OVERLAP, _range_params(block_id))
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is not None:
        rows = _merged(rows, pending.overlapping(block_id), lambda r: r.serial_start)
    return rows


def _merged(
    read: list[LedgerRow], new: list[LedgerRow], order: Callable[[LedgerRow], int]
) -> list[LedgerRow]:
    if not new:
        return read
    # A row is one object whether or not it was written and a query read it back.
    return sorted({id(r): r for r in [*read, *new]}.values(), key=order)


def overlapping(session: Session, block_id: BlockId) -> list[LedgerHolding]:
    """Live rows of ``block_id``'s program and series that share a serial with it.

    The double-counting check behind every insert (and what ``bench.overlap`` times).
    """
    return [_to_holding(r) for r in _overlapping(session, block_id)]


def _claim_range(session: Session, block_id: BlockId) -> None:
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is not None and session.get_bind().dialect.name == "postgresql":
        # Claims written at commit (defer_claims) on PostgreSQL: the exclusion constraint
        # refuses there any overlap with a live row, as a conflict the caller redoes with
        # a check per claim; a query here would only repeat it, a round trip per claim.
        # Rows of this transaction not yet written are checked in memory.
        clash = pending.overlapping(block_id)
    else:
        clash = _overlapping(session, block_id)
    if clash:
        raise LedgerConflict(
            f"{block_id.label} overlaps live units already in the ledger "
            f"({', '.join(_to_holding(r).block.id.label for r in clash)})"
        )


def _event_body(holding: LedgerHolding, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "block": block_id_to_dict(holding.block.id),
        "origin": block_id_to_dict(holding.origin),
        "registry": holding.registry,
        "account": holding.account,
        "status": holding.status.value,
        "mirror": holding.is_mirror,
        "row": holding.row_id,
    }
    body.update(extra)
    return body


def _ranges(holding: LedgerHolding) -> tuple[BlockId, ...]:
    """The serial ranges an event about ``holding`` is indexed under (see TraceUnits)."""
    return (holding.block.id, holding.origin)


def _new_row(
    session: Session,
    block: UnitBlock,
    registry: str,
    account: str,
    status: HoldingStatus,
    origin: BlockId,
    is_mirror: bool,
    lock_transfer_id: str | None = None,
    lock_expires_at: datetime | None = None,
    attributes: str | None = None,
) -> LedgerRow:
    """A new live row (``attributes``: the block's attributes JSON, when already known)."""
    row = LedgerRow(
        id=_next_id(session),
        program=block.id.program.value,
        serial_series=block.id.serial_series,
        serial_start=block.id.serial_start,
        serial_end=block.id.serial_end,
        registry_id=registry,
        account=account,
        status=status.value,
        live=True,
        is_mirror=is_mirror,
        origin_program=origin.program.value,
        origin_series=origin.serial_series,
        origin_start=origin.serial_start,
        attributes=attributes_to_json(block) if attributes is None else attributes,
        lock_transfer_id=lock_transfer_id,
        lock_expires_at=lock_expires_at,
    )
    plain_rows.add(session, row)
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is not None:
        pending.add(row)
    return row


def _write_claims(session: Session, block_id: BlockId) -> None:
    """Write the new and changed rows now; a concurrent claim of the same serials becomes
    a LedgerConflict.

    Only the ledger rows are written: the overlap checks that follow must see them, while
    the transaction's events and steps are cheaper written together at commit.
    """
    if _PENDING in session.info:
        return  # written at commit (see defer_claims)
    try:
        plain_rows.write(session, LedgerRow)
    except sa.exc.IntegrityError as exc:
        # PostgreSQL's exclusion constraint caught a concurrent writer that our own check
        # could not see yet: the other transaction won the race for these serials.
        raise LedgerConflict(f"{block_id.label} was claimed by a concurrent transaction") from exc


def _insert(
    session: Session,
    block: UnitBlock,
    registry: str,
    account: str,
    status: HoldingStatus,
    origin: BlockId,
    is_mirror: bool,
) -> LedgerHolding:
    _claim_range(session, block.id)
    row = _new_row(session, block, registry, account, status, origin, is_mirror)
    _write_claims(session, block.id)
    return _to_holding(row)


def _row(session: Session, holding: LedgerHolding) -> LedgerRow:
    """The row behind ``holding``, locked, and only if it is still as the caller read it.

    Callers plan from rows read earlier in their transaction; on PostgreSQL a concurrent
    transaction may have changed the row since.  Comparing state and lock after taking the
    row lock turns that race into a LedgerConflict instead of a silent overwrite.
    """
    row = plain_rows.held(session, LedgerRow, holding.row_id)
    if row is not None and plain_rows.is_new(session, row):
        pass  # created by this transaction and not yet written: no one else can have it
    elif session.get_bind().dialect.name == "sqlite":
        # SQLite runs one write transaction at a time (BEGIN IMMEDIATE) and every session
        # is one transaction: a row this session already read is the row as it is now.
        if row is None:
            row = read_rows_by_id(session, [holding.row_id]).get(holding.row_id)
    elif holding.row_id in session.info.get(_LOCKED_ROWS, ()):
        pass  # locked by this transaction already: held as it is now, and ours
    else:
        # Read again under the row's lock, every time: a savepoint that rolled back may
        # have taken an earlier lock along.  A row with changes not yet written was
        # locked when they were made (rows change only here) and stays as held.
        row = _read_locked(session, [holding.row_id]).get(holding.row_id)
    if (
        row is None
        or not row.live
        or row.status != holding.status.value
        or row.lock_transfer_id != holding.lock_transfer_id
        or row.registry_id != holding.registry
        or row.account != holding.account
    ):
        raise LedgerConflict(f"{holding.block.id.label} changed under a concurrent writer")
    return row


def issue(
    session: Session,
    registry: str,
    account: str,
    block: UnitBlock,
    at: datetime,
    status: HoldingStatus = HoldingStatus.ACTIVE,
) -> LedgerHolding:
    """Record an issuance (or an import of a registry's existing units, in the status the
    registry shows them: units retired before the gateway knew them are still issued, and
    must never be issued or used again).

    Raises:
        LedgerConflict: Some of the serials are already live in the ledger (double
            issuance of one program's serials).
    """
    holding = _insert(session, block, registry, account, status, block.id, is_mirror=False)
    append_event(
        session,
        "issuance",
        _event_body(holding, attributes=attributes_to_json(block)),
        at,
        blocks=_ranges(holding),
    )
    return holding


def live_at(
    session: Session, registry: str, account: str, block_id: BlockId
) -> list[LedgerHolding]:
    """Live rows held at ``registry``/``account`` that overlap ``block_id``."""
    return [
        _to_holding(r)
        for r in _overlapping(session, block_id)
        if r.registry_id == registry and r.account == account
    ]


def locked_by(
    session: Session, registry: str, account: str, block_id: BlockId, owner: str
) -> list[LedgerHolding]:
    """Live rows held at ``registry``/``account`` over ``block_id`` that ``owner`` (a
    transfer or a use) locked."""
    return [h for h in live_at(session, registry, account, block_id) if h.lock_transfer_id == owner]


def _bridged(session: Session, holding: LedgerHolding) -> str:
    """Why bridged units cannot be used here: immobilized, their mirror is elsewhere.

    The mirror's registry is named, never its account: whoever holds the mirror now may
    have bought it since, and who holds which units is each holder's own business.
    """
    mirrors = sorted({m.registry for m in mirrors_of(session, holding.origin)})
    return f"units are bridged out: their mirror is at {', '.join(mirrors) or 'no registry'}"


def require_holding(
    session: Session,
    registry: str,
    account: str,
    block_id: BlockId,
    allowed: Sequence[HoldingStatus] = (HoldingStatus.ACTIVE,),
) -> list[LedgerHolding]:
    """The live rows that together hold exactly the units of ``block_id``.

    Raises:
        FailedPrecondition: Some units are not held by the account, or not in an allowed
            state (retired, locked by another transfer, ...); the violation names them.
    """
    rows = [_to_holding(r) for r in _overlapping(session, block_id)]
    problems: list[PreconditionViolation] = []
    covered = block_id.serial_start
    for holding in rows:
        if holding.block.id.serial_start > covered:
            break
        if holding.registry != registry or holding.account != account:
            # Another party's units: the caller learns they are not its own, never whose
            # they are, what became of them, nor how many more that party holds.
            asked = BlockId(
                block_id.program,
                block_id.serial_series,
                max(holding.block.id.serial_start, block_id.serial_start),
                min(holding.block.id.serial_end, block_id.serial_end),
            )
            problems.append(
                PreconditionViolation("HOLDER", asked.label, f"not held by {registry}/{account}")
            )
        elif holding.status not in allowed:
            problems.append(
                PreconditionViolation(
                    "STATUS",
                    holding.block.id.label,
                    _bridged(session, holding)
                    if holding.status is HoldingStatus.BRIDGED
                    else f"units are {holding.status.value}",
                )
            )
        covered = max(covered, holding.block.id.serial_end + 1)
    if covered <= block_id.serial_end:
        problems.append(
            PreconditionViolation(
                "UNKNOWN_UNITS",
                block_id.label,
                f"serials from {covered} are not in the ledger at {registry}/{account}",
            )
        )
    if problems:
        raise FailedPrecondition(
            f"{registry}/{account} cannot use {block_id.label}: "
            + "; ".join(f"{p.subject}: {p.description}" for p in problems),
            problems,
        )
    return rows


def carve(
    session: Session, holding: LedgerHolding, block_id: BlockId, at: datetime, transfer_id: str = ""
) -> LedgerHolding:
    """Split ``holding`` so that exactly ``block_id`` (within it) is one row; returns that row.

    The pieces always sum to the whole; one ``split`` event records the cut (with, under
    ``cut_together``, the other ranges of the group cut in the same split).
    """
    own = holding.block.id
    start = max(own.serial_start, block_id.serial_start)
    end = min(own.serial_end, block_id.serial_end)
    if (start, end) == (own.serial_start, own.serial_end):
        return holding
    if start > end:
        raise LedgerConflict(f"{block_id.label} is not inside {own.label}")
    row = _row(session, holding)
    row.live = False
    group: _Cuts | None = session.info.get(_CUTS)
    cuts = (
        [(start, end, transfer_id)]
        if group is None
        else group.take(holding, start, end, transfer_id)
    )
    # The pieces lie inside a live row this transaction holds, and live rows never overlap,
    # so they need no overlap check of their own; one write (or the commit, under
    # defer_claims) ends the row and inserts them (changed rows are written before new
    # ones, as PostgreSQL's exclusion constraint needs).
    spans: list[tuple[int, int, str]] = []
    at_serial = own.serial_start
    for cut_start, cut_end, cut_for in cuts:
        if at_serial < cut_start:
            spans.append((at_serial, cut_start - 1, ""))
        spans.append((cut_start, cut_end, cut_for))
        at_serial = cut_end + 1
    if at_serial <= own.serial_end:
        spans.append((at_serial, own.serial_end, ""))
    pieces: list[LedgerHolding] = []
    wanted: LedgerHolding | None = None
    for piece_start, piece_end, _ in spans:
        piece = _to_holding(
            _new_row(
                session,
                holding.block.with_range(piece_start, piece_end),
                holding.registry,
                holding.account,
                holding.status,
                origin_part(holding, piece_start, piece_end),
                holding.is_mirror,
                holding.lock_transfer_id,
                holding.lock_expires_at,
                # A split keeps every attribute but the range, which is not in them.
                attributes=row.attributes,
            )
        )
        pieces.append(piece)
        if piece_start == start:
            wanted = piece
    _write_claims(session, own)
    assert wanted is not None  # start..end is one of the spans (start <= end, checked above)
    # Cut for others too: each piece names the transfer it was cut for ("" for the rest).
    named = {"cut_for": [c for _, _, c in spans]} if len(cuts) > 1 else {}
    append_event(
        session,
        "split",
        _event_body(holding, pieces=[block_id_to_dict(p.block.id) for p in pieces], **named),
        at,
        transfer_id,
        blocks=_ranges(holding),
    )
    return wanted


def change(
    session: Session,
    holding: LedgerHolding,
    kind: str,
    at: datetime,
    *,
    status: HoldingStatus | None = None,
    registry: str | None = None,
    account: str | None = None,
    lock_transfer_id: str | None = None,
    lock_expires_at: datetime | None = None,
    transfer_id: str = "",
    detail: dict[str, Any] | None = None,
) -> LedgerHolding:
    """Change a row's state or holder and record one event of ``kind``.

    Raises:
        FailedPrecondition: The row is in a terminal state (terminal states never change).
    """
    if holding.status.is_terminal:
        raise FailedPrecondition(
            f"{holding.block.id.label} is {holding.status.value}: terminal states never change",
            [PreconditionViolation("TERMINAL", holding.block.id.label, holding.status.value)],
        )
    row = _row(session, holding)
    if status is not None:
        row.status = status.value
    if registry is not None:
        row.registry_id = registry
    if account is not None:
        row.account = account
    row.lock_transfer_id = lock_transfer_id
    row.lock_expires_at = lock_expires_at
    # Not written here: a change keeps the row's serials and liveness, so it cannot clash
    # with a claim, and the transaction's next write (before a query, a savepoint or the
    # commit) takes it along.
    changed = _to_holding(row)
    append_event(
        session,
        kind,
        _event_body(changed, previous_status=holding.status.value, **(detail or {})),
        at,
        transfer_id,
        blocks=_ranges(changed),
    )
    return changed


def add_mirror(
    session: Session,
    registry: str,
    account: str,
    mirror: UnitBlock,
    origin: BlockId,
    at: datetime,
    transfer_id: str,
) -> LedgerHolding:
    """Record a mirror block a destination registry issued for ``origin``."""
    if mirror.quantity != origin.quantity:
        raise LedgerConflict(
            f"mirror {mirror.id.label} has {mirror.quantity} units but its origin "
            f"{origin.label} has {origin.quantity}"
        )
    holding = _insert(
        session, mirror, registry, account, HoldingStatus.ACTIVE, origin, is_mirror=True
    )
    append_event(session, "credit", _event_body(holding), at, transfer_id, blocks=_ranges(holding))
    return holding


def end_mirror(session: Session, holding: LedgerHolding, at: datetime, transfer_id: str) -> None:
    """A mirror returned to its origin side: its row stops being live, exported."""
    row = _row(session, holding)
    row.live = False
    row.status = HoldingStatus.EXPORTED.value
    # Written now, so a later claim of these serials in the same transaction is not
    # refused by PostgreSQL's exclusion constraint over live rows.
    if _PENDING not in session.info:
        plain_rows.write(session, LedgerRow)
    append_event(
        session,
        "finalize",
        # Says where the units went, as the registry does: a reader of the trail would
        # otherwise see the mirror's last status as still locked.
        _event_body(
            holding,
            status=HoldingStatus.EXPORTED.value,
            previous_status=holding.status.value,
            exported=True,
        ),
        at,
        transfer_id,
        blocks=_ranges(holding),
    )


def origin_rows(session: Session, origin: BlockId) -> list[LedgerHolding]:
    """The live origin rows (not mirrors) overlapping an origin range."""
    return [_to_holding(r) for r in _overlapping(session, origin) if not r.is_mirror]


def _mirrors_query() -> sa.Select[tuple[int]]:
    live_mirrors = (
        # Spelled as the partial index ix_ledger_blocks_live_mirrors is, so it is used.
        LedgerBlock.is_mirror == sa.true(),
        LedgerBlock.live == sa.true(),
        LedgerBlock.origin_program == sa.bindparam("program"),
        LedgerBlock.origin_series == sa.bindparam("series"),
    )
    # A serial has at most one live mirror, so live mirrors' origin ranges never overlap:
    # of those starting before the range only the last can reach into it (as in
    # _overlap_query), which bounds the index scan instead of reading every earlier mirror.
    previous_start = (
        sa.select(LedgerBlock.origin_start)
        .where(*live_mirrors, LedgerBlock.origin_start < sa.bindparam("start"))
        .order_by(LedgerBlock.origin_start.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.select(LedgerBlock.id).where(
        *live_mirrors,
        LedgerBlock.origin_start >= sa.func.coalesce(previous_start, sa.bindparam("start")),
        LedgerBlock.origin_start <= sa.bindparam("end"),
    )


_MIRRORS = _mirrors_query()


def mirrors_of(session: Session, origin: BlockId) -> list[LedgerHolding]:
    """Live mirror rows standing for any part of an origin range."""
    kept = _prefetched(session, origin, mirrors=True)
    if kept is None:
        kept = _read_rows(session, _MIRRORS, _range_params(origin))
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is not None:
        kept = _merged(kept, pending.mirrors(origin), lambda r: r.origin_start)
    found = [_to_holding(r) for r in kept]
    return [h for h in found if h.origin.overlaps(origin)]


# One statement for many range lookups (PostgreSQL): each range's _OVERLAP or _MIRRORS,
# run per element of the arrays, its ids tagged with the element's position.  OFFSET 0
# keeps each lookup a subquery of its own: pulled up into the outer query, it became a
# hash join testing every range against every live row, its bound re-sought per pair.
_PREFETCH_FROM = """
SELECT q.n, hit.id
FROM unnest(
    CAST(:programs AS text[]), CAST(:series AS text[]),
    CAST(:starts AS bigint[]), CAST(:ends AS bigint[])
) WITH ORDINALITY AS q(program, series, first, last, n)
CROSS JOIN LATERAL ({lookup}
    OFFSET 0) AS hit
"""
_PREFETCH_ROWS = sa.text(
    _PREFETCH_FROM.format(
        lookup="""
        SELECT b.id FROM ledger_blocks AS b
        WHERE b.program = q.program AND b.serial_series = q.series AND b.live IS true
          AND b.serial_start >= coalesce((
              SELECT p.serial_start FROM ledger_blocks AS p
              WHERE p.program = q.program AND p.serial_series = q.series AND p.live IS true
                AND p.serial_start < q.first
              ORDER BY p.serial_start DESC LIMIT 1
          ), q.first)
          AND b.serial_start <= q.last AND b.serial_end >= q.first"""
    )
)
# Spelled as the partial index ix_ledger_blocks_live_mirrors is, so it is used.
_PREFETCH_MIRRORS = sa.text(
    _PREFETCH_FROM.format(
        lookup="""
        SELECT b.id FROM ledger_blocks AS b
        WHERE b.is_mirror AND b.live
          AND b.origin_program = q.program AND b.origin_series = q.series
          AND b.origin_start >= coalesce((
              SELECT p.origin_start FROM ledger_blocks AS p
              WHERE p.is_mirror AND p.live
                AND p.origin_program = q.program AND p.origin_series = q.series
                AND p.origin_start < q.first
              ORDER BY p.origin_start DESC LIMIT 1
          ), q.first)
          AND b.origin_start <= q.last"""
    )
)


def prefetch(session: Session, blocks: Sequence[BlockId], *, mirrors: bool = False) -> bool:
    """Read at once what the lookups of ``blocks`` will ask, for a group of transfers.

    The live rows over each block (``overlapping`` and what builds on it) or, with
    ``mirrors``, the live mirrors of each origin range (``mirrors_of``): one statement
    for the group instead of one per lookup, each a round trip on PostgreSQL.  A lookup
    inside a block read here is then answered from the rows the transaction holds.

    Only on PostgreSQL, and only in a transaction whose claims are written at commit
    (``defer_claims``): there every row it adds is indexed in memory and every row it
    ends is ended in memory, so the rows read here, as the transaction holds them, with
    its new ones, are what the lookup would read.  A row another transaction commits
    meanwhile is missed as it would be a moment later; one it changes is caught where
    the row is locked and compared before it changes (``_row``), as for any lookup.
    On SQLite a lookup is a call into the same process and gains nothing from this.

    Returns:
        Whether lookups are read ahead here (PostgreSQL, claims written at commit).
    """
    if _PENDING not in session.info or session.get_bind().dialect.name != "postgresql":
        return False
    if not blocks:
        return True
    found: dict[int, list[int]] = {}
    for position, row_id in run_plain(
        session,
        _PREFETCH_MIRRORS if mirrors else _PREFETCH_ROWS,
        {
            "programs": [b.program.value for b in blocks],
            "series": [b.serial_series for b in blocks],
            "starts": [b.serial_start for b in blocks],
            "ends": [b.serial_end for b in blocks],
        },
    ):
        found.setdefault(int(position) - 1, []).append(int(row_id))
    kept = read_rows_by_id(session, [i for ids in found.values() for i in ids])
    prefetched: _Prefetched = session.info.setdefault(_PREFETCHED, _Prefetched())
    index = prefetched.mirrors if mirrors else prefetched.rows
    for position, block_id in enumerate(blocks):
        ids = tuple(found.get(position, ()))
        # A row ended by a transaction that committed between the two reads: this
        # range is left to its own lookup, which meets the change as it would have.
        if all(i in kept and kept[i].live for i in ids):
            _Prefetched.record(index, block_id, ids)
    return True


def _prefetched(session: Session, block_id: BlockId, *, mirrors: bool) -> list[LedgerRow] | None:
    """The live rows (or live mirrors) over ``block_id`` from a ``prefetch``, in serial
    (or origin) order; None when none covers it."""
    prefetched: _Prefetched | None = session.info.get(_PREFETCHED)
    if prefetched is None or _PENDING not in session.info:
        return None
    ids = _Prefetched.find(prefetched.mirrors if mirrors else prefetched.rows, block_id)
    if ids is None:
        return None
    rows: list[LedgerRow] = []
    for row_id in ids:
        row = plain_rows.held(session, LedgerRow, row_id)
        if row is None:
            return None  # no longer held as read: looked up afresh
        if row.live:
            rows.append(row)
    if mirrors:
        return sorted(rows, key=lambda r: r.origin_start)
    return sorted(
        (
            r
            for r in rows
            if r.serial_start <= block_id.serial_end and r.serial_end >= block_id.serial_start
        ),
        key=lambda r: r.serial_start,
    )


def all_live(session: Session) -> list[LedgerHolding]:
    """Every live row (for invariants and reconciliation)."""
    query = LedgerRow.SELECT.where(LedgerBlock.live.is_(True))
    return _holdings(session, query)


def holdings_of(session: Session, registry: str, account: str = "") -> list[LedgerHolding]:
    """Live rows held at a registry (one account, when given)."""
    query = LedgerRow.SELECT.where(LedgerBlock.live.is_(True), LedgerBlock.registry_id == registry)
    if account:
        query = query.where(LedgerBlock.account == account)
    return _holdings(session, query)


def _holdings(session: Session, query: sa.Select[Any]) -> list[LedgerHolding]:
    # Read after everything the transaction changed is written (the query hook), and not
    # held: a listing only reports.
    rows = session.execute(query.order_by(LedgerBlock.id)).mappings()
    return [_to_holding(LedgerRow(**r)) for r in rows]
