"""Transfer rows held as plain objects reach the database exactly as a transaction left them.

New rows are inserted, changed rows updated, and nothing else; a savepoint that rolls back
takes its own changes and new rows along (in memory as well as in the database) and no
one else's; a row changed after its transaction ended is not written anywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db, plain_rows, transfer_rows
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.schema import TransferRecord, TransferStepRecord
from registry_bridge.transfer_rows import TransferRow

_AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _row(transfer_id: str, state: str = "PROPOSED", request_id: str = "") -> TransferRow:
    return TransferRow(
        id=transfer_id,
        request_id=request_id or f"request-{transfer_id}",
        caller=LOCAL_CALLER,
        body_sha256=bytes(32),
        state=state,
        kind="",
        source_registry="verra",
        source_account="a",
        destination_registry="shenzhen",
        destination_account="b",
        instruction="{}",
        plan="",
        decision="",
        failure_reason="",
        lock_expires_at=None,
        lease_owner="gateway-1",
        lease_expires_at=_AT + timedelta(seconds=30),
        created_at=_AT,
        updated_at=_AT,
    )


def _stored(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str, datetime | None]]:
    """Each committed transfer's state, failure reason and lock expiry, by id."""
    with db.read_only(sessions) as session:
        return {
            r.id: (r.state, r.failure_reason, r.lock_expires_at)
            for r in session.execute(sa.select(TransferRecord)).scalars()
        }


def _insert(sessions: sessionmaker[Session], *transfer_ids: str) -> None:
    with db.unit_of_work(sessions) as session:
        for transfer_id in transfer_ids:
            transfer_rows.add(session, _row(transfer_id))


def test_a_new_row_is_inserted_as_the_transaction_leaves_it(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        row = _row("t1")
        transfer_rows.add(session, row)
        row.state = "CHECKED"
        row.lock_expires_at = _AT + timedelta(minutes=5)
    assert _stored(sessions) == {"t1": ("CHECKED", "", _AT + timedelta(minutes=5))}
    with db.read_only(sessions) as session:
        stored = session.get(TransferRecord, "t1")
        assert stored is not None
        assert stored.body_sha256 == bytes(32)
        assert stored.lease_expires_at == _AT + timedelta(seconds=30)


def test_a_new_row_is_written_before_the_steps_that_refer_to_it(
    sessions: sessionmaker[Session],
) -> None:
    steps = TransferStepRecord.__table__
    assert isinstance(steps, sa.Table)
    with db.unit_of_work(sessions) as session:
        transfer_rows.add(session, _row("t1"))
        db.defer_insert(
            session,
            steps,
            {"transfer_id": "t1", "seq": 0, "state": "PROPOSED", "reason": "", "at": _AT},
        )
    with db.read_only(sessions) as session:
        assert session.execute(sa.select(TransferStepRecord.transfer_id)).scalars().all() == ["t1"]


def test_locked_rows_are_updated_only_when_changed(sessions: sessionmaker[Session]) -> None:
    _insert(sessions, "t1", "t2")
    with db.unit_of_work(sessions) as session:
        rows = transfer_rows.lock(session, ["t2", "t1", "missing"])
        assert sorted(rows) == ["t1", "t2"]
        rows["t1"].state = "CHECKED"
        # A second lookup in the transaction answers with the row it holds, changes and all.
        assert transfer_rows.lock(session, ["t1"])["t1"] is rows["t1"]
    assert _stored(sessions) == {"t1": ("CHECKED", "", None), "t2": ("PROPOSED", "", None)}


def test_a_query_in_the_transaction_sees_the_changes_made_before_it(
    sessions: sessionmaker[Session],
) -> None:
    _insert(sessions, "t1")
    with db.unit_of_work(sessions) as session:
        transfer_rows.lock(session, ["t1"])["t1"].state = "CHECKED"
        assert (
            session.execute(
                sa.select(TransferRecord.state).where(TransferRecord.id == "t1")
            ).scalar_one()
            == "CHECKED"
        )


def test_fixed_columns_cannot_change(sessions: sessionmaker[Session]) -> None:
    _insert(sessions, "t1")
    with db.unit_of_work(sessions) as session:
        row = transfer_rows.lock(session, ["t1"])["t1"]
        with pytest.raises(AttributeError, match=r"transfers\.request_id is fixed"):
            row.request_id = "another"


def test_a_rolled_back_savepoint_takes_only_its_own_work_along(
    sessions: sessionmaker[Session],
) -> None:
    _insert(sessions, "t1", "t2")
    with db.unit_of_work(sessions) as session:
        rows = transfer_rows.lock(session, ["t1", "t2"])
        rows["t1"].failure_reason = "before the savepoint"
        with pytest.raises(RuntimeError), db.savepoint(session):
            rows["t1"].state = "CHECKED"  # written inside the savepoint by the query below
            session.execute(sa.select(TransferRecord.id)).all()
            rows["t2"].state = "REJECTED"  # never written
            transfer_rows.add(session, _row("t3"))
            raise RuntimeError("the step failed")
        # In memory as in the database: as before the savepoint.
        assert (rows["t1"].state, rows["t1"].failure_reason) == ("PROPOSED", "before the savepoint")
        assert rows["t2"].state == "PROPOSED"
        assert "t3" not in transfer_rows.lock(session, ["t3"])
        rows["t2"].failure_reason = "after the savepoint"
    assert _stored(sessions) == {
        "t1": ("PROPOSED", "before the savepoint", None),
        "t2": ("PROPOSED", "after the savepoint", None),
    }


def test_a_row_inserted_in_a_rolled_back_savepoint_is_gone(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        with pytest.raises(RuntimeError), db.savepoint(session):
            transfer_rows.add(session, _row("t1"))
            session.execute(sa.select(TransferRecord.id)).all()  # writes it
            raise RuntimeError("the step failed")
        assert transfer_rows.lock(session, ["t1"]) == {}
    assert _stored(sessions) == {}


def test_a_released_savepoint_inside_one_rolled_back_is_undone_with_it(
    sessions: sessionmaker[Session],
) -> None:
    _insert(sessions, "t1")
    with db.unit_of_work(sessions) as session:
        row = transfer_rows.lock(session, ["t1"])["t1"]
        with pytest.raises(RuntimeError), db.savepoint(session):
            with db.savepoint(session):
                row.state = "CHECKED"
            assert row.state == "CHECKED"
            raise RuntimeError("the outer step failed")
        assert row.state == "PROPOSED"
    assert _stored(sessions) == {"t1": ("PROPOSED", "", None)}


def test_a_released_savepoint_keeps_its_work(sessions: sessionmaker[Session]) -> None:
    _insert(sessions, "t1")
    with db.unit_of_work(sessions) as session:
        row = transfer_rows.lock(session, ["t1"])["t1"]
        with db.savepoint(session):
            row.state = "CHECKED"
            transfer_rows.add(session, _row("t2"))
        row.failure_reason = "after"
    assert _stored(sessions) == {"t1": ("CHECKED", "after", None), "t2": ("PROPOSED", "", None)}


def test_a_failed_transaction_writes_nothing_and_lets_its_rows_go(
    sessions: sessionmaker[Session],
) -> None:
    _insert(sessions, "t1")
    with pytest.raises(RuntimeError), db.unit_of_work(sessions) as session:
        row = transfer_rows.lock(session, ["t1"])["t1"]
        row.state = "CHECKED"
        transfer_rows.add(session, _row("t2"))
        raise RuntimeError("the step failed")
    # Changed after its transaction: a snapshot only, written by no later transaction.
    row.state = "REJECTED"
    with db.unit_of_work(sessions) as session:
        transfer_rows.add(session, _row("t3"))
    assert _stored(sessions) == {"t1": ("PROPOSED", "", None), "t3": ("PROPOSED", "", None)}


def test_read_rows_are_snapshots(sessions: sessionmaker[Session]) -> None:
    _insert(sessions, "t1")
    with db.unit_of_work(sessions) as session:
        (row,) = transfer_rows.read(session, ["t1", "t1"])
        row.state = "CHECKED"
    assert _stored(sessions) == {"t1": ("PROPOSED", "", None)}


@pytest.mark.parametrize("others", [0, 2], ids=["alone", "in-a-group"])
def test_a_locked_row_reads_back_every_column_as_written(
    sessions: sessionmaker[Session], others: int
) -> None:
    # One row is read by a statement of its own, a group by another: both give the same.
    written = _row("t1")
    with db.unit_of_work(sessions) as session:
        transfer_rows.add(session, written)
        written.lock_expires_at = _AT + timedelta(minutes=5)
        for n in range(others):
            transfer_rows.add(session, _row(f"other-{n}"))
    with db.unit_of_work(sessions) as session:
        read = transfer_rows.lock(session, ["t1", *(f"other-{n}" for n in range(others))])["t1"]
        for column in TransferRow.COLUMNS:
            assert getattr(read, column) == getattr(written, column), column
        assert read.created_at.tzinfo is not None


def test_a_refused_insert_is_raised_as_sqlalchemy_raises_it(
    sessions: sessionmaker[Session],
) -> None:
    # Callers tell a lost race (another gateway's row with the same request id) by
    # SQLAlchemy's IntegrityError, whether the ORM or a plain statement wrote the row.
    _insert(sessions, "t1")
    duplicate = _row("t2", request_id="request-t1")
    with pytest.raises(sa.exc.IntegrityError), db.unit_of_work(sessions) as session:
        transfer_rows.add(session, duplicate)
    assert _stored(sessions) == {"t1": ("PROPOSED", "", None)}


def test_a_write_that_fails_in_a_savepoint_is_undone_with_it(
    sessions: sessionmaker[Session],
) -> None:
    # The write's UPDATE goes through and its INSERT is refused: the savepoint's rollback
    # undoes the UPDATE in the database, and so must it in memory; the refused row is not
    # held.  (Under a race on PostgreSQL, a split's ended row left ended in memory made
    # the rest of the transaction think the units were gone.)
    _insert(sessions, "t1")
    with db.unit_of_work(sessions) as session:
        row = transfer_rows.lock(session, ["t1"])["t1"]
        with pytest.raises(sa.exc.IntegrityError), db.savepoint(session):
            row.state = "CHECKED"
            refused = _row("t2", request_id="request-t1")
            transfer_rows.add(session, refused)
            session.execute(sa.select(TransferRecord.id)).all()  # writes both, and fails
        assert row.state == "PROPOSED"
        assert transfer_rows.lock(session, ["t2"]) == {}
        row.failure_reason = "after the savepoint"
    assert _stored(sessions) == {"t1": ("PROPOSED", "after the savepoint", None)}


def test_many_new_rows_read_back_as_given_and_are_copied_on_postgresql(
    database_url: str, sessions: sessionmaker[Session], copies: list[str]
) -> None:
    east = timezone(timedelta(hours=8))
    rows = []
    for n in range(db.COPY_MIN_ROWS + 5):
        row = _row(f"t{n:03}", state="CHECKED")
        row.failure_reason = ("a\tb", "line\nbreak", "back\\slash", "\\N", "碳")[n % 5]
        row.lock_expires_at = None if n % 2 else datetime(2026, 11, 27, 8, n % 60, tzinfo=east)
        rows.append(row)
    with db.unit_of_work(sessions) as session:
        for row in rows:
            transfer_rows.add(session, row)
        plain_rows.write(session, TransferRow)  # outside a pipeline, as a batch step's are
    assert _stored(sessions) == {r.id: (r.state, r.failure_reason, r.lock_expires_at) for r in rows}
    on_postgresql = database_url.startswith("postgresql")
    assert [c.split(" (")[0] for c in copies] == (["COPY transfers"] if on_postgresql else [])
