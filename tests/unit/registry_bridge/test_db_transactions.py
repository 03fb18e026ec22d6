"""Deferred inserts follow their transaction and savepoints; SQLite writers queue in order.

``db.defer_insert`` keeps append-only rows (log events, transfer steps) out of the ORM
until a flush or commit writes them in one batch (on PostgreSQL, one pipeline): a row must
be written exactly when the change it belongs to is, never after a rollback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db
from registry_bridge.schema import EventBlock, LogHead

_TABLE = EventBlock.__table__
_LOG_HEAD = LogHead.__table__


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.create_engine(f"sqlite:///{tmp_path}/ledger.db")
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()


def _row(index: int) -> dict[str, Any]:
    return {
        "event_idx": index,
        "seq": 0,
        "program": "VCS",
        "serial_series": "",
        "serial_start": index,
        "serial_end": index,
        "serial_node": index,
    }


def _written(sessions: sessionmaker[Session]) -> list[int]:
    with db.read_only(sessions) as session:
        return [
            int(i)
            for i in session.execute(
                sa.select(EventBlock.event_idx).order_by(EventBlock.event_idx)
            ).scalars()
        ]


def test_deferred_rows_are_written_at_commit(sessions: sessionmaker[Session]) -> None:
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(1))
        db.defer_insert(session, _TABLE, _row(2))
        assert _written(sessions) == []  # not before the commit
    assert _written(sessions) == [1, 2]


def test_a_rolled_back_transaction_writes_none(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(1))
        raise RuntimeError("the change failed")
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(2))
    assert _written(sessions) == [2]  # nothing of the failed transaction leaks into the next


def test_a_savepoint_keeps_rows_before_it_and_drops_its_own_on_rollback(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(1))
        with pytest.raises(RuntimeError), db.savepoint(session):
            db.defer_insert(session, _TABLE, _row(2))
            raise RuntimeError("one transfer's step failed")
        with db.savepoint(session):
            db.defer_insert(session, _TABLE, _row(3))
        db.defer_insert(session, _TABLE, _row(4))
    assert _written(sessions) == [1, 3, 4]


def test_a_query_sees_the_rows_deferred_before_it(sessions: sessionmaker[Session]) -> None:
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(7))
        found = session.execute(sa.select(EventBlock.event_idx)).scalars().all()
    assert list(found) == [7]


def test_rows_of_differing_shapes_are_written_through_sqlalchemy_alike(
    sessions: sessionmaker[Session],
) -> None:
    # Rows whose columns differ go through SQLAlchemy, not the plain executemany (on
    # PostgreSQL, inside the same pipeline as the plain ones).
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(1))
        db.defer_insert(session, _TABLE, dict(reversed(_row(2).items())))
        db.defer_insert(session, _LOG_HEAD, {"id": 5, "size": 0})
    assert _written(sessions) == [1, 2]


def test_a_refused_row_among_several_tables_writes_none_of_them(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(1))
    with pytest.raises(sa.exc.IntegrityError), db.unit_of_work(sessions) as session:
        db.defer_insert(session, _LOG_HEAD, {"id": 6, "size": 0})
        db.defer_insert(session, _TABLE, _row(2))
        db.defer_insert(session, _TABLE, _row(1))  # its primary key is taken
        db.defer_insert(session, _TABLE, _row(3))
    assert _written(sessions) == [1]
    with db.read_only(sessions) as session:
        assert session.execute(sa.select(LogHead.id).where(LogHead.id == 6)).all() == []
    with db.unit_of_work(sessions) as session:  # the connection is fit for the next
        db.defer_insert(session, _TABLE, _row(4))
    assert _written(sessions) == [1, 4]


def test_sqlite_writers_of_one_process_wait_for_each_other_in_turn(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with db.unit_of_work(sqlite_sessions) as session:
            db.defer_insert(session, _TABLE, _row(1))
            session.execute(sa.select(EventBlock.event_idx)).all()  # begins: takes the lock
            first_in.set()
            time.sleep(0.3)  # hold the write transaction while the second asks for one
            order.append("first")

    def second() -> None:
        first_in.wait(timeout=10)
        with db.unit_of_work(sqlite_sessions) as session:
            db.defer_insert(session, _TABLE, _row(2))
            session.execute(sa.select(EventBlock.event_idx)).all()
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["first", "second"]
    assert _written(sqlite_sessions) == [1, 2]


def test_a_failed_write_transaction_releases_the_writer_lock(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    with pytest.raises(sa.exc.IntegrityError), db.unit_of_work(sqlite_sessions) as session:
        session.execute(sa.insert(EventBlock), [_row(1), _row(1)])  # duplicate primary key
    done = threading.Event()

    def writer() -> None:
        with db.unit_of_work(sqlite_sessions) as session:
            db.defer_insert(session, _TABLE, _row(5))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(timeout=10)
    assert done.is_set()  # another thread could write: the lock was not left held
    assert _written(sqlite_sessions) == [5]


@pytest.mark.postgres
def test_postgresql_writes_a_transactions_deferred_rows_in_one_pipeline(
    database_url: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's statements run in-process: there is no round trip to save")
    entered: list[int] = []
    pipeline = psycopg.Connection.pipeline

    def counted(self: psycopg.Connection[Any]) -> Any:
        entered.append(1)
        return pipeline(self)

    monkeypatch.setattr(psycopg.Connection, "pipeline", counted)
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _TABLE, _row(1))
        db.defer_insert(session, _LOG_HEAD, {"id": 7, "size": 0})
    assert entered == [1]
    assert _written(sessions) == [1]


def test_a_sqlite_commit_is_on_disk_before_it_returns(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    """synchronous=FULL: WAL with NORMAL survives a process crash, not a power loss, and
    an answered transfer must survive both."""
    with db.read_only(sqlite_sessions) as session:
        settings = {
            pragma: session.connection().exec_driver_sql(f"PRAGMA {pragma}").scalar()
            for pragma in ("journal_mode", "synchronous")
        }
    assert settings == {"journal_mode": "wal", "synchronous": 2}  # 2 is FULL


def test_a_postgresql_read_opens_no_transaction_and_leaves_writes_in_one(
    postgres_sessions: sessionmaker[Session],
) -> None:
    """Under READ COMMITTED a reader's transaction only cost its BEGIN and ROLLBACK round
    trips: a read runs without one, and the pooled connection then serves writes in one."""
    with db.read_only(postgres_sessions) as session:
        connection = session.connection()
        connection.execute(sa.select(EventBlock.event_idx)).all()
        reader = connection.connection.driver_connection
        assert isinstance(reader, psycopg.Connection)
        assert reader.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
    with pytest.raises(RuntimeError), db.unit_of_work(postgres_sessions) as session:
        session.execute(sa.insert(EventBlock), [_row(1)])
        writer = session.connection().connection.driver_connection
        assert writer is reader  # the same pooled connection, back in transactions
        assert writer.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS
        raise RuntimeError("roll it back")
    assert _written(postgres_sessions) == []


def test_a_one_snapshot_read_does_not_see_a_commit_made_between_its_statements(
    sessions: sessionmaker[Session],
) -> None:
    """A reader whose statements must agree (a surrender's record, then the rows it
    locked) reads one snapshot: on PostgreSQL an autocommit reader's second statement
    would see a write committed after its first."""
    count = sa.select(sa.func.count()).select_from(EventBlock)
    with db.read_only(sessions, one_snapshot=True) as session:
        before = session.execute(count).scalar_one()
        with db.unit_of_work(sessions) as writer:
            writer.execute(sa.insert(EventBlock), [_row(1)])
        assert session.execute(count).scalar_one() == before
    assert _written(sessions) == [1]
