"""UtcDateTime writes on SQLite exactly the text SQLAlchemy's own DateTime writes.

Its SQLite conversion is its own (faster) code: stored timestamps must keep their text, so
databases written before read the same and text comparisons stay time comparisons.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from registry_bridge.schema import UtcDateTime

SQLITE = sa.create_engine("sqlite://").dialect
MOMENTS = [
    datetime(2026, 11, 26, 16, 23, 0, tzinfo=UTC),
    datetime(2026, 11, 26, 16, 23, 0, 1, tzinfo=UTC),
    datetime(2026, 1, 1, 3, 4, 5, 999999, tzinfo=timezone(timedelta(hours=8))),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_sqlite_text_is_sqlalchemys_and_reads_back_as_the_same_instant(moment: datetime) -> None:
    ours = UtcDateTime().bind_processor(SQLITE)(moment)
    sqlalchemys = sa.DateTime(timezone=True).dialect_impl(SQLITE).bind_processor(SQLITE)
    assert sqlalchemys is not None
    theirs = sqlalchemys(moment.astimezone(UTC))
    assert ours == theirs
    back = UtcDateTime().result_processor(SQLITE, None)(ours)
    assert back == moment and back.tzinfo is UTC


def test_text_order_is_time_order() -> None:
    bind = UtcDateTime().bind_processor(SQLITE)
    assert sorted(MOMENTS) == sorted(MOMENTS, key=bind)


def test_server_default_text_without_fraction_reads() -> None:
    read = UtcDateTime().result_processor(SQLITE, None)
    assert read("2026-11-26 16:23:00") == datetime(2026, 11, 26, 16, 23, tzinfo=UTC)
    assert read(None) is None


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        UtcDateTime().bind_processor(SQLITE)(datetime(2026, 11, 26))
