"""A group's ledger lookups read at once answer as the lookups themselves would.

``ledger.prefetch`` reads, in one statement on PostgreSQL, the live rows over many
ranges (or the live mirrors of many origin ranges); the lookups that follow in the same
transaction are then answered from those rows as the transaction holds them, with the
rows it created since, and send nothing.  Whatever they answer must be what the database
would have said, and a row another transaction changed meanwhile must still be caught.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.errors import LedgerConflict
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock

AT = datetime(2026, 11, 27, tzinfo=UTC)


def _verra(start: int, end: int) -> UnitBlock:
    return serials.parse_serial(
        "verra", f"9660-{start}-{end}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    )


def vcs(start: int, end: int) -> BlockId:
    return BlockId(Program.VCS, "", start, end)


def _mirror(start: int, end: int, origin_start: int) -> tuple[UnitBlock, BlockId]:
    """A Shenzhen mirror block over VCS origin serials from ``origin_start``."""
    block = dataclasses.replace(_verra(start, end), id=BlockId(Program.SZ_CI, "M", start, end))
    return block, vcs(origin_start, origin_start + (end - start))


def _seed(sessions: sessionmaker[Session]) -> None:
    """Two origin blocks at the venue, and mirrors in Shenzhen of parts of a third."""
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "hkmo", "seller", _verra(1, 100), AT)
        ledger.issue(session, "hkmo", "seller", _verra(201, 300), AT)
        for start, origin_start in ((1, 501), (11, 511), (21, 530)):
            block, origin = _mirror(start, start + 9, origin_start)
            ledger.add_mirror(session, "shenzhen", "buyer", block, origin, AT, f"m{start}")


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statements sent through psycopg from here on, plain and pipelined alike."""
    sent: list[str] = []
    for name in ("execute", "executemany"):
        original: Callable[..., Any] = getattr(psycopg.Cursor, name)

        def counted(
            self: psycopg.Cursor[Any], query: Any, *args: Any, _run: Any = original, **kwargs: Any
        ) -> Any:
            sent.append(str(query))
            return _run(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, name, counted)
    yield sent


def _spans(holdings: list[ledger.LedgerHolding]) -> list[tuple[str, int, int, str]]:
    return [
        (h.block.id.program.value, h.block.id.serial_start, h.block.id.serial_end, h.status.value)
        for h in holdings
    ]


UNITS = [vcs(5, 5), vcs(40, 60), vcs(250, 250), vcs(150, 160)]
ORIGINS = [vcs(505, 505), vcs(509, 512), vcs(521, 529), vcs(535, 536)]


@pytest.mark.postgres
def test_prefetched_lookups_answer_as_the_database_and_send_nothing(
    postgres_sessions: sessionmaker[Session], statements: list[str]
) -> None:
    _seed(postgres_sessions)
    with db.read_only(postgres_sessions) as session:
        rows = [_spans(ledger.overlapping(session, u)) for u in UNITS]
        mirrors = [_spans(ledger.mirrors_of(session, o)) for o in ORIGINS]
    assert rows[3] == [] and mirrors[2] == []  # ranges with nothing live are asked too
    with db.unit_of_work(postgres_sessions) as session:
        ledger.defer_claims(session)
        assert ledger.prefetch(session, UNITS)
        assert ledger.prefetch(session, ORIGINS, mirrors=True)
        statements.clear()
        assert [_spans(ledger.overlapping(session, u)) for u in UNITS] == rows
        assert [_spans(ledger.mirrors_of(session, o)) for o in ORIGINS] == mirrors
        # A range inside one read at once is answered from it too.
        assert _spans(ledger.overlapping(session, vcs(45, 46))) == [("VCS", 1, 100, "active")]
        assert statements == []
        # One outside every range read is looked up on its own.
        assert _spans(ledger.overlapping(session, vcs(1, 2))) == [("VCS", 1, 100, "active")]
        assert statements


@pytest.mark.postgres
def test_prefetched_lookups_see_the_transactions_own_splits_and_locks(
    postgres_sessions: sessionmaker[Session], statements: list[str]
) -> None:
    _seed(postgres_sessions)
    with db.unit_of_work(postgres_sessions) as session:
        ledger.defer_claims(session)
        ledger.prefetch(session, [vcs(40, 60)])
        (row,) = ledger.live_at(session, "hkmo", "seller", vcs(50, 50))
        carved = ledger.carve(session, row, vcs(50, 50), AT, "t1")
        ledger.change(
            session, carved, "lock", AT, status=HoldingStatus.LOCKED, lock_transfer_id="t1"
        )
        statements.clear()
        # The row read at once is ended; the pieces exist only in this transaction.
        assert _spans(ledger.overlapping(session, vcs(40, 60))) == [
            ("VCS", 1, 49, "active"),
            ("VCS", 50, 50, "locked"),
            ("VCS", 51, 100, "active"),
        ]
        assert statements == []


@pytest.mark.postgres
def test_a_row_changed_by_another_transaction_after_the_prefetch_is_a_conflict(
    postgres_sessions: sessionmaker[Session],
) -> None:
    _seed(postgres_sessions)
    with db.unit_of_work(postgres_sessions) as session:
        ledger.defer_claims(session)
        ledger.prefetch(session, [vcs(1, 10)])
        with db.unit_of_work(postgres_sessions) as other:
            (row,) = ledger.live_at(other, "hkmo", "seller", vcs(3, 3))
            ledger.carve(other, row, vcs(3, 3), AT, "t-other")
        # Answered from the prefetch, the row is as it was read; changing it finds out.
        (stale,) = ledger.live_at(session, "hkmo", "seller", vcs(3, 3))
        assert stale.block.id == vcs(1, 100)
        with pytest.raises(LedgerConflict):
            ledger.carve(session, stale, vcs(3, 3), AT, "t1")
        session.rollback()
    with db.read_only(postgres_sessions) as session:
        assert _spans(ledger.overlapping(session, vcs(1, 100))) == [
            ("VCS", 1, 2, "active"),
            ("VCS", 3, 3, "active"),
            ("VCS", 4, 100, "active"),
        ]


def test_prefetch_reads_ahead_only_on_postgresql_with_claims_written_at_commit(
    sessions: sessionmaker[Session],
) -> None:
    _seed(sessions)
    postgres = sessions.kw["bind"].dialect.name == "postgresql"
    with db.unit_of_work(sessions) as session:
        # Rows written as they change are not indexed in memory: a read ahead would miss
        # them, so there is none.
        assert not ledger.prefetch(session, UNITS)
        ledger.defer_claims(session)
        assert ledger.prefetch(session, UNITS) is postgres
        assert _spans(ledger.overlapping(session, vcs(5, 5))) == [("VCS", 1, 100, "active")]
