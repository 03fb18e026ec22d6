"""Shared fixtures: databases (SQLite and PostgreSQL) and free ports.

PostgreSQL tests run against ``CARBONLINK_TEST_POSTGRES_URL`` (default: the local server,
user postgres).  Each test gets an empty database of its own name, emptied for another test
or dropped afterwards.  When no server answers, the tests skip on a developer machine and
FAIL under ``CI=true``: CI must never pass without having run them.
"""

from __future__ import annotations

import os
import threading
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


_CATALOG_FINGERPRINT = sa.text(
    """
    SELECT
      (SELECT array_agg(nspname::text ORDER BY nspname) FROM pg_namespace
        WHERE nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'),
      (SELECT array_agg(extname::text ORDER BY extname) FROM pg_extension),
      (SELECT pg_get_userbyid(nspowner) || ' ' || nspacl::text || ' '
              || coalesce(obj_description(oid, 'pg_namespace'), '')
        FROM pg_namespace WHERE nspname = 'public'),
      (SELECT datconnlimit || ' ' || datallowconn || ' ' || coalesce(datacl::text, '')
        FROM pg_database WHERE datname = current_database()),
      (SELECT count(*) FROM pg_db_role_setting
        WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())),
      (SELECT count(*) FROM pg_class), (SELECT count(*) FROM pg_proc),
      (SELECT count(*) FROM pg_type), (SELECT count(*) FROM pg_operator),
      (SELECT count(*) FROM pg_opclass), (SELECT count(*) FROM pg_collation),
      (SELECT count(*) FROM pg_cast), (SELECT count(*) FROM pg_language),
      (SELECT count(*) FROM pg_default_acl), (SELECT count(*) FROM pg_largeobject_metadata),
      (SELECT count(*) FROM pg_event_trigger), (SELECT count(*) FROM pg_publication),
      (SELECT count(*) FROM pg_foreign_server), (SELECT count(*) FROM pg_ts_config),
      (SELECT count(*) FROM pg_conversion)
    """
)
"""What a database holds beyond its tables' rows, in one row: equal to a new database's
when it holds nothing a new one does not."""


class _EmptiedDatabases:
    """Test databases emptied after their test, to be given to the next under a new name.

    CREATE DATABASE copies template1 page by page: some 0.3 s of the server's CPU for each
    of some 250 PostgreSQL tests.  A used database is emptied instead (its public schema
    dropped and made again as a new database has it: some 30 ms) and kept only when its
    catalog then shows what a new database's shows.  The next test gets it renamed to a
    name of its own, so a connection an earlier test left open cannot reach it: a
    database in use cannot be renamed, and one that is, or that keeps anything a new one
    does not, is dropped (a new one is made in its place).
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._new: tuple[object, ...] | None = None

    def learn_new(self, url: str) -> None:
        """Read what a new database holds, from ``url``'s before its test has it."""
        if self._new is None:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            try:
                with engine.connect() as connection:
                    self._new = tuple(connection.execute(_CATALOG_FINGERPRINT).one())
            finally:
                engine.dispose()

    def take(self, admin: sa.Connection, name: str) -> bool:
        """Rename an emptied database to ``name``; False when none is left."""
        while True:
            with self._lock:
                if not self._names:
                    return False
                spare = self._names.pop()
            try:
                admin.execute(sa.text(f'ALTER DATABASE "{spare}" RENAME TO "{name}"'))
            except sa.exc.DBAPIError:  # someone connected to it since: not ours to give
                admin.execute(sa.text(f'DROP DATABASE IF EXISTS "{spare}" WITH (FORCE)'))
                continue
            return True

    def keep(self, admin: sa.Connection, url: str) -> bool:
        """Empty the database at ``url`` (its sessions closed) and keep it under another
        name; False when it cannot be emptied to what a new one holds."""
        if self._new is None:
            return False
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as connection:
                # A session not yet gone holds its locks until it is: wait, not forever.
                connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
                connection.execute(sa.text("DROP SCHEMA public CASCADE"))
                connection.execute(sa.text("CREATE SCHEMA public AUTHORIZATION pg_database_owner"))
                connection.execute(sa.text("GRANT USAGE ON SCHEMA public TO PUBLIC"))
                connection.execute(sa.text("COMMENT ON SCHEMA public IS 'standard public schema'"))
                emptied = tuple(connection.execute(_CATALOG_FINGERPRINT).one())
        except sa.exc.SQLAlchemyError:
            return False
        finally:
            engine.dispose()
        if emptied != self._new:
            return False
        spare = f"carbonlink_emptied_{uuid.uuid4().hex[:12]}"
        try:
            admin.execute(
                sa.text(f'ALTER DATABASE "{sa.make_url(url).database}" RENAME TO "{spare}"')
            )
        except sa.exc.DBAPIError:  # a session came back: drop it, with the session
            return False
        with self._lock:
            self._names.append(spare)
        return True

    def drop_all(self) -> None:
        """Drop every database kept, at the end of the run."""
        with self._lock:
            names, self._names = self._names, []
        if not names:
            return
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                for name in names:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


_EMPTIED = _EmptiedDatabases()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the emptied databases kept for tests that did not come."""
    _EMPTIED.drop_all()


def _database_url(name: str) -> str:
    return sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def create_postgres_database() -> str:
    """An empty database of a name of its own (see _EmptiedDatabases); returns its URL."""
    name = f"carbonlink_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if _EMPTIED.take(connection, name):
                return _database_url(name)
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    _EMPTIED.learn_new(_database_url(name))
    return _database_url(name)


def drop_postgres_database(url: str) -> None:
    """Close the sessions of a database made by create_postgres_database, then empty it
    for another test (see _EmptiedDatabases) or drop it."""
    name = sa.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            if not _EMPTIED.keep(connection, url):
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
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
