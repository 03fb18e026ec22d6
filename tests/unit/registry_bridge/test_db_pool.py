"""PostgreSQL's connections: pinged after idling, not before every transaction; a lost or
refused connection is DatabaseUnavailable.

PostgreSQL only: SQLite's connections are files, with no server to drop them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import db
from registry_bridge.errors import DatabaseUnavailable
from registry_bridge.schema import EventBlock
from tests.conftest import require_postgres


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = db.create_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


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
    postgres_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(engine)
    _terminate(postgres_url, first)  # as a server restart or an idle timeout would
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.0)
    pings = _counting_pings(engine, monkeypatch)
    second = _backend_pid(engine)  # would fail on the dead connection unpinged
    assert second != first
    assert pings


@pytest.mark.postgres
def test_a_connection_in_steady_use_is_not_pinged(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _backend_pid(engine)
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 60.0)
    pings = _counting_pings(engine, monkeypatch)
    for _ in range(5):
        _backend_pid(engine)
    assert pings == []


def _plain_select_one(session: Session) -> None:
    db.run_plain(session, _SELECT_ONE, {})


def _orm_select_one(session: Session) -> None:
    session.execute(_SELECT_ONE).all()


def _pipelined_write(session: Session) -> None:
    row = {"event_idx": 1, "seq": 0, "program": "VCS", "serial_series": ""}
    db.defer_insert(
        session, EventBlock.__table__, {**row, "serial_start": 1, "serial_end": 1, "serial_node": 1}
    )
    db.write_deferred(session)


_SELECT_ONE: sa.Select[tuple[Any]] = sa.select(sa.literal_column("1"))


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [_orm_select_one, _plain_select_one, _pipelined_write],
    ids=["orm", "driver", "pipeline"],
)
def test_a_connection_lost_mid_transaction_is_database_unavailable(
    postgres_url: str, engine: sa.Engine, statement: Callable[[Session], None]
) -> None:
    """Whichever way the statement ran: clients hear UNAVAILABLE (and may retry), not
    an internal error, and the next transaction gets a working connection."""
    sessions = db.session_factory(engine)
    with pytest.raises(DatabaseUnavailable, match="lost"), db.unit_of_work(sessions) as s:
        pid = int(s.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        _terminate(postgres_url, pid)
        statement(s)
    assert _backend_pid(engine) != pid


@pytest.mark.postgres
def test_a_database_that_refuses_connections_is_database_unavailable() -> None:
    require_postgres()
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = db.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
    try:
        with pytest.raises(DatabaseUnavailable, match="refused"):
            _backend_pid(engine)
    finally:
        engine.dispose()
