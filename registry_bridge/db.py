"""Database engine, sessions and schema migrations for the ledger.

SQLite is the embedded default; PostgreSQL is production.  On SQLite every transaction
starts with ``BEGIN IMMEDIATE``, so writers are serialized by the database itself: the
ledger's overlap check and the insert that follows it can never interleave with another
writer's.  On PostgreSQL the schema's constraints do that work.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler

from registry_bridge.errors import CarbonlinkError, DatabaseUnavailable, TransactionAborted

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Serializes concurrent migrators (several gateways starting at once) on PostgreSQL.
_MIGRATION_LOCK_KEY = 0x6361_7262_6F6E  # "carbon"


class DatabaseError(CarbonlinkError):
    """The database cannot be reached or its schema cannot be brought up to date."""


def is_sqlite(url: str | sa.URL) -> bool:
    """True when the URL names an SQLite database."""
    return sa.make_url(url).get_backend_name() == "sqlite"


_SQLITE_BUSY_SECONDS = 30
# connection.info key: this connection's transaction holds the process's writer lock.
_HOLDS_WRITER = "carbonlink.holds_writer"


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with carbonlink's connection settings.

    Raises:
        DatabaseError: The URL is malformed or names an unsupported backend.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(f"database_url is not a valid URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": _SQLITE_BUSY_SECONDS, "check_same_thread": False},
            poolclass=sa.pool.QueuePool if database not in ("", ":memory:") else sa.pool.StaticPool,
        )
        _serialize_sqlite_writers(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(parsed, pool_size=10, max_overflow=20)
        event.listen(engine, "handle_error", _as_carbonlink_error, retval=True)
        _ping_idle_connections(engine)
        return engine
    raise DatabaseError(f"database backend {backend!r} is not supported (use sqlite or postgresql)")


# A pooled connection idle this long is pinged before it is used again.
PING_IDLE_SECONDS = 1.0
# connection record info key: when the connection last went back to the pool.
_CHECKED_IN_AT = "carbonlink.checked_in_at"


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection before use only when it has been idle a while.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip for each of a
    transfer's transactions, four per SubmitTransfer.  A connection the server dropped
    (a restart, an idle timeout) was idle when it happened; one in steady use would have
    failed in use already, and the engine then drops the whole pool anyway.
    """

    @event.listens_for(engine, "checkin")
    def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in: float | None = record.info.get(_CHECKED_IN_AT)
        if checked_in is None or time.monotonic() - checked_in < PING_IDLE_SECONDS:
            return  # new, or back in the pool a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out another (a new one if need be).
            raise sa.exc.DisconnectionError(f"a pooled connection was closed: {exc}") from exc


# PostgreSQL's SQLSTATEs for a transaction it rolled back because of a concurrent one.
_ABORTED_SQLSTATES = {"40001": "a serialization conflict", "40P01": "a deadlock"}


def _transaction_aborted(driver_error: BaseException) -> TransactionAborted | None:
    cause = _ABORTED_SQLSTATES.get(getattr(driver_error, "sqlstate", None) or "")
    if cause is None:
        return None
    return TransactionAborted(
        f"the database aborted the transaction to break {cause} with a concurrent one: "
        f"{str(driver_error).splitlines()[0]}"
    )


def _lost_connection(driver_error: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"the database connection was lost or refused: {str(driver_error).splitlines()[0]}"
    )


# SQLSTATEs of a server that went away: class 08 (connection exceptions), and an
# administrator's or a crash's shutdown, or a server not accepting connections yet.
_SERVER_GONE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def _server_gone(error: BaseException | None) -> bool:
    # The error or one it arose from: closing a pipeline on a connection the server just
    # ended fails with its own error, whose context is the server's.
    while error is not None:
        sqlstate: str = getattr(error, "sqlstate", None) or ""
        if sqlstate.startswith(_SERVER_GONE_SQLSTATES):
            return True
        error = error.__cause__ or error.__context__
    return False


def _carbonlink_error(driver_error: BaseException, disconnect: bool) -> CarbonlinkError | None:
    """What a driver error is to carbonlink, when neither the request nor the code caused it.

    A lost connection (``disconnect``, or the server's own word that it went away) or a
    transaction the database aborted against a concurrent one: callers retry a lost race,
    and clients hear that the database is unavailable (and may retry), instead of an
    internal error.  None for any other error.
    """
    if disconnect or _server_gone(driver_error):
        return _lost_connection(driver_error)
    return _transaction_aborted(driver_error)


def _as_carbonlink_error(context: ExceptionContext) -> BaseException | None:
    # SQLAlchemy drops the pool's connections after this when it is a disconnect.
    error = context.original_exception
    if _server_gone(error):
        context.is_disconnect = True
    refused = context.connection is None and isinstance(
        error, context.dialect.loaded_dbapi.OperationalError
    )
    return _carbonlink_error(error, context.is_disconnect or refused)


def _serialize_sqlite_writers(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it returns, so a transfer the gateway answered
        # survives a power loss too. NORMAL survives a process crash only, and may drop
        # the last commits with the machine; FULL costs one fsync (~0.3 ms) a commit.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_SECONDS * 1000}")
        cursor.close()

    # Writers of this process queue here for SQLite's one write lock.  Waiting inside
    # SQLite means its busy handler, which polls with sleeps of up to 100 ms: threads of
    # one gateway that contend for the lock (concurrent requests, a batch's parts, the
    # recovery loop) then idle while it is free.  Other processes still meet the busy
    # handler; this lock only orders this process's own writers, first come first served.
    writer = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            # A reader takes no write lock: under WAL it reads its snapshot while another
            # connection -- even this thread's own write transaction -- holds the lock.
            connection.exec_driver_sql("BEGIN")
            return
        if not writer.acquire(timeout=_SQLITE_BUSY_SECONDS):
            raise DatabaseError(
                f"no write transaction within {_SQLITE_BUSY_SECONDS} s: the database is busy"
            )
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release()
            raise
        connection.info[_HOLDS_WRITER] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(connection: sa.Connection) -> None:
        if connection.info.pop(_HOLDS_WRITER, False):
            writer.release()

    # A connection that goes back to the pool (or is thrown away) without a commit or a
    # rollback event -- e.g. after its thread died mid-transaction -- must not keep the
    # lock: connection.info is its pool record's info, seen here too.
    @event.listens_for(engine, "reset")
    def _on_reset(_dbapi_connection: Any, record: Any, _state: Any) -> None:
        if record.info.pop(_HOLDS_WRITER, False):
            writer.release()

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(_dbapi_connection: Any, record: Any, _exception: Any) -> None:
        if record.info.pop(_HOLDS_WRITER, False):
            writer.release()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never expire loaded objects on commit (results outlive the unit of work)."""
    return sessionmaker(engine, expire_on_commit=False)


READ_ONLY = "carbonlink_read_only"
"""Execution option marking a read-only transaction (see :func:`read_only`)."""


@contextmanager
def read_only(factory: sessionmaker[Session], *, one_snapshot: bool = False) -> Iterator[Session]:
    """A read-only session: on SQLite a deferred transaction (one snapshot), always rolled
    back; on PostgreSQL no transaction at all (autocommit), each statement reading its own
    snapshot as it would under READ COMMITTED inside one, unless ``one_snapshot``: then a
    REPEATABLE READ transaction, every statement reading the snapshot of the first.

    ``one_snapshot`` is for a reader whose statements must agree with each other: one that
    reads a record and then rows it points to, which another writer may change in between
    (a surrender's record still pending and its locked rows already surrendered, so the
    units counted by neither).

    For lookups made while the calling thread already holds a write transaction (the rules
    gate reads entity records inside the bridge's surrender transaction): on SQLite a
    second ``BEGIN IMMEDIATE`` from the same thread would wait for the first until it
    times out, so readers begin deferred instead.
    """
    with factory() as session:
        options: dict[str, Any] = {READ_ONLY: True}
        if session.get_bind().dialect.name == "postgresql":
            # Under READ COMMITTED each statement reads a snapshot of its own, inside a
            # transaction or not: for a reader, the transaction only adds the round trips
            # of its BEGIN and ROLLBACK (two of a one-statement read's three).
            options["isolation_level"] = "REPEATABLE READ" if one_snapshot else "AUTOCOMMIT"
        session.connection(execution_options=options)
        try:
            yield session
        finally:
            session.rollback()


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(connection: sa.Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _sqlite_foreign_keys(connection: sa.Connection, enforced: bool) -> None:
    # On the driver's own connection: SQLite ignores the pragma inside a transaction, and
    # a statement through SQLAlchemy would begin one first.
    driver = connection.connection.driver_connection
    if driver is None:
        raise DatabaseError("the database connection closed during a migration")
    driver.execute(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")


@contextmanager
def _migrating(engine: Engine) -> Iterator[sa.Connection]:
    """The one transaction a schema migration runs in.

    On SQLite, foreign keys are not enforced while it runs and are all checked before it
    commits: SQLite changes a table's constraints only by rebuilding the table, and
    dropping the old copy of a table other rows refer to would fail (or, deferred, fail
    the commit) though the new copy keeps every row.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(connection, enforced=False)
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY}
                    )
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise DatabaseError(
                            f"the migration left a row of {broken[0]} referring to a missing "
                            f"row of {broken[2]}; nothing was changed"
                        )
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, enforced=True)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; safe when several gateways start at once.

    Raises:
        DatabaseError: The database cannot be reached or a migration fails.
    """
    try:
        with _migrating(engine) as connection:
            command.upgrade(_alembic_config(connection), revision)
    except (sa.exc.SQLAlchemyError, DatabaseUnavailable) as exc:
        raise DatabaseError(
            f"cannot migrate the database: {exc.__class__.__name__}: {exc}"
        ) from exc


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Roll the schema back to ``revision`` (used by migration tests)."""
    with _migrating(engine) as connection:
        command.downgrade(_alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None when it has none."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_connection(engine: Engine) -> None:
    """Raise DatabaseError unless the database answers a trivial query."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except (sa.exc.SQLAlchemyError, DatabaseUnavailable) as exc:
        # The driver's own first line says which (no such database, refused, no file);
        # drivers do not echo a password there, and the URL is not quoted.
        cause = exc.__cause__ or getattr(exc, "orig", None) or exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        raise DatabaseError(
            f"cannot connect to the database: {exc.__class__.__name__}: {reason}"
        ) from exc


T = TypeVar("T")


@dataclass
class _ReadScope:
    answers: dict[Hashable, Any]
    """Lookups already made in the scope, by key."""
    session: Session | None
    """The transaction the scope's lookups read in, if any."""


_read_scope: contextvars.ContextVar[_ReadScope | None] = contextvars.ContextVar(
    "read_scope", default=None
)


@contextmanager
def read_scope(session: Session | None = None) -> Iterator[None]:
    """Within the block, ``scoped_lookup`` answers a repeated lookup from its first answer.

    A batch of transfers recorded in one transaction asks the same reference data (a
    project's listing) once per transfer; inside one scope it reads it once, as of the
    scope's start, which is when the batch's transaction reads everything else too.
    With ``session``, lookups read in that session's transaction (see ``scope_session``)
    instead of opening one of their own.
    """
    token = _read_scope.set(_ReadScope({}, session))
    try:
        yield
    finally:
        _read_scope.reset(token)


def scope_session(engine: sa.Engine | None) -> Session | None:
    """The current read scope's session, if it has one bound to ``engine``."""
    scope = _read_scope.get()
    if scope is None or scope.session is None or scope.session.get_bind() is not engine:
        return None
    return scope.session


def scoped_lookup(key: Hashable, load: Callable[[], T]) -> T:
    """``load()``, or the answer it gave earlier in the current ``read_scope``."""
    scope = _read_scope.get()
    if scope is None:
        return load()
    if key not in scope.answers:
        scope.answers[key] = load()
    value: T = scope.answers[key]
    return value


# session.info key: rows to insert with the session's next flush, by table, in order.
_DEFERRED_INSERTS = "carbonlink.deferred_inserts"
# session.info key: set while a flush of the whole session (not of chosen objects) runs.
_FULL_FLUSH = "carbonlink.full_flush"


def defer_insert(session: Session, table: sa.FromClause, row: dict[str, Any]) -> None:
    """Insert ``row`` into ``table`` with the session's next full flush or commit, batched.

    For append-only rows nothing reads back in the same transaction (log events, transfer
    steps): as ORM objects they would each join the unit of work, whose every flush walks
    all pending objects, so a transaction of many changes cost quadratic time.  Tables are
    written in the order their first row was deferred (an event before its ranges), after
    the flush's own objects (a row may refer to one: a step to its transfer).  Savepoints
    must be taken with :func:`savepoint`.
    """
    if not isinstance(table, sa.Table):
        raise TypeError(f"deferred inserts go to a table, not {table!r}")
    pending: dict[sa.Table, list[dict[str, Any]]] = session.info.setdefault(_DEFERRED_INSERTS, {})
    pending.setdefault(table, []).append(row)


# Per (table, columns, database kind): the INSERT's text, its parameters' order (None for
# named parameters) and each column's bind processor.
_Processor = Callable[[Any], Any] | None
_INSERT_SQL: dict[
    tuple[sa.Table, tuple[str, ...], str], tuple[str, tuple[str, ...] | None, dict[str, _Processor]]
] = {}


# Drivers that bind ``bytes`` as a blob with no wrapping.
_BYTES_NATIVE = frozenset({"pysqlite", "psycopg"})


def _plain_insert(
    table: sa.Table, columns: tuple[str, ...], dialect: sa.Dialect
) -> tuple[str, tuple[str, ...] | None, dict[str, _Processor]] | None:
    """The INSERT of ``columns`` into ``table`` as driver text; None if a column is left
    to a default SQLAlchemy would compute (those rows go through SQLAlchemy)."""
    key = (table, columns, dialect.name)
    if key not in _INSERT_SQL:
        if any(c.key not in columns and c.default is not None for c in table.columns):
            return None
        compiled = table.insert().compile(dialect=dialect, column_keys=list(columns))
        positions = tuple(compiled.positiontup) if compiled.positiontup else None
        processors = {c: _bind_processor(table.columns[c].type, dialect) for c in columns}
        _INSERT_SQL[key] = (str(compiled), positions, processors)
    return _INSERT_SQL[key]


def _bind_processor(column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> _Processor:
    # Both drivers (sqlite3, psycopg) bind bytes as a blob themselves; the processor
    # only wraps them, at a cost that showed in every batch.
    if isinstance(column_type, sa.LargeBinary) and dialect.driver in _BYTES_NATIVE:
        return None
    return column_type.bind_processor(dialect)


class _Binder:
    """Converts values with a column's bind processor, each distinct timestamp once.

    The rows of one transaction share their few timestamps (every row of a step carries
    the step's time), and converting one cost more than writing it.
    """

    def __init__(self) -> None:
        self._times: dict[tuple[int, datetime], Any] = {}

    def __call__(self, processor: _Processor, value: Any) -> Any:
        if processor is None:
            return value
        if type(value) is not datetime:
            return processor(value)
        key = (id(processor), value)
        if key not in self._times:
            self._times[key] = processor(value)
        return self._times[key]


@contextmanager
def driver_cursor(session: Session) -> Iterator[Any]:
    """A DB-API cursor on the session's own connection, inside its transaction.

    For statements whose text is compiled once (deferred inserts, the ledger's fixed
    lookups): SQLAlchemy's per-execution work cost more than the statements themselves.

    Raises:
        DatabaseError: The session's connection has no driver connection behind it.
    """
    connection = session.connection()
    driver = connection.connection.driver_connection
    if driver is None:
        raise DatabaseError("the session's connection has no driver connection")
    open_pipeline: Callable[[], None] | None = session.info.pop(_OPEN_PIPELINE, None)
    if open_pipeline is not None:
        open_pipeline()
    with driver_errors(connection):
        cursor = driver.cursor()
        try:
            yield cursor
        finally:
            cursor.close()


@contextmanager
def driver_errors(connection: sa.Connection) -> Iterator[None]:
    """The driver's errors raised in the block, as SQLAlchemy raises them.

    An IntegrityError for a refused row, say, or what the engine's handle_error makes of
    it: callers handle a statement's failure alike whoever ran it.
    """
    driver_error: type[Exception] = connection.dialect.loaded_dbapi.Error
    try:
        yield
    except driver_error as exc:
        # (SQLAlchemy types the driver's error class as its PEP 249 protocol.)
        disconnect = _server_gone(exc) or connection.dialect.is_disconnect(
            cast(Any, exc), connection.connection.dbapi_connection, None
        )
        if disconnect:
            # Dropped, as SQLAlchemy drops a connection it sees fail so: the session's
            # rollback must not be sent on it, nor the pool hand it out again.
            connection.invalidate(exc)
        translated = _carbonlink_error(exc, disconnect)
        if translated is not None:
            raise translated from exc
        raise sa.exc.DBAPIError.instance(None, None, exc, driver_error) from exc


def driver_parameters(values: Mapping[str, Any], positions: tuple[str, ...] | None) -> Any:
    """Parameters as the compiled text takes them: in ``positions`` order, else by name."""
    return tuple(values[name] for name in positions) if positions else values


def _compile(
    statement: sa.ClauseElement, dialect: sa.Dialect
) -> tuple[SQLCompiler, tuple[str, ...] | None]:
    """A fixed statement compiled for the driver, and its parameters' order (None for
    named parameters)."""
    compiled = statement.compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler):
        raise DatabaseError(f"{statement!r} does not compile to SQL")
    return compiled, tuple(compiled.positiontup) if compiled.positiontup else None


# Per (statement, database kind): the SQL text, its parameters' order (None for named
# parameters), and the values the statement binds itself (a LIMIT, a fixed id).
_PLAIN_SQL: dict[tuple[int, str], tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}


def run_plain(
    session: Session, statement: sa.ClauseElement, params: Mapping[str, Any]
) -> Sequence[Any]:
    """Run a fixed statement's text straight on the driver, in the session's transaction.

    For a module-level statement run in every step (a ledger lookup, the log head): its
    text is compiled once per database kind, as SQLAlchemy's per-execution work (keying,
    parameter processing, result set-up) cost more than the index seek behind it.
    Parameters must need no bind processing (integers and text).

    Returns:
        The rows it returned, if any, as the driver gives them.
    """
    connection = session.connection()
    key = (id(statement), connection.dialect.name)
    plain = _PLAIN_SQL.get(key)
    if plain is None:
        compiled, positions = _compile(statement, connection.dialect)
        given = {name: None for name, bind in compiled.binds.items() if bind.required}
        fixed = {
            name: value
            for name, value in compiled.construct_params(given).items()
            if name not in given
        }
        plain = (str(compiled), positions, fixed)
        _PLAIN_SQL[key] = plain
    sql, positions, fixed = plain
    with driver_cursor(session) as cursor:
        cursor.execute(sql, driver_parameters({**fixed, **params}, positions))
        rows: Sequence[Any] = cursor.fetchall() if cursor.description is not None else ()
    return rows


# Per (select, database kind): its columns' names and result processors.
_RESULT_COLUMNS: dict[tuple[int, str], tuple[tuple[str, ...], tuple[_Processor, ...]]] = {}


def read_plain(
    session: Session, statement: sa.Select[Any], params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """:func:`run_plain` for a select: each row by column name, with its values as
    SQLAlchemy would return them (each column's result processor applied)."""
    return _processed(session, statement, run_plain(session, statement, params))


# Per (statement, database kind, number of values): the SQL text with one parameter per
# value of the list, and the parameters' order (None for named parameters).
_PLAIN_IN_SQL: dict[tuple[int, str, int], tuple[str, tuple[str, ...] | None]] = {}


# Values per statement of read_plain_in: a longer list is read in several.
_PLAIN_IN_CHUNK = 500


def read_plain_in(
    session: Session, statement: sa.Select[Any], name: str, values: Sequence[Any]
) -> list[dict[str, Any]]:
    """:func:`read_plain` for a select whose only parameter, ``name``, is an expanding
    one (``IN``): its text is compiled once per number of values, up to 500 values per
    statement.

    For the reads of a group's rows by key, run in every step of every group:
    SQLAlchemy expands the list anew at each execution, which cost more than the
    read. Values must need no bind processing (integers and text).
    """
    connection = session.connection()
    rows: list[Any] = []
    for first in range(0, len(values), _PLAIN_IN_CHUNK):
        chunk = values[first : first + _PLAIN_IN_CHUNK]
        key = (id(statement), connection.dialect.name, len(chunk))
        plain = _PLAIN_IN_SQL.get(key)
        if plain is None:
            compiled = statement.params({name: list(range(len(chunk)))}).compile(
                dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
            )
            plain = (str(compiled), tuple(compiled.positiontup) if compiled.positiontup else None)
            _PLAIN_IN_SQL[key] = plain
        sql, positions = plain
        # The expanded parameters are named name_1, name_2, ... in the list's order.
        expanded = {f"{name}_{i}": value for i, value in enumerate(chunk, start=1)}
        with driver_cursor(session) as cursor:
            cursor.execute(sql, driver_parameters(expanded, positions))
            rows.extend(cursor.fetchall())
    return _processed(session, statement, rows)


def _processed(
    session: Session, statement: sa.Select[Any], rows: Sequence[Any]
) -> list[dict[str, Any]]:
    """Driver rows of ``statement`` by column name, each column's result processor applied."""
    dialect = session.connection().dialect
    key = (id(statement), dialect.name)
    columns = _RESULT_COLUMNS.get(key)
    if columns is None:
        selected = statement.selected_columns
        columns = (
            tuple(selected.keys()),
            tuple(c.type.result_processor(dialect, None) for c in selected),
        )
        _RESULT_COLUMNS[key] = columns
    names, processors = columns
    return [
        {n: v if p is None else p(v) for n, p, v in zip(names, processors, row, strict=True)}
        for row in rows
    ]


# Per (statement, database kind): the SQL text, its parameters' order (None for named
# parameters) and each parameter's bind processor.
_PlainMany = tuple[str, tuple[str, ...] | None, dict[str, _Processor]]
_PLAIN_MANY_SQL: dict[tuple[int, str], _PlainMany] = {}


def run_plain_many(
    session: Session, statement: sa.ClauseElement, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Run a fixed statement once per row as one ``executemany`` on the driver.

    For a module-level statement whose every parameter is a typed ``bindparam`` (an
    INSERT or UPDATE of many rows): its text is compiled once per database kind and
    each value goes through its type's bind processor, as SQLAlchemy would, without
    SQLAlchemy's per-row work.
    """
    if not rows:
        return
    connection = session.connection()
    key = (id(statement), connection.dialect.name)
    plain = _PLAIN_MANY_SQL.get(key)
    if plain is None:
        compiled, positions = _compile(statement, connection.dialect)
        processors = {
            name: _bind_processor(bind.type, connection.dialect)
            for name, bind in compiled.binds.items()
        }
        plain = (str(compiled), positions, processors)
        _PLAIN_MANY_SQL[key] = plain
    sql, positions, processors = plain
    with driver_cursor(session) as cursor:
        cursor.executemany(sql, _driver_rows(rows, positions, processors))


def _driver_rows(
    rows: Sequence[Mapping[str, Any]],
    positions: tuple[str, ...] | None,
    processors: Mapping[str, _Processor],
) -> list[Any]:
    """Each row as compiled text takes it (see driver_parameters), its values converted
    by their columns' bind processors (a batch's hundreds of thousands of values: only
    those that have a processor are touched)."""
    bind = _Binder()
    converting = [(n, p) for n, p in processors.items() if p is not None]
    if positions:
        index = {n: i for i, n in enumerate(positions)}
        by_position = [(index[n], p) for n, p in converting]
        listed: list[list[Any]] = []
        for row in rows:
            values = [row[n] for n in positions]
            for i, processor in by_position:
                values[i] = bind(processor, values[i])
            listed.append(values)
        return listed
    named: list[dict[str, Any]] = []
    for row in rows:
        mapping = {n: row[n] for n in processors}
        for n, processor in converting:
            mapping[n] = bind(processor, mapping[n])
        named.append(mapping)
    return named


# Writes a module holds back until the deferred rows go out: those that deferred rows may
# refer to (a new transfer's row, before its steps), then those that only follow them
# (the log head's new size).  Each is called with the session whenever write_deferred runs.
_FIRST_WRITERS: list[Callable[[Session], None]] = []
_DEFERRED_WRITERS: list[Callable[[Session], None]] = []


def before_deferred_inserts(writer: Callable[[Session], None]) -> Callable[[Session], None]:
    """Have ``writer(session)`` called wherever deferred rows are written, before them.

    For rows a module holds in memory through a transaction that deferred rows refer to
    (see ``transfer_rows``).
    """
    _FIRST_WRITERS.append(writer)
    return writer


def on_write_deferred(writer: Callable[[Session], None]) -> Callable[[Session], None]:
    """Have ``writer(session)`` called wherever deferred rows are written.

    For a change held in memory through a transaction (see ``event_log``): it then reaches
    the database before every flush, query, savepoint and commit, as the rows do.
    """
    _DEFERRED_WRITERS.append(writer)
    return writer


def write_deferred(session: Session) -> None:
    """Run the first writers, insert the rows deferred so far (see :func:`defer_insert`),
    then run the other writers.

    Each table's rows go to the driver as one ``executemany`` of text compiled once:
    SQLAlchemy's per-row parameter handling cost more than the insert itself.  On
    PostgreSQL a block that writes many rows to a table copies them instead (see
    :func:`insert_rows`), and its statements are not pipelined: a COPY cannot run in a
    pipeline, and a few round trips are nothing beside thousands of rows.
    """
    pending: dict[sa.Table, list[dict[str, Any]]] = session.info.get(_DEFERRED_INSERTS, {})
    bulk = any(len(rows) >= COPY_MIN_ROWS for rows in pending.values())
    with contextlib.nullcontext() if bulk else _pipelined(session):
        for writer in _FIRST_WRITERS:
            writer(session)
        _insert_deferred(session)
        for writer in _DEFERRED_WRITERS:
            writer(session)


# session.info key: opens the pipeline of the write_deferred block running (see _pipelined).
_OPEN_PIPELINE = "carbonlink.open_pipeline"


@contextmanager
def _pipelined(session: Session) -> Iterator[None]:
    """On PostgreSQL, the block's statements go out together, in one round trip.

    Writes only: a statement whose rows are read inside the block waits for the ones
    before it.  A failing statement's error (a refused row, say) is raised at the
    latest where the block ends, as SQLAlchemy's or carbonlink's, as ``driver_cursor``
    raises it; the statements after it are not run.
    """
    connection = session.connection()
    driver = connection.connection.driver_connection
    if driver is None or not _can_pipeline(connection.dialect):
        yield
        return
    with ExitStack() as pipeline:

        def open_pipeline() -> None:
            pipeline.enter_context(driver_errors(connection))
            pipeline.enter_context(driver.pipeline())

        # Opened by the block's first statement (see driver_cursor), not here: closing a
        # pipeline costs a round trip, and most blocks (one runs before every query)
        # write nothing.
        session.info[_OPEN_PIPELINE] = open_pipeline
        try:
            yield
        finally:
            session.info.pop(_OPEN_PIPELINE, None)


def _can_pipeline(dialect: sa.Dialect) -> bool:
    # psycopg 3 over a libpq of version 14 or later: other PostgreSQL drivers (psycopg2,
    # should a deployment name one), and SQLite, run the block's statements one by one.
    if dialect.driver != "psycopg":
        return False
    supported: bool = dialect.loaded_dbapi.Pipeline.is_supported()
    return supported


def _insert_deferred(session: Session) -> None:
    pending: dict[sa.Table, list[dict[str, Any]]] | None = session.info.pop(_DEFERRED_INSERTS, None)
    if not pending:
        return
    for table, rows in pending.items():
        insert_rows(session, table, rows)


COPY_MIN_ROWS = 64
"""Rows of one table from which PostgreSQL inserts copy them (``COPY ... FROM STDIN``).

psycopg's ``executemany`` spent ~16-24 us of CPU per row, a COPY ~6-9 us (9,000 event
rows, session 8's machine); below a few dozen rows the round trips a COPY adds outside
a pipeline cost more than it saves."""


def insert_rows(session: Session, table: sa.FromClause, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (each keyed by the same column names) in the session's transaction.

    One ``executemany`` of text compiled once, with each column's bind processor; on
    PostgreSQL, from :data:`COPY_MIN_ROWS` rows and outside a pipeline, one COPY.
    Rows with other keys, or a table with defaults SQLAlchemy computes, go through
    SQLAlchemy.
    """
    if not isinstance(table, sa.Table):
        raise TypeError(f"rows are inserted into a table, not {table!r}")
    if not rows:
        return
    connection = session.connection()
    columns = tuple(rows[0])
    plain = _plain_insert(table, columns, connection.dialect)
    driver = connection.connection.driver_connection
    if plain is None or driver is None or any(tuple(r) != columns for r in rows):
        connection.execute(table.insert(), list(rows))
        return
    sql, positions, processors = plain
    if (
        len(rows) >= COPY_MIN_ROWS
        and connection.dialect.driver == "psycopg"
        and _OPEN_PIPELINE not in session.info
        and driver.pgconn.pipeline_status == 0  # PQ_PIPELINE_OFF: no pipeline is open
    ):
        prepare = connection.dialect.identifier_preparer
        copy = (
            f"COPY {prepare.format_table(table)} "
            f"({', '.join(prepare.quote(c) for c in columns)}) FROM STDIN"
        )
        with driver_cursor(session) as cursor, cursor.copy(copy) as copying:
            for values in _driver_rows(rows, columns, processors):
                copying.write_row(values)
        return
    with driver_cursor(session) as cursor:
        cursor.executemany(sql, _driver_rows(rows, positions, processors))


def _write_everything(session: Session) -> None:
    """Flush the session's objects, then the deferred rows, which may refer to them."""
    session.flush()  # a full flush writes the deferred rows after it (_write_after_flush)
    write_deferred(session)  # and a clean session, which did not flush, writes them here


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A savepoint; what it defers is written if it is released and dropped if rolled back."""
    # Rows deferred before the savepoint belong to the enclosing transaction: written
    # now, a rollback of the savepoint cannot take them along.
    _write_everything(session)
    with session.begin_nested():
        yield


@event.listens_for(Session, "before_flush")
def _note_full_flush(session: Session, _context: Any, instances: Any) -> None:
    # A full flush (an autoflush before a query, say) writes them, so what the query
    # reads is complete; a flush of chosen objects only (the ledger's claims) leaves them
    # to gather into one batch at commit.
    if instances is None:
        session.info[_FULL_FLUSH] = True


@event.listens_for(Session, "after_flush")
def _write_after_flush(session: Session, _context: Any) -> None:
    # After the flush's own objects, not before: a deferred row may refer to one (a
    # transfer's step to the transfer), while no object refers to a deferred row.
    if session.info.pop(_FULL_FLUSH, False):
        write_deferred(session)


@event.listens_for(Session, "do_orm_execute")
def _write_before_query(state: ORMExecuteState) -> None:
    # As an autoflush would: what a query reads includes the rows deferred before it
    # (unless autoflush is off, as in the ledger's overlap checks, which read no such row).
    if state.session.autoflush:
        # This event comes before the query's own autoflush, which is done here, so that
        # the rows follow the objects they may refer to.
        _write_everything(state.session)


@event.listens_for(Session, "before_commit")
def _write_before_commit(session: Session) -> None:
    # The commit would flush what is left anyway; flushed here, the deferred rows follow
    # the objects they may refer to.
    _write_everything(session)


@event.listens_for(Session, "after_soft_rollback")
def _drop_deferred(session: Session, _previous: Any) -> None:
    # Rows still deferred belong to what was just rolled back (a savepoint starts with
    # none, see savepoint()), and must never be written.
    session.info.pop(_DEFERRED_INSERTS, None)
