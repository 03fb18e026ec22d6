"""A trace's reads do not grow with the pieces its units were split into.

An issuance sold in many small lots leaves one row, and one ``split`` event, per lot;
each event names its own origin range.  The trace of the whole issuance looked the log up
once per such range, each lookup scanning the events before it: thousands of lots took
minutes, long past any client's deadline.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger, provenance, serial_tree
from registry_bridge.model import MAX_SERIAL, BlockId, Program
from registry_bridge.provenance import ProvenanceLog
from registry_bridge.schema import EventBlock
from registry_bridge.signed_note import NoteSigner, generate_private_key_pem

AT = datetime(2026, 11, 27, tzinfo=UTC)
LOT = 10


def _issue_in_lots(sessions: sessionmaker[Session], start: int, lots: int) -> BlockId:
    """Issue ``lots`` lots of VCS units from ``start`` and split each off in its own step."""
    end = start + lots * LOT - 1
    block = serials.parse_serial(
        "verra", f"9660-{start}-{end}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    )
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "verra", "seller", block, AT)
    for lot in range(lots - 1):
        piece = BlockId(Program.VCS, "", start + lot * LOT, start + (lot + 1) * LOT - 1)
        with db.unit_of_work(sessions) as session:
            (row,) = ledger.live_at(session, "verra", "seller", piece)
            ledger.carve(session, row, piece, AT)
    return block.id


@contextmanager
def _statements(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    engine = sessions.kw["bind"]
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_trace_reads_as_much_for_many_lots_as_for_a_few(
    sessions: sessionmaker[Session],
) -> None:
    # Both wider than a range sought node by node (serial_nodes.NARROW), which reads in
    # statements of its own.
    few = _issue_in_lots(sessions, 1_000, 4)
    many = _issue_in_lots(sessions, 100_000, 60)
    log = ProvenanceLog(sessions, NoteSigner.from_pem("test/log", generate_private_key_pem()))
    log.checkpoint()  # the node cache is built once, not by either trace
    counts = []
    for block, lots in ((few, 4), (many, 60)):
        with _statements(sessions) as statements:
            page = log.trace_page(block, limit=1000)
        # The issuance and one split per lot cut off.
        assert [e.kind for e in page.events] == ["issuance"] + ["split"] * (lots - 1)
        assert page.next_start is None
        counts.append(len(statements))
    assert counts[0] == counts[1]


def test_a_range_finds_every_event_of_its_units_node_by_node(
    sessions: sessionmaker[Session],
) -> None:
    """The events a page finds under the nodes of the serials' tree a range can be filed
    under are those whose ranges overlap it, whatever the ranges: holding it, inside it,
    across either end, from serial 0, up to the largest serial, or of another series;
    narrow or wide, sought node by node or (past the nodes it seeks) in log order; from
    the page's position, and no more than asked."""
    rng = random.Random(7)
    edges = [0, 1, 2, 63, 64, 65, 1_000, 1_023, 1_024, MAX_SERIAL - 1, MAX_SERIAL]
    rows: list[dict[str, Any]] = []
    for index in range(600):
        series = rng.choice(["", "", "", "x"])
        start = rng.choice(edges) if rng.random() < 0.2 else rng.randrange(0, 3_000)
        end = min(MAX_SERIAL, start + rng.choice([0, 0, 1, 5, 40, 700, 5_000, MAX_SERIAL]))
        rows.append(
            {
                "event_idx": index,
                "seq": 0,
                "program": "VCS",
                "serial_series": series,
                "serial_start": start,
                "serial_end": end,
                "serial_node": serial_tree.serial_node(start, end),
            }
        )
    with db.unit_of_work(sessions) as session:
        session.execute(sa.insert(EventBlock), rows)
    widths = (0, 1, 31, 32, 100, 2_500)
    queries = [(start, start + width) for start in edges[:-1] for width in widths]
    queries += [
        (s, s + rng.choice(widths) + rng.randrange(0, 32))
        for s in (rng.randrange(0, 3_100) for _ in range(60))
    ]
    by_node = 0
    with db.read_only(sessions) as session:
        for first, last in queries:
            last = min(last, MAX_SERIAL)
            query = BlockId(Program.VCS, "", first, last)
            by_node += (
                last - first >= 32 and provenance._plan_reads(session, [query])[0].node is not None
            )
            for start, count in ((0, 1_000), (rng.randrange(0, 600), 5)):
                found = ProvenanceLog._next_indexes(session, [query], start, 550, count)
                expected = [
                    r["event_idx"]
                    for r in rows
                    if r["serial_series"] == ""
                    and r["serial_start"] <= last
                    and r["serial_end"] >= first
                    and start <= r["event_idx"] < 550
                ][:count]
                assert found == expected, (first, last, start, count)
    assert by_node > 10  # wide ranges sought node by node too, not only in log order
