"""A reconciliation's trail of a block reads the block's own index entries, not its
program's history.

The trail of each block that differs is its newest events.  It was read by walking the
block's program's entries back from the log's end, testing each one's serials: the trail of
an old block in a busy program read every newer entry of every other unit of the program,
and, for a block with fewer events than a trail keeps, the program's whole history.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger, reconcile, serial_nodes, serial_tree
from registry_bridge.model import MAX_SERIAL, BlockId, Program
from registry_bridge.schema import EventBlock, LedgerEvent

AT = datetime(2026, 11, 27, tzinfo=UTC)
LOT = 10
OLD_START = 100_000
OLD_LOTS = 25
BUSY_START = 1_000_000


def _issue(session: Session, start: int, end: int) -> BlockId:
    serial = f"9660-{start}-{end}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    block = serials.parse_serial("verra", serial)
    ledger.issue(session, "verra", "seller", block, AT)
    return block.id


def _cut(session: Session, pieces: Sequence[BlockId]) -> None:
    for piece in pieces:
        (row,) = ledger.live_at(session, "verra", "seller", piece)
        ledger.carve(session, row, piece, AT)


@contextmanager
def _statements(sessions: sessionmaker[Session]) -> Iterator[list[tuple[str, Any]]]:
    engine = sessions.kw["bind"]
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _event_block_scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The PostgreSQL plan nodes under ``node`` (and it) that read event_blocks."""
    found = [node] if node.get("Relation Name") == "event_blocks" else []
    for child in node.get("Plans", ()):
        found.extend(_event_block_scans(child))
    return found


def _trail_work(sessions: sessionmaker[Session], blocks: Sequence[BlockId]) -> tuple[Any, int]:
    """The trails of ``blocks``, and the work reading them took: on SQLite, the virtual
    machine's steps; on PostgreSQL, the index reads of every statement that read
    event_blocks, each checked to read ``ix_event_blocks_node`` (with sequential and
    bitmap scans off, so that the plan shows which index the statement can use)."""
    engine = sessions.kw["bind"]
    postgres = engine.dialect.name == "postgresql"
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    with _statements(sessions) as statements, db.read_only(sessions) as session:
        if postgres:
            trails = reconcile.trails(session, blocks)
        else:
            raw = session.connection().connection.driver_connection
            assert raw is not None
            raw.set_progress_handler(step, 1)
            try:
                trails = reconcile.trails(session, blocks)
            finally:
                raw.set_progress_handler(None, 1)
    if not postgres:
        return trails, steps[0]
    seeks = 0
    with engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        connection.exec_driver_sql("SET enable_bitmapscan = off")
        for statement, parameters in statements:
            if "event_blocks" not in statement:
                continue
            (explained,) = connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
            ).scalar_one()
            scans = _event_block_scans(explained["Plan"])
            assert scans, explained
            for scan in scans:
                assert scan["Index Name"] == "ix_event_blocks_node", explained
                seeks += scan["Actual Loops"]
    return trails, seeks


def test_an_old_blocks_trail_reads_as_much_in_a_busy_program_as_in_a_quiet_one(
    sessions: sessionmaker[Session],
) -> None:
    """An old lot's trail, and its whole issuance's (wider than a range sought serial by
    serial), cost the same with 10 or 300 newer lots of other units in their program
    after them: the work follows the blocks' own entries.  Walking the program's entries
    back from the log's end, it grew with every newer lot."""
    with db.unit_of_work(sessions) as session:
        old = _issue(session, OLD_START, OLD_START + OLD_LOTS * LOT - 1)
        _cut(
            session,
            [
                BlockId(Program.VCS, "", OLD_START + n * LOT, OLD_START + (n + 1) * LOT - 1)
                for n in range(OLD_LOTS - 1)
            ],
        )
        _issue(session, BUSY_START, BUSY_START + 999)
    lot = BlockId(Program.VCS, "", OLD_START + 3 * LOT, OLD_START + 4 * LOT - 1)
    blocks = [lot, old]
    works = []
    expected = None
    for cut_before, cut in ((0, 10), (10, 300)):
        with db.unit_of_work(sessions) as session:
            _cut(
                session,
                [
                    BlockId(Program.VCS, "", BUSY_START + n, BUSY_START + n)
                    for n in range(cut_before, cut_before + cut)
                ],
            )
        if sessions.kw["bind"].dialect.name == "postgresql":
            with (
                sessions.kw["bind"]
                .connect()
                .execution_options(isolation_level="AUTOCOMMIT") as connection
            ):
                connection.exec_driver_sql("VACUUM ANALYZE event_blocks")
        trails, work = _trail_work(sessions, blocks)
        # The lot's issuance and the four cuts that left it with the rest; the issuance's
        # newest 20 (of 25 events).
        assert [line.split(" ")[1].rstrip(":") for line in trails[0]] == ["issuance"] + [
            "split"
        ] * 4
        assert len(trails[1]) == 20
        # The newer lots are none of theirs.
        assert expected is None or trails == expected
        expected = trails
        works.append(work)
    quiet, busy_work = works
    assert busy_work <= 1.1 * quiet, works


def _random_log(
    rng: random.Random, events: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``events`` events, each indexed under one to three ranges (of its program's, or of
    another series or program), at the tree's edges too: the rows of ledger_events and
    of event_blocks."""
    edges = [0, 1, 2, 63, 64, 65, 1_000, 1_023, 1_024, MAX_SERIAL - 1, MAX_SERIAL]
    logged: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for index in range(events):
        body = {"registry": "verra", "account": f"a{index % 7}", "status": "active"}
        logged.append(
            {
                "idx": index,
                "kind": rng.choice(["issuance", "split", "transfer"]),
                "payload": json.dumps(body).encode(),
                "leaf_hash": bytes(32),
                "transfer_id": rng.choice(["", f"t{index}"]),
                "created_at": AT,
            }
        )
        near = rng.randrange(0, 3_000)
        for seq in range(rng.choice([1, 1, 2, 3])):
            program, series = rng.choice([("VCS", ""), ("VCS", ""), ("VCS", "x"), ("GS", "")])
            start = rng.choice(edges) if rng.random() < 0.2 else near + rng.randrange(0, 50)
            width = rng.choice([0, 0, 1, 5, 40, 700, 5_000, MAX_SERIAL])
            end = min(MAX_SERIAL, start + width)
            entries.append(
                {
                    "event_idx": index,
                    "seq": seq,
                    "program": program,
                    "serial_series": series,
                    "serial_start": start,
                    "serial_end": end,
                    "serial_node": serial_tree.serial_node(start, end),
                }
            )
    return logged, entries


def _brute_force_trail(
    logged: Sequence[dict[str, Any]],
    entries: Sequence[dict[str, Any]],
    block: BlockId,
    limit: int,
) -> list[str]:
    """The newest ``limit`` events of ``block``, oldest first, from the rows themselves."""
    touching = sorted(
        {
            e["event_idx"]
            for e in entries
            if (e["program"], e["serial_series"]) == (block.program.value, block.serial_series)
            and e["serial_start"] <= block.serial_end
            and e["serial_end"] >= block.serial_start
        }
    )
    lines = []
    for index in touching[-limit:]:
        event = logged[index]
        body = json.loads(event["payload"])
        via = f" ({event['transfer_id']})" if event["transfer_id"] else ""
        lines.append(
            f"#{index} {event['kind']}{via}: {body['registry']}/{body['account']} {body['status']}"
        )
    return lines


def test_trails_are_the_newest_events_of_blocks_of_every_width(
    sessions: sessionmaker[Session],
) -> None:
    """Blocks one serial wide to the whole series, at the tree's edges, holding ranges,
    inside them or across their ends, in their program or another series, and sought in
    log order past the nodes a block seeks: each trail is the block's newest events, each
    event once however many of its ranges touch the block."""
    rng = random.Random(54)
    logged, entries = _random_log(rng, 500)
    with db.unit_of_work(sessions) as session:
        session.execute(sa.insert(LedgerEvent), logged)
        session.execute(sa.insert(EventBlock), entries)
    edges = [0, 1, 2, 63, 64, 65, 1_000, 1_023, 1_024, MAX_SERIAL - 1]
    widths = (0, 1, 31, 32, 100, 2_500, MAX_SERIAL - 1)  # a block holds MAX_SERIAL units
    blocks = [
        BlockId(Program.VCS, "", start, min(MAX_SERIAL, start + width))
        for start in edges
        for width in widths
    ]
    blocks += [
        BlockId(
            rng.choice([Program.VCS, Program.GS]),
            rng.choice(["", "x", "y"]),
            start,
            min(MAX_SERIAL, start + rng.choice(widths) + rng.randrange(0, 32)),
        )
        for start in (rng.randrange(0, 3_100) for _ in range(60))
    ]
    blocks.append(blocks[3])  # asked twice
    with db.read_only(sessions) as session:
        planned = serial_nodes.nodes_to_seek(session, blocks)
        wide = [nodes for b, nodes in zip(blocks, planned, strict=True) if b.quantity > 32]
        # Wide blocks sought node by node, and past their inner nodes in log order.
        assert sum(nodes is None for nodes in wide) > 5
        assert sum(nodes is not None for nodes in wide) > 5
        for limit in (1, 3, 20):
            found = reconcile.trails(session, blocks, limit)
            for block, trail in zip(blocks, found, strict=True):
                assert trail == _brute_force_trail(logged, entries, block, limit), (block, limit)
