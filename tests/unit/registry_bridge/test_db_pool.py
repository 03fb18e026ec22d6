"""PostgreSQL's pooled connections: pinged after idling, not before every transaction.

PostgreSQL only: SQLite's connections are files, with no server to drop them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from registry_bridge import db
from tests.conftest import create_postgres_database, drop_postgres_database, require_postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_postgres()
    database_url = create_postgres_database()
    try:
        yield database_url
    finally:
        drop_postgres_database(database_url)


def _backend_pid(engine: sa.Engine) -> int:
    sessions = db.session_factory(engine)
    with db.unit_of_work(sessions) as session:
        return int(session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(database_url: str, pid: int) -> None:
    url = sa.make_url(database_url)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _counting_pings(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    do_ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return do_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


@pytest.mark.postgres
def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_engine(pg_url)
    try:
        first = _backend_pid(engine)
        _terminate(pg_url, first)  # as a server restart or an idle timeout would
        monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.0)
        pings = _counting_pings(engine, monkeypatch)
        second = _backend_pid(engine)  # would fail on the dead connection unpinged
        assert second != first
        assert pings
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_in_steady_use_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_engine(pg_url)
    try:
        _backend_pid(engine)
        monkeypatch.setattr(db, "PING_IDLE_SECONDS", 60.0)
        pings = _counting_pings(engine, monkeypatch)
        for _ in range(5):
            _backend_pid(engine)
        assert pings == []
    finally:
        engine.dispose()
