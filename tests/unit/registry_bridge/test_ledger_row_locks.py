"""A group's ledger rows locked in one statement stay locked, and changing them asks no more.

``ledger.lock_rows_by_id`` takes, on PostgreSQL, the row locks a group of transfers will
change rows under; ``ledger.change`` then trusts those rows instead of locking each again.
The locks must be real (another transaction waits for them) and a change must still see
a row as the transaction left it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.model import BlockId, HoldingStatus, Program

AT = datetime(2026, 11, 26, tzinfo=UTC)


def _seed(sessions: sessionmaker[Session]) -> list[int]:
    """Three issued blocks; their row ids."""
    ids = []
    with db.unit_of_work(sessions) as session:
        for start in (1, 101, 201):
            block = serials.parse_serial(
                "verra",
                f"9660-{start}-{start + 99}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0",
            )
            ids.append(ledger.issue(session, "verra", "dev", block, AT).row_id)
    return ids


def test_locked_rows_are_changed_as_the_transaction_left_them(
    sessions: sessionmaker[Session],
) -> None:
    ids = _seed(sessions)
    with db.unit_of_work(sessions) as session:
        ledger.lock_rows_by_id(session, ids)
        (row,) = ledger.live_at(session, "verra", "dev", BlockId(Program.VCS, "", 101, 200))
        locked = ledger.change(
            session, row, "lock", AT, status=HoldingStatus.LOCKED, lock_transfer_id="t1"
        )
        # A second change of the same row sees the first (no stale re-read of it).
        ledger.change(session, locked, "unlock", AT, status=HoldingStatus.ACTIVE)
    with db.read_only(sessions) as session:
        statuses = {h.row_id: h.status for h in ledger.all_live(session)}
    assert statuses == {i: HoldingStatus.ACTIVE for i in ids}


@pytest.mark.postgres
def test_rows_locked_for_a_group_make_another_writer_wait(
    postgres_url: str, postgres_sessions: sessionmaker[Session]
) -> None:
    # PostgreSQL only: SQLite locks the whole database for each write transaction.
    ids = _seed(postgres_sessions)
    with db.unit_of_work(postgres_sessions) as session:
        ledger.lock_rows_by_id(session, ids[:2])
        url = sa.make_url(postgres_url)
        with psycopg.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database
        ) as other:
            for row_id, held in ((ids[0], True), (ids[1], True), (ids[2], False)):
                try:
                    other.execute(
                        "SELECT id FROM ledger_blocks WHERE id = %s FOR UPDATE NOWAIT",
                        (row_id,),
                    )
                    waited = False
                except psycopg.errors.LockNotAvailable:
                    waited = True
                other.rollback()
                assert waited is held, f"row {row_id}"
