"""Reads by a list of keys as plain text (``db.read_plain_in``) answer as the ORM does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from registry_bridge import db, ledger
from registry_bridge.model import HoldingStatus

AT = datetime(2026, 11, 27, tzinfo=UTC)


def _seed(sessions: sessionmaker[Session]) -> list[int]:
    """Three ledger rows, one of them locked until a given time (a timestamp to convert)."""
    with db.unit_of_work(sessions) as session:
        rows = [
            ledger.issue(
                session,
                "verra",
                "dev",
                serials.parse_serial(
                    "verra",
                    f"9660-{s}-{s + 9}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0",
                ),
                AT,
            )
            for s in (1, 11, 21)
        ]
        ledger.change(
            session,
            rows[1],
            "lock",
            AT,
            status=HoldingStatus.LOCKED,
            lock_transfer_id="t1",
            lock_expires_at=AT + timedelta(hours=1),
        )
    return [r.row_id for r in rows]


def test_rows_read_by_keys_as_plain_text_are_the_orms(sessions: sessionmaker[Session]) -> None:
    ids = _seed(sessions)
    with db.read_only(sessions) as session:
        # The last list is longer than one statement takes (db._PLAIN_IN_CHUNK).
        many = [*range(10**9, 10**9 + 600), ids[0]]
        for keys in (ids, ids[:2], [ids[2], ids[0]], [*ids, 10**9], many):
            orm = [dict(r) for r in session.execute(ledger._BY_IDS, {"keys": keys}).mappings()]
            plain = db.read_plain_in(session, ledger._BY_IDS, "keys", keys)
            assert sorted(plain, key=lambda r: r["id"]) == sorted(orm, key=lambda r: r["id"])
        (locked,) = db.read_plain_in(session, ledger._BY_IDS, "keys", [ids[1]])
        assert locked["lock_expires_at"] == AT + timedelta(hours=1)
        assert db.read_plain_in(session, ledger._BY_IDS, "keys", [10**9]) == []
