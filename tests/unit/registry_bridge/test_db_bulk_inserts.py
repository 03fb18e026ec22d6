"""Many rows of one table in one write: what is read back is what was deferred.

From ``db.COPY_MIN_ROWS`` rows of one table, PostgreSQL inserts them with one COPY
outside a pipeline instead of an ``executemany`` inside one.  Whichever way they go, the
rows read back must equal the rows given -- text with tabs, newlines, backslashes and
non-ASCII, bytes of every value, NULL-looking text, time zones -- a refused row must
write none of them, and the connection must serve the next transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db
from registry_bridge.schema import EventBlock, LedgerEvent, LogHead

_EVENTS = LedgerEvent.__table__
_RANGES = EventBlock.__table__
_MANY = db.COPY_MIN_ROWS + 3
_AWKWARD_TEXT = ("a\tb", "line\nbreak", "back\\slash", "\\N", "", "碳 tonne", 'quote\'s "x"')


def _event(index: int) -> dict[str, Any]:
    east = timezone(timedelta(hours=8))
    return {
        "idx": index,
        "kind": _AWKWARD_TEXT[index % len(_AWKWARD_TEXT)][:32],
        "payload": bytes(range(256)) + index.to_bytes(4, "big"),
        "leaf_hash": bytes([index % 256]) * 32,
        "transfer_id": _AWKWARD_TEXT[(index + 3) % len(_AWKWARD_TEXT)],
        "created_at": datetime(2026, 11, 27, 4, 30, index % 60, 123456, tzinfo=east),
    }


def _range(index: int) -> dict[str, Any]:
    return {
        "event_idx": index,
        "seq": 0,
        "program": "VCS",
        "serial_series": _AWKWARD_TEXT[index % len(_AWKWARD_TEXT)],
        "serial_start": 10**15 + index,
        "serial_end": 10**15 + index,
        "serial_node": 10**15 + index,
    }


def _events(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with db.read_only(sessions) as session:
        rows = session.execute(sa.select(_EVENTS).order_by(_EVENTS.c.idx)).mappings()
        return [
            {**row, "payload": bytes(row["payload"]), "leaf_hash": bytes(row["leaf_hash"])}
            for row in rows
        ]


def _as_utc(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": row["created_at"].astimezone(UTC)}


def test_many_rows_read_back_as_they_were_given(
    database_url: str, sessions: sessionmaker[Session], copies: list[str]
) -> None:
    events = [_event(i) for i in range(_MANY)]
    ranges = [_range(i) for i in range(_MANY)]
    with db.unit_of_work(sessions) as session:
        for event, block in zip(events, ranges, strict=True):
            db.defer_insert(session, _EVENTS, event)
            db.defer_insert(session, _RANGES, block)
        db.defer_insert(session, LogHead.__table__, {"id": 9, "size": 0})  # a few rows, too
    assert _events(sessions) == [_as_utc(e) for e in events]
    with db.read_only(sessions) as session:
        stored = session.execute(sa.select(_RANGES).order_by(_RANGES.c.event_idx)).mappings()
        assert [dict(r) for r in stored] == ranges
        head = sa.select(LogHead.size).where(LogHead.id == 9)
        assert session.execute(head).scalars().all() == [0]
    if database_url.startswith("postgresql"):
        assert copies == [
            "COPY ledger_events (idx, kind, payload, leaf_hash, transfer_id, created_at)"
            " FROM STDIN",
            "COPY event_blocks (event_idx, seq, program, serial_series, serial_start, serial_end,"
            " serial_node) FROM STDIN",
        ]
    else:
        assert copies == []


def test_fewer_rows_are_not_copied(sessions: sessionmaker[Session], copies: list[str]) -> None:
    events = [_event(i) for i in range(db.COPY_MIN_ROWS - 1)]
    with db.unit_of_work(sessions) as session:
        for event in events:
            db.defer_insert(session, _EVENTS, event)
    assert _events(sessions) == [_as_utc(e) for e in events]
    assert copies == []


def test_a_refused_row_among_many_writes_none_and_the_connection_serves_on(
    sessions: sessionmaker[Session],
) -> None:
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _EVENTS, _event(5))
    with pytest.raises(sa.exc.IntegrityError), db.unit_of_work(sessions) as session:
        for index in range(_MANY):  # index 5 is taken
            db.defer_insert(session, _EVENTS, _event(index))
    assert [e["idx"] for e in _events(sessions)] == [5]
    with db.unit_of_work(sessions) as session:
        for index in range(100, 100 + _MANY):
            db.defer_insert(session, _EVENTS, _event(index))
    assert [e["idx"] for e in _events(sessions)] == [5, *range(100, 100 + _MANY)]


def test_many_rows_in_a_savepoint_are_dropped_with_it(sessions: sessionmaker[Session]) -> None:
    with db.unit_of_work(sessions) as session:
        db.defer_insert(session, _EVENTS, _event(0))
        with pytest.raises(RuntimeError), db.savepoint(session):
            for index in range(1, 1 + _MANY):
                db.defer_insert(session, _EVENTS, _event(index))
            session.execute(sa.select(LogHead.size)).all()  # writes them inside the savepoint
            raise RuntimeError("the group failed")
        db.defer_insert(session, _EVENTS, _event(1_000))
    assert [e["idx"] for e in _events(sessions)] == [0, 1_000]
