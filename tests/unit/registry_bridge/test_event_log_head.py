"""The log head's size is kept in memory through a transaction and written with its events.

Indexes must stay dense whatever a transaction does: an event appended in a savepoint that
rolls back, or in a transaction that fails, gives its index back, and the head in the
database always equals the number of events.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db
from registry_bridge.event_log import append_event, log_size
from registry_bridge.schema import LedgerEvent, LogHead

_AT = datetime(2026, 11, 26, tzinfo=UTC)


def _append(session: Session, note: str) -> int:
    return append_event(session, "note", {"note": note}, _AT)


def _stored(sessions: sessionmaker[Session]) -> tuple[int, list[int]]:
    """The head's size and the events' indexes, as committed."""
    with db.read_only(sessions) as session:
        size = session.execute(sa.select(LogHead.size)).scalar_one()
        indexes = session.execute(sa.select(LedgerEvent.idx).order_by(LedgerEvent.idx))
        return int(size), [int(i) for i in indexes.scalars()]


def test_appends_of_one_transaction_take_consecutive_indexes(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        assert [_append(session, str(n)) for n in range(3)] == [0, 1, 2]
    with db.unit_of_work(sessions) as session:
        assert _append(session, "next") == 3
    assert _stored(sessions) == (4, [0, 1, 2, 3])


def test_a_query_inside_the_transaction_sees_the_new_size(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        _append(session, "a")
        _append(session, "b")
        assert log_size(session) == 2


def test_a_failed_transaction_gives_its_indexes_back(sessions: sessionmaker[Session]) -> None:
    with db.unit_of_work(sessions) as session:
        _append(session, "kept")
    with pytest.raises(RuntimeError), db.unit_of_work(sessions) as session:
        _append(session, "lost")
        raise RuntimeError("the change failed")
    with db.unit_of_work(sessions) as session:
        assert _append(session, "after") == 1
    assert _stored(sessions) == (2, [0, 1])


def test_a_rolled_back_savepoint_gives_its_indexes_back(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        assert _append(session, "before") == 0
        with pytest.raises(RuntimeError), db.savepoint(session):
            assert _append(session, "undone") == 1
            assert _append(session, "undone too") == 2
            raise RuntimeError("one transfer's step failed")
        with db.savepoint(session):
            assert _append(session, "kept") == 1
        assert _append(session, "after") == 2
    assert _stored(sessions) == (3, [0, 1, 2])
