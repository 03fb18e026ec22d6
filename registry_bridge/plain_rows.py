"""Rows held as plain objects through a transaction, written with its deferred rows.

A step of a transfer reads a few rows, changes a few columns and adds a few rows; a
batch's step does so for thousands.  As ORM objects, their loading, attribute
instrumentation and unit-of-work flush cost more than the rest of the step.  Here a row
is read as plain columns into a :class:`PlainRow`, which notes its own changes, and the
transaction's changed and new rows are written wherever its deferred rows are (before
queries, savepoints and the commit; see ``db.write_deferred``) or when a caller asks
(:func:`write`): per table, changed rows as one UPDATE, then new rows as one INSERT (a
row that ends makes room for the rows that replace it), and all before the deferred
inserts, which may refer to them (a transfer's steps to the transfer).

A transaction holds each row once: a row read again is the one it holds, changes and all.
A savepoint that rolls back puts the rows it changed back as the database has them again,
and drops the rows it created.  Once the transaction ends, its rows are snapshots:
changing them writes nothing anywhere.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from registry_bridge.db import (
    before_deferred_inserts,
    insert_rows,
    read_plain,
    read_plain_in,
    run_plain_many,
)


class PlainRow:
    """A row of ``TABLE``: one attribute per entry of ``COLUMNS``, keyed by ``KEY``.

    Subclasses declare ``__slots__`` (the attribute names), ``TABLE``, ``COLUMNS``
    (attribute name to column name) and ``CHANGEABLE`` (what a transaction may change;
    the rest is fixed once the row exists).
    """

    __slots__ = ("_book",)

    TABLE: ClassVar[sa.Table]
    COLUMNS: ClassVar[Mapping[str, str]]
    CHANGEABLE: ClassVar[tuple[str, ...]]
    KEY: ClassVar[str] = "id"
    SELECT: ClassVar[sa.Select[Any]]
    """Every column, labelled with its attribute name: add a WHERE to read rows."""
    _UPDATE: ClassVar[sa.Update]
    # C getters of the changeable and of all attributes, each as a tuple: a batch's
    # write reads them for tens of thousands of rows.
    _changeable: ClassVar[Callable[[Any], tuple[Any, ...]]]
    _all: ClassVar[Callable[[Any], tuple[Any, ...]]]
    _column_names: ClassVar[tuple[str, ...]]
    _book: _Book | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table, columns = cls.TABLE, cls.COLUMNS
        if len(cls.CHANGEABLE) < 2 or len(columns) < 2:
            raise TypeError(f"{cls.__name__}: rows of one changeable column are not supported")
        cls._changeable = operator.attrgetter(*cls.CHANGEABLE)
        cls._all = operator.attrgetter(*columns)
        cls.SELECT = sa.select(*(table.c[c].label(a) for a, c in columns.items()))
        cls._column_names = tuple(columns.values())
        key_column = table.c[columns[cls.KEY]]
        cls._UPDATE = (
            table.update()
            .where(key_column == sa.bindparam("row_key", type_=key_column.type))
            .values(
                {
                    columns[a]: sa.bindparam(a, type_=table.c[columns[a]].type)
                    for a in cls.CHANGEABLE
                }
            )
        )

    def __init__(self, **values: Any) -> None:
        missing = [a for a in self.COLUMNS if a not in values]
        unknown = [a for a in values if a not in self.COLUMNS]
        if missing or unknown:
            raise TypeError(f"{type(self).__name__}: missing {missing}, unknown {unknown}")
        object.__setattr__(self, "_book", None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.CHANGEABLE:
            raise AttributeError(f"{self.TABLE.name}.{name} is fixed once the row exists")
        object.__setattr__(self, name, value)
        book = self._book
        if book is not None:
            book.changed[getattr(self, self.KEY)] = self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.KEY}={getattr(self, self.KEY)!r})"

    def changeable(self) -> tuple[Any, ...]:
        return type(self)._changeable(self)

    def restore(self, values: tuple[Any, ...]) -> None:
        for name, value in zip(self.CHANGEABLE, values, strict=True):
            object.__setattr__(self, name, value)

    def column_values(self) -> dict[str, Any]:
        """The row as its table's columns name them."""
        return dict(zip(self._column_names, type(self)._all(self), strict=True))


Row = TypeVar("Row", bound=PlainRow)


class _Book:
    """A transaction's rows of one table: every row it holds, and what it has not written."""

    def __init__(self) -> None:
        self.rows: dict[Any, PlainRow] = {}
        self.new: dict[Any, PlainRow] = {}
        self.changed: dict[Any, PlainRow] = {}
        self.written: dict[Any, tuple[Any, ...]] = {}
        """Each held row's changeable values as the database has them."""
        self.savepoints: list[dict[Any, tuple[Any, ...] | None]] = []
        """Per open savepoint, innermost last: the rows written in it, each with its
        values as written before it (None: inserted in it)."""

    def hold(self, key: Any, row: PlainRow, *, new: bool) -> None:
        self.rows[key] = row
        object.__setattr__(row, "_book", self)
        if new:
            self.new[key] = row
        else:
            self.written[key] = row.changeable()

    def drop(self, key: Any) -> None:
        self.written.pop(key, None)
        self.new.pop(key, None)
        self.changed.pop(key, None)
        object.__setattr__(self.rows.pop(key), "_book", None)

    def write(self, session: Session, kind: type[PlainRow]) -> None:
        if not (self.new or self.changed):
            return
        updates = []
        for key, row in self.changed.items():
            if key not in self.new:
                values = row.changeable()
                if values != self.written[key]:
                    updates.append(dict(zip(kind.CHANGEABLE, values, strict=True), row_key=key))
        new, changed = list(self.new.items()), list(self.changed.items())
        # Noted in the savepoint before the statements run: if one fails, the savepoint's
        # rollback undoes what the others did, and must find here what to put back.
        if self.savepoints:
            for key, _ in (*changed, *new):
                self.savepoints[-1].setdefault(key, self.written.get(key))
        # Taken off before writing: a write that fails leaves them to the rollback.
        self.new, self.changed = {}, {}
        run_plain_many(session, kind._UPDATE, updates)
        # Through insert_rows: a batch step's thousands of new rows are one COPY on
        # PostgreSQL, as its deferred rows are.
        insert_rows(session, kind.TABLE, [row.column_values() for _, row in new])
        for key, row in (*changed, *new):
            self.written[key] = row.changeable()

    def roll_back_savepoint(self) -> None:
        # Rows the savepoint inserted are gone, and those it wrote are as they were
        # before it; its unwritten changes and new rows were never in the database.
        for key, before in self.savepoints.pop().items():
            if key not in self.rows:
                continue  # dropped already (a row inserted in a savepoint inside this one)
            if before is None:
                self.drop(key)
            else:
                self.written[key] = before
                self.rows[key].restore(before)
        for key in list(self.new):
            self.drop(key)
        for key in self.changed:
            self.rows[key].restore(self.written[key])
        self.changed.clear()

    def let_go(self) -> None:
        for row in self.rows.values():
            object.__setattr__(row, "_book", None)


# session.info key: the transaction's books, by row class (in the order first used).
_BOOKS = "carbonlink.plain_rows"


def _books(session: Session) -> dict[type[PlainRow], _Book]:
    books: dict[type[PlainRow], _Book] | None = session.info.get(_BOOKS)
    if books is None:
        books = session.info[_BOOKS] = {}
    return books


def _book(session: Session, kind: type[PlainRow]) -> _Book:
    books = _books(session)
    book = books.get(kind)
    if book is None:
        book = books[kind] = _Book()
        # A book opened inside savepoints must know them, to undo what it writes in them.
        book.savepoints = [{} for _ in range(_open_savepoints(session))]
    return book


def _open_savepoints(session: Session) -> int:
    count = 0
    transaction = session.get_nested_transaction()
    while transaction is not None and transaction.nested:
        count += 1
        transaction = transaction.parent
    return count


def add(session: Session, row: PlainRow) -> None:
    """Insert ``row`` (as it is then) with the transaction's deferred rows."""
    _book(session, type(row)).hold(getattr(row, row.KEY), row, new=True)


def held(session: Session, kind: type[Row], key: Any) -> Row | None:
    """The row of ``kind`` with ``key`` if the transaction holds it."""
    row = _book(session, kind).rows.get(key)
    return row if row is None or isinstance(row, kind) else None


def is_new(session: Session, row: PlainRow) -> bool:
    """Whether ``row`` was added by the transaction and is not yet written."""
    return getattr(row, row.KEY) in _book(session, type(row)).new


def hold(
    session: Session, kind: type[Row], values: Iterable[Mapping[Any, Any]], *, fresh: bool = False
) -> list[Row]:
    """Rows read in the transaction (``values``: each by attribute name), held by it.

    A row the transaction holds already is answered as it holds it, changes and all;
    with ``fresh`` (the values were read under the rows' locks), one it holds unchanged
    takes the values read.
    """
    book = _book(session, kind)
    found: list[Row] = []
    for mapping in values:
        key = mapping[kind.KEY]
        row = book.rows.get(key)
        if row is None:
            row = kind(**mapping)
            book.hold(key, row, new=False)
        elif fresh and key not in book.changed and key not in book.new:
            for name in kind.COLUMNS:
                object.__setattr__(row, name, mapping[name])
            book.written[key] = row.changeable()
        if isinstance(row, kind):
            found.append(row)
    return found


def fetch(
    session: Session, one: sa.Select[Any], many: sa.Select[Any], keys: Sequence[Any]
) -> list[Mapping[Any, Any]]:
    """The rows of ``keys`` as plain values, each by attribute name (a select of
    ``SELECT``'s columns), read as plain text: one key by ``one`` (``db.read_plain``, its
    parameter ``key``); more by ``many`` (``db.read_plain_in``, its expanding parameter
    ``keys``).  Plain text does not flush: rows the transaction has not written are held,
    not read.
    """
    if len(keys) == 1:
        return list(read_plain(session, one, {"key": keys[0]}))
    return list(read_plain_in(session, many, "keys", keys))


def read(
    session: Session,
    kind: type[Row],
    keys: Iterable[Any],
    one: sa.Select[Any],
    many: sa.Select[Any],
    *,
    fresh: bool = False,
) -> dict[Any, Row]:
    """The rows of ``keys`` that exist, held by the transaction, by key.

    Those it holds already are taken as it holds them and the others read (see
    ``fetch``); with ``fresh`` (``one`` and ``many`` lock the rows), every one is read
    and held as ``hold`` says.
    """
    wanted = list(dict.fromkeys(keys))
    unread = wanted if fresh else [k for k in wanted if held(session, kind, k) is None]
    hold(session, kind, fetch(session, one, many, unread), fresh=fresh)
    rows = {k: held(session, kind, k) for k in wanted}
    return {k: row for k, row in rows.items() if row is not None}


def write(session: Session, kind: type[PlainRow]) -> None:
    """Write the transaction's changed and new rows of ``kind`` now."""
    books: dict[type[PlainRow], _Book] = session.info.get(_BOOKS, {})
    if kind in books:
        books[kind].write(session, kind)


@before_deferred_inserts
def _write_all(session: Session) -> None:
    books: dict[type[PlainRow], _Book] = session.info.get(_BOOKS, {})
    for kind, book in books.items():
        book.write(session, kind)


@event.listens_for(Session, "after_transaction_create")
def _savepoint_begins(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        for book in session.info.get(_BOOKS, {}).values():
            book.savepoints.append({})


@event.listens_for(Session, "after_commit")
def _savepoint_released(session: Session) -> None:
    # Fired for a savepoint's release as well as for the commit; at a release the session
    # is still in the savepoint.  Its writes now belong to the enclosing savepoint, if any.
    if not session.in_nested_transaction():
        return
    for book in session.info.get(_BOOKS, {}).values():
        if book.savepoints:
            released = book.savepoints.pop()
            if book.savepoints:
                for key, before in released.items():
                    book.savepoints[-1].setdefault(key, before)


@event.listens_for(Session, "after_soft_rollback")
def _savepoint_rolled_back(session: Session, previous: SessionTransaction) -> None:
    if not previous.nested:
        return  # the end of the whole transaction lets go of the books (_done)
    for book in session.info.get(_BOOKS, {}).values():
        if book.savepoints:
            book.roll_back_savepoint()


@event.listens_for(Session, "after_transaction_end")
def _done(session: Session, transaction: SessionTransaction) -> None:
    # Committed or rolled back, the rows outlive the transaction only as snapshots.
    # (A savepoint's end is not the transaction's.)
    if transaction.parent is None:
        for book in session.info.pop(_BOOKS, {}).values():
            book.let_go()
