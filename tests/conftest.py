"""Shared fixtures: databases (SQLite and PostgreSQL) and free ports.

PostgreSQL tests run against ``CARBONLINK_TEST_POSTGRES_URL`` (default: the local server,
user postgres).  Each test gets a database of its own, dropped afterwards.  When no server
answers, the tests skip on a developer machine and FAIL under ``CI=true``: CI must never
pass without having run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

POSTGRES_ADMIN_URL = os.environ.get(
    "CARBONLINK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_available() -> str | None:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        return str(exc.orig) if exc.orig else str(exc)
    finally:
        engine.dispose()
    return None


_POSTGRES_PROBLEM: str | None = None
_POSTGRES_PROBED = False


def require_postgres() -> None:
    """Skip (developer machine) or fail (CI) when PostgreSQL is down."""
    global _POSTGRES_PROBLEM, _POSTGRES_PROBED
    if not _POSTGRES_PROBED:
        _POSTGRES_PROBLEM = _postgres_available()
        _POSTGRES_PROBED = True
    if _POSTGRES_PROBLEM is not None:
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is not answering: {_POSTGRES_PROBLEM}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)


def create_postgres_database() -> str:
    """Create an empty database; returns its URL."""
    name = f"carbonlink_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """Drop a database made by create_postgres_database, closing its sessions."""
    name = sa.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def _postgres_database() -> Iterator[str]:
    require_postgres()
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A fresh, empty database of each supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/carbonlink.db"
        return
    with _postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, for what only PostgreSQL can show."""
    with _postgres_database() as url:
        yield url
