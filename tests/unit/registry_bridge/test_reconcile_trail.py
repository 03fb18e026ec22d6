"""The trail phase of a reconciliation reads as much for many differing blocks as for a few.

It once read the log once per block that differs, and a registry far out of step differs
in thousands of blocks.  It now reads the trails of many blocks per statement; the report
is the one the per-block reads gave, which the oracle below still makes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES, build_adapter
from registry_bridge import db, ledger, reconcile
from registry_bridge.model import BlockId, Program
from registry_bridge.port import IssueRequest, RegistryPort
from registry_bridge.reconcile import TRAIL, Discrepancy, ReconcileReport
from registry_bridge.schema import EventBlock, LedgerEvent
from tests.loopback import ANY_PORT

AT = datetime(2026, 11, 27, tzinfo=UTC)
LOT = 10
LOTS = 25
"""Lots of the issuance split up: more events concern it than a trail keeps (20)."""
SPLIT_START = 100_000
SINGLES_START = 1_000_000


def _issuance(start: int, end: int) -> Any:
    return serials.parse_serial(
        "verra", f"9660-{start}-{end}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    )


def _issue_in_lots(sessions: sessionmaker[Session], start: int, lots: int) -> None:
    """Issue ``lots`` lots of VCS units from ``start`` and split each off in its own step."""
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "verra", "seller", _issuance(start, start + lots * LOT - 1), AT)
    for lot in range(lots - 1):
        piece = BlockId(Program.VCS, "", start + lot * LOT, start + (lot + 1) * LOT - 1)
        with db.unit_of_work(sessions) as session:
            (row,) = ledger.live_at(session, "verra", "seller", piece)
            ledger.carve(session, row, piece, AT)


def _issue_singles(sessions: sessionmaker[Session], first: int, count: int) -> None:
    """Issue ``count`` blocks of ``LOT`` units, the ``first``-th onwards, apart."""
    with db.unit_of_work(sessions) as session:
        for n in range(first, first + count):
            start = SINGLES_START + n * 2 * LOT
            ledger.issue(session, "verra", "seller", _issuance(start, start + LOT - 1), AT)


@pytest.fixture
def verra() -> Iterator[RegistryPort]:
    """Verra, holding the split issuance in an account the ledger does not place it in:
    every ledger block differs, and so does Verra's block, whose trail is cut at 20."""
    running = start_emulator(REGISTRIES["verra"].emulator(), listen=ANY_PORT)
    try:
        port = build_adapter("verra", running.target)
        whole = _issuance(SPLIT_START, SPLIT_START + LOTS * LOT - 1)
        port.issue(IssueRequest("elsewhere", "elsewhere", whole))
        yield port
    finally:
        running.stop(grace=None)


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


def _reconciled(sessions: sessionmaker[Session], port: RegistryPort) -> tuple[ReconcileReport, int]:
    """The report, and how many statements the database was sent for it."""
    with _statements(sessions) as statements, db.read_only(sessions) as session:
        report = reconcile.reconcile(session, {"verra": port})
    return report, len(statements)


def _trail_block_by_block(session: Session, block: BlockId, limit: int = 20) -> list[str]:
    """The oracle: one block's trail, read alone, as reconciliation read it per block."""
    indexes = (
        sa.select(EventBlock.event_idx)
        .where(
            EventBlock.program == block.program.value,
            EventBlock.serial_series == block.serial_series,
            EventBlock.serial_start <= block.serial_end,
            EventBlock.serial_end >= block.serial_start,
        )
        .distinct()
        .order_by(EventBlock.event_idx.desc())
        .limit(limit)
    )
    lines = []
    for event in session.execute(
        sa.select(LedgerEvent)
        .where(LedgerEvent.idx.in_(indexes.scalar_subquery()))
        .order_by(LedgerEvent.idx)
    ).scalars():
        body = json.loads(event.payload)
        via = f" ({event.transfer_id})" if event.transfer_id else ""
        lines.append(
            f"#{event.idx} {event.kind}{via}: {body['registry']}/{body['account']} {body['status']}"
        )
    return lines


def _as_block_by_block(
    sessions: sessionmaker[Session], report: ReconcileReport
) -> tuple[Discrepancy, ...]:
    """``report``'s phases 1 and 2, followed by the trails the oracle reads."""
    found = [d for d in report.discrepancies if d.phase != TRAIL]
    trails = []
    with db.read_only(sessions) as session:
        for item in found:
            if item.block is None:
                continue
            lines = _trail_block_by_block(session, item.block)
            series = f"/{item.block.serial_series}" if item.block.serial_series else ""
            named = (
                f"{item.block.program.value}{series} "
                f"{item.block.serial_start}-{item.block.serial_end}"
            )
            trails.append(
                Discrepancy(
                    registry=item.registry,
                    phase=TRAIL,
                    detail=f"ledger trail of {named}: "
                    + ("; ".join(lines) or "no event of the log concerns these units"),
                    program=item.program,
                    status=item.status,
                    gateway_quantity=item.gateway_quantity,
                    registry_quantity=item.registry_quantity,
                    block=item.block,
                )
            )
    return tuple(found + trails)


def _trails(report: ReconcileReport) -> Sequence[Discrepancy]:
    return [d for d in report.discrepancies if d.phase == TRAIL]


def test_the_trails_of_many_differing_blocks_take_as_many_statements_as_of_a_few(
    sessions: sessionmaker[Session], verra: RegistryPort
) -> None:
    _issue_in_lots(sessions, SPLIT_START, LOTS)
    _issue_singles(sessions, 0, 2)
    few, few_statements = _reconciled(sessions, verra)
    _issue_singles(sessions, 2, 60)
    many, many_statements = _reconciled(sessions, verra)

    # Each of the ledger's blocks differs, and Verra's one; its trail is cut at 20 events.
    assert len(_trails(few)) == LOTS + 2 + 1
    assert len(_trails(many)) == LOTS + 62 + 1
    assert max(d.detail.count("; ") + 1 for d in _trails(many)) == 20
    assert few.discrepancies == _as_block_by_block(sessions, few)
    assert many.discrepancies == _as_block_by_block(sessions, many)
    assert many_statements == few_statements


def test_trails_read_in_several_statements_are_the_same(
    sessions: sessionmaker[Session], verra: RegistryPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the blocks one statement may name, the trails are read in as few more."""
    _issue_in_lots(sessions, SPLIT_START, LOTS)
    _issue_singles(sessions, 0, 20)
    whole, whole_statements = _reconciled(sessions, verra)
    monkeypatch.setattr(reconcile, "_TRAIL_BLOCKS_PER_QUERY", 7)
    chunked, chunked_statements = _reconciled(sessions, verra)

    blocks = len(_trails(whole))
    assert blocks == LOTS + 20 + 1
    assert chunked.discrepancies == whole.discrepancies == _as_block_by_block(sessions, whole)
    assert chunked_statements - whole_statements == math.ceil(blocks / 7) - 1
