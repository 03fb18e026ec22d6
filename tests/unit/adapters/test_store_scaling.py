"""The emulator store's operations cost O(log n) in the rows it holds, with the same answers.

The bench leaves tens of thousands of one-unit blocks in each registry, and every
operation used to read work proportional to them.  Held here two ways, neither timed:
the query plan of every statement an operation runs (an index seek bounded on both
sides, never a scan or a one-sided range over the serials), and the count of sqlite
virtual-machine steps an operation takes, which must not change with the history behind
it.  Exported rows may overlap (units delivered out and held again), so the layered
lookup of them is checked against every row read plainly, and on a store file written
before layers existed.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from adapters.emulator_core import CreditMode, Rejection, Store, StoredHolding
from registry_bridge.model import BlockId, Program, UnitBlock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


class Clock:
    """A store clock the test moves."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def block(start: int, end: int, series: str = "") -> UnitBlock:
    """A CCER block over ``start..end``."""
    return UnitBlock(
        id=BlockId(Program.CCER, series, start, end),
        project_id="P1",
        country="CN",
        vintage_start=date(2024, 1, 1),
        vintage_end=date(2024, 12, 31),
    )


def unit(serial: int, series: str = "") -> BlockId:
    return BlockId(Program.CCER, series, serial, serial)


def registry(
    mode: CreditMode = CreditMode.MIRROR, clock: Clock | None = None, path: Path | None = None
) -> Store:
    opened = Store("reg", frozenset({Program.CCER}), mode, path=path, clock=clock or Clock())
    for account in ("A", "B"):  # credited before (or without) any issuance into them
        opened.open_account(account)
    return opened


def with_history(store: Store, transfers: int) -> None:
    """One-unit transfers out of one issued block and into a mirror, as the bench leaves."""
    store.issue("seed", "A", block(1, 1_000_000))
    for i in range(1, transfers + 1):
        store.lock(f"lock-{i}", "A", unit(i), LATER, f"t{i}")
        # Both ends a transfer leaves on the source: immobilized units and exported ones.
        store.finalize(f"finalize-{i}", "A", unit(i), f"t{i}", export=i % 2 == 0)
        store.credit(f"credit-{i}", "B", block(i, i, "origin"), "other", f"t{i}")


def hot_operations(store: Store, clock: Clock, next_serial: int) -> dict[str, Callable[[], object]]:
    """One of each operation a transfer or a query makes, on units after the history."""
    k = next_serial
    return {
        "operation id lookup": lambda: store.operation("seed"),
        "repeat": lambda: store.issue("seed", "A", block(1, 1_000_000)),
        "lock": lambda: store.lock("L1", "A", unit(k), LATER, "x1"),
        "finalize (immobilize)": lambda: store.finalize("F1", "A", unit(k), "x1", export=False),
        "credit back (reactivate)": lambda: store.credit("C1", "A", block(k, k), "other", "x1"),
        "lock to immobilize": lambda: store.lock("L1b", "A", unit(k), LATER, "x1b"),
        "immobilize": lambda: store.finalize("F1b", "A", unit(k), "x1b", export=False),
        "reactivate": lambda: store.reactivate("RA", "A", unit(k), "x1b"),
        "lock again": lambda: store.lock("L2", "A", unit(k), LATER, "x2"),
        "unlock": lambda: store.unlock("U2", "A", unit(k), "x2"),
        "lock to export": lambda: store.lock("L3", "A", unit(k), LATER, "x3"),
        "finalize (export)": lambda: store.finalize("F3", "A", unit(k), "x3", export=True),
        "lock on exported units": lambda: store.lock("L4", "A", unit(k), LATER, "x4"),
        "lock to expire": lambda: store.lock("L5", "A", unit(k + 1), LATER, "x5"),
        "expiry": lambda: setattr(clock, "now", LATER + timedelta(seconds=1)),
        "expired lock released": lambda: store.retire("R5", "A", unit(k + 2)),
        "surrender": lambda: store.surrender("S7", "A", unit(k + 4)),
        "cancel": lambda: store.cancel("X8", "A", unit(k + 5)),
        "credit (mirror)": lambda: store.credit("C9", "B", block(k, k, "origin"), "other", "x9"),
        "duplicate issuance": lambda: store.issue("I10", "A", block(k, k + 3)),
        "issue": lambda: store.issue("I11", "A", block(2_000_000, 2_000_009)),
        "find": lambda: store.find(BlockId(Program.CCER, "", k - 2, k + 6)),
    }


REFUSED = {"lock on exported units": "UNITS_EXPORTED", "duplicate issuance": "DUPLICATE_ISSUANCE"}
"""The operations of ``hot_operations`` that are refused: refusals must be as cheap."""


def run_all(operations: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Run the operations in order; the refused ones, with their codes."""
    refused = {}
    for name, run in operations.items():
        try:
            run()
        except Rejection as rejection:
            refused[name] = rejection.code
    return refused


@contextmanager
def traced(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store runs inside the block, values inlined."""
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        store._db.set_trace_callback(None)


def unbounded_reads(db: sqlite3.Connection, statement: str) -> list[str]:
    """The steps of a statement's plan that may read rows in proportion to the table."""
    plan = [
        (node, parent, detail)
        for node, parent, _, detail in db.execute(f"EXPLAIN QUERY PLAN {statement}")
    ]
    one_row = {node for node, _, detail in plan if detail.startswith("SCALAR SUBQUERY")}
    problems = []
    for _, parent, detail in plan:
        if detail.startswith("SCAN") and detail != "SCAN CONSTANT ROW":
            problems.append(detail)
        elif detail.startswith("SEARCH blocks"):
            constraint = detail[detail.find("(") :]
            two_sided = any(
                f"{column}>?" in constraint and f"{column}<?" in constraint
                for column in ("serial_start", "mirror_start")
            )
            single_row = constraint == "(rowid=?)" or parent in one_row
            limited = statement.rstrip().endswith("LIMIT 1")
            # The expiry index holds locked rows only, and the operation releases every
            # one it reads: its reads are the work the operation has to do.
            expired_locks = "blocks_lock_expiry" in detail
            if not (two_sided or single_row or limited or expired_locks):
                problems.append(detail)
        elif detail.startswith("SEARCH") and not detail.endswith(
            ("(operation_id=?)", "(name=?)", "(account=?)")  # primary keys: one row
        ):
            problems.append(detail)
    return problems


@pytest.mark.parametrize("mode", [CreditMode.MIRROR, CreditMode.HOLD])
def test_every_statement_of_an_operation_seeks_an_index(mode: CreditMode) -> None:
    clock = Clock()
    store = registry(mode, clock)
    with_history(store, 20)
    with traced(store) as statements:
        assert run_all(hot_operations(store, clock, 100)) == REFUSED
    reads = sorted(
        {s for s in statements if s.split()[0].upper() in ("SELECT", "UPDATE", "DELETE")}
    )
    assert len(reads) > 10  # the trace saw the operations
    assert any("FROM blocks WHERE state = 'locked'" in s for s in reads)
    assert any("mirror_program = 'CCER'" in s for s in reads) == (mode is CreditMode.MIRROR)
    problems = {s: p for s in reads if (p := unbounded_reads(store._db, s))}
    assert problems == {}


def test_the_old_serial_range_lookup_would_be_caught() -> None:
    # The check above is only as good as its rules: the lookup every operation made
    # before, bounded on one side, must fail them.
    store = registry()
    before = (
        "SELECT id FROM blocks WHERE program = 'CCER' AND series = '' "
        "AND serial_start <= 5 AND serial_end >= 5 ORDER BY program, series, serial_start"
    )
    assert unbounded_reads(store._db, before)
    assert unbounded_reads(store._db, "SELECT id FROM blocks WHERE account = 'A'")


def vm_steps(store: Store, operations: dict[str, Callable[[], object]]) -> dict[str, int]:
    """sqlite virtual-machine instructions each operation takes: its work, untimed."""
    counts: dict[str, int] = {}
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    store._db.set_progress_handler(count, 1)
    try:
        for name, run in operations.items():
            steps = 0
            with suppress(Rejection):
                run()
            counts[name] = steps
    finally:
        store._db.set_progress_handler(None, 1)
    return counts


def test_the_work_of_an_operation_does_not_grow_with_the_history() -> None:
    def measured(transfers: int) -> dict[str, int]:
        clock = Clock()
        store = registry(clock=clock)
        with_history(store, transfers)
        return vm_steps(store, hot_operations(store, clock, transfers + 1))

    short, long = measured(30), measured(600)
    # Twenty times the rows, the same steps: B-tree depth is inside one seek step, and
    # nothing reads a row it does not need (the old lookups took ~13 steps per row).
    assert long == short


def layers(store: Store) -> dict[tuple[str, int], list[tuple[int, int, str]]]:
    rows = store._db.execute(
        "SELECT series, layer, serial_start, serial_end, state FROM blocks "
        "ORDER BY series, layer, serial_start"
    ).fetchall()
    found: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for series, layer, start, end, state in rows:
        found.setdefault((series, layer), []).append((start, end, state))
    return found


def assert_layers_hold(store: Store) -> None:
    """Live rows in layer 0, exported ones above, and no two rows of a layer overlap."""
    for (_, layer), rows in layers(store).items():
        assert all((state == "exported") == (layer > 0) for _, _, state in rows)
        for (_, end, _), (start, _, _) in itertools.pairwise(rows):
            assert end < start


def plainly_overlapping(store: Store, block_id: BlockId) -> list[StoredHolding]:
    """``find`` without any index: every row read, filtered and ordered here."""
    return [
        h
        for h in store.holdings(include_exported=True)
        if h.block.id.program == block_id.program
        and h.block.id.serial_series == block_id.serial_series
        and h.block.id.serial_start <= block_id.serial_end
        and h.block.id.serial_end >= block_id.serial_start
    ]


def deliver_out_and_back(store: Store, rounds: int) -> None:
    """A venue's position delivered out and returned, whole and in parts, ``rounds`` times."""
    n = 0

    def export(start: int, end: int) -> None:
        nonlocal n
        n += 1
        units = BlockId(Program.CCER, "venue", start, end)
        store.lock(f"out-lock-{n}", "A", units, LATER, f"out-{n}")
        store.finalize(f"out-{n}", "A", units, f"out-{n}", export=True)

    for r in range(rounds):
        store.credit(f"in-{r}", "A", block(1, 10, "venue"), "other", f"in-{r}")
        export(1, 10)
        store.credit(f"in-part-{r}", "A", block(3, 6, "venue"), "other", f"in-part-{r}")
        export(3, 4)
        export(5, 6)
    # Held again at the end, over serials exported in every round.
    store.credit("in-last", "A", block(2, 8, "venue"), "other", "in-last")


def test_exported_rows_that_overlap_are_found_as_before() -> None:
    store = registry(CreditMode.HOLD)
    deliver_out_and_back(store, 3)
    assert_layers_hold(store)
    assert max(layer for _, layer in layers(store)) >= 3  # the rows do overlap
    for start in range(0, 12):
        for end in range(start, 12):
            block_id = BlockId(Program.CCER, "venue", start, end)
            assert store.find(block_id) == plainly_overlapping(store, block_id)
    # The held units move; the exported history under them refuses nothing.
    store.lock("again", "A", BlockId(Program.CCER, "venue", 2, 8), LATER, "t")
    with pytest.raises(Rejection, match="UNITS_EXPORTED"):
        store.lock("gone", "A", BlockId(Program.CCER, "venue", 10, 10), LATER, "t")
    with pytest.raises(Rejection, match="DUPLICATE_CREDIT"):
        store.credit("twice", "A", block(5, 5, "venue"), "other", "t")


def test_rows_of_one_start_read_in_the_order_they_were_written() -> None:
    # Exported history first, then the units held again over it: splits cut a row down
    # in place rather than writing it anew, and must not change that order.
    store = registry(CreditMode.HOLD)
    deliver_out_and_back(store, 3)
    # Held again: 2..8.  Each lock leaves the row cut down to the units before or after
    # it, one of them starting where exported rows start (3).
    store.lock("cut", "A", BlockId(Program.CCER, "venue", 2, 2), LATER, "t")
    store.lock("cut-again", "A", BlockId(Program.CCER, "venue", 5, 5), LATER, "t2")
    found = store.find(BlockId(Program.CCER, "venue", 0, 20))
    assert found == plainly_overlapping(store, BlockId(Program.CCER, "venue", 0, 20))
    for start in {h.block.id.serial_start for h in found}:
        states = [h.state.value for h in found if h.block.id.serial_start == start]
        exported = [s for s in states if s == "exported"]
        assert states == exported + [s for s in states if s != "exported"], (start, states)
    assert [h.block.id.serial_start for h in found if h.state.value != "exported"] == [2, 3, 5, 6]


def test_a_store_file_from_before_layers_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = registry(CreditMode.HOLD, path=path)
    deliver_out_and_back(store, 2)
    expected = plainly_overlapping(store, BlockId(Program.CCER, "venue", 0, 20))
    store.close()
    # Back to the schema of a file written before layers: no layer column, no new index.
    db = sqlite3.connect(path)
    for index in ("blocks_layer", "blocks_mirror", "blocks_lock_expiry"):
        db.execute(f"DROP INDEX {index}")
    db.execute("ALTER TABLE blocks DROP COLUMN layer")
    db.commit()
    db.close()

    reopened = registry(CreditMode.HOLD, path=path)
    assert_layers_hold(reopened)
    assert max(layer for _, layer in layers(reopened)) >= 2
    assert reopened.find(BlockId(Program.CCER, "venue", 0, 20)) == expected
    names = {r[0] for r in reopened._db.execute("SELECT name FROM sqlite_master")}
    assert {"blocks_layer", "blocks_mirror", "blocks_lock_expiry"} <= names
    # And it goes on as any store: a new export lands in a layer where it overlaps nothing.
    reopened.lock("l", "A", BlockId(Program.CCER, "venue", 2, 8), LATER, "t")
    reopened.finalize("f", "A", BlockId(Program.CCER, "venue", 2, 8), "t", export=True)
    assert_layers_hold(reopened)
    reopened.close()
