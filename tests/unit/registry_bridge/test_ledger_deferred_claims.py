"""A transaction that defers its ledger writes to the commit sees the same ledger.

``ledger.defer_claims`` lets the bridge record a group of transfers without a flush per
split or mirror: the ledger's own lookups must then find the unwritten rows exactly as
they would find written ones, and the commit must write them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.errors import LedgerConflict
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.schema import LedgerBlock

AT = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.create_engine(f"sqlite:///{tmp_path}/ledger.db")
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()


def vcs(start: int, end: int) -> BlockId:
    return BlockId(Program.VCS, "", start, end)


def _live(sessions: sessionmaker[Session]) -> list[tuple[int, int, str]]:
    with db.read_only(sessions) as session:
        return [
            (h.block.id.serial_start, h.block.id.serial_end, h.status.value)
            for h in sorted(ledger.all_live(session), key=lambda h: h.block.id.serial_start)
        ]


def _split_and_lock(session: Session, serial: int) -> None:
    (row,) = ledger.live_at(session, "hkmo", "seller", vcs(serial, serial))
    carved = ledger.carve(session, row, vcs(serial, serial), AT, f"t{serial}")
    ledger.change(
        session, carved, "lock", AT, status=HoldingStatus.LOCKED, lock_transfer_id=f"t{serial}"
    )


@pytest.mark.parametrize("deferred", [False, True], ids=["flushed", "deferred"])
def test_repeated_splits_see_every_earlier_unwritten_row(
    sessions: sessionmaker[Session], deferred: bool
) -> None:
    block = serials.parse_serial(
        "verra", "19385-1001-1100-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
    )
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "hkmo", "seller", block, AT)
    with db.unit_of_work(sessions) as session:
        if deferred:
            ledger.defer_claims(session)
        for serial in (1001, 1002, 1003, 1050):
            _split_and_lock(session, serial)
        # The remainder rows exist only in memory when deferred; lookups still find them.
        assert [
            (h.block.id.serial_start, h.block.id.serial_end)
            for h in ledger.live_at(session, "hkmo", "seller", vcs(1001, 1100))
        ] == [(1001, 1001), (1002, 1002), (1003, 1003), (1004, 1049), (1050, 1050), (1051, 1100)]
        with pytest.raises(LedgerConflict):
            # A claim over units that a split of this transaction holds is refused.
            ledger.add_mirror(
                session,
                "national",
                "buyer",
                dataclasses.replace(block, id=vcs(1002, 1002)),
                vcs(1002, 1002),
                AT,
                "t-dup",
            )
    assert _live(sessions) == [
        (1001, 1001, "locked"),
        (1002, 1002, "locked"),
        (1003, 1003, "locked"),
        (1004, 1049, "active"),
        (1050, 1050, "locked"),
        (1051, 1100, "active"),
    ]
    with db.read_only(sessions) as session:
        ids = list(session.execute(sa.select(LedgerBlock.id)).scalars())
    # The issue, two new rows for each split at an edge, three for the one in the middle.
    assert len(ids) == len(set(ids)) == 1 + 2 + 2 + 2 + 3
