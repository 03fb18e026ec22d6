"""On PostgreSQL, claims written at commit are checked by the exclusion constraint there.

A group recorded with ``ledger.defer_claims`` sends no overlap query per new row on
PostgreSQL: the constraint refuses an overlap with any live row at the commit (the
bridge then redoes the group with a check per claim), and new rows of the same
transaction are checked against each other in memory at once.  Both refusals must hold.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.errors import LedgerConflict
from registry_bridge.model import UnitBlock

AT = datetime(2026, 11, 26, tzinfo=UTC)

pytestmark = pytest.mark.postgres


@pytest.fixture
def sessions(postgres_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Every test here runs on PostgreSQL only."""
    return postgres_sessions


def _vcs(start: int, end: int) -> UnitBlock:
    return serials.parse_serial(
        "verra", f"9660-{start}-{end}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    )


def _live_ranges(sessions: sessionmaker[Session]) -> list[tuple[int, int]]:
    with db.read_only(sessions) as session:
        return sorted(
            (h.block.id.serial_start, h.block.id.serial_end) for h in ledger.all_live(session)
        )


def test_a_deferred_claim_overlapping_a_live_row_is_refused_at_the_commit(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "verra", "dev", _vcs(1, 100), AT)
    with pytest.raises(sa.exc.IntegrityError) as caught, db.unit_of_work(sessions) as session:
        ledger.defer_claims(session)
        ledger.issue(session, "verra", "other", _vcs(50, 60), AT)
    assert ledger.is_claim_conflict(caught.value)
    assert _live_ranges(sessions) == [(1, 100)]


def test_deferred_claims_overlapping_each_other_are_refused_at_once(
    sessions: sessionmaker[Session],
) -> None:
    with (
        pytest.raises(LedgerConflict, match="overlaps live units"),
        db.unit_of_work(sessions) as session,
    ):
        ledger.defer_claims(session)
        ledger.issue(session, "verra", "dev", _vcs(1, 100), AT)
        ledger.issue(session, "verra", "other", _vcs(100, 120), AT)
    assert _live_ranges(sessions) == []


def test_disjoint_deferred_claims_are_all_written(sessions: sessionmaker[Session]) -> None:
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "verra", "dev", _vcs(1, 100), AT)
    with db.unit_of_work(sessions) as session:
        ledger.defer_claims(session)
        for start in (101, 201, 301):
            ledger.issue(session, "verra", "dev", _vcs(start, start + 99), AT)
    assert _live_ranges(sessions) == [(1, 100), (101, 200), (201, 300), (301, 400)]
