"""A trace's reads do not grow with the pieces its units were split into.

An issuance sold in many small lots leaves one row, and one ``split`` event, per lot;
each event names its own origin range.  The trace of the whole issuance looked the log up
once per such range, each lookup scanning the events before it: thousands of lots took
minutes, long past any client's deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.model import BlockId, Program
from registry_bridge.provenance import ProvenanceLog
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
    few = _issue_in_lots(sessions, 1_000, 3)
    many = _issue_in_lots(sessions, 100_000, 60)
    log = ProvenanceLog(sessions, NoteSigner.from_pem("test/log", generate_private_key_pem()))
    log.checkpoint()  # the node cache is built once, not by either trace
    counts = []
    for block, lots in ((few, 3), (many, 60)):
        with _statements(sessions) as statements:
            page = log.trace_page(block, limit=1000)
        # The issuance and one split per lot cut off.
        assert [e.kind for e in page.events] == ["issuance"] + ["split"] * (lots - 1)
        assert page.next_start is None
        counts.append(len(statements))
    assert counts[0] == counts[1]
