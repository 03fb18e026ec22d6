"""The persistent store every registry emulator shares: blocks per account and an op log.

A registry's servicer translates its native vocabulary (Verra "immobilize", a DES
proposal, a pilot registry's 冻结) to the operations here, which enforce the rules any
registry keeps:

* a block is issued once: an issuance overlapping any block of the same program and
  serial series is refused;
* retired, cancelled, surrendered or exported units never move again, and locked or
  immobilized units move only through their lock;
* an operation on part of a held block splits the block, and the pieces sum to the whole;
* every mutating operation is recorded under its operation id with its outcome (the
  holding, or the rejection), so a repeat of the same operation returns the first outcome,
  and a reuse of the id for a different request is refused;
* units go only into an open account: issuance opens the account it issues into, the
  registry's back office opens others (:meth:`Store.open_account`), and a credit or a
  reactivation into an account not open is refused (``ACCOUNT_NOT_OPEN``), as a real
  registry refuses a transfer to a mistyped account;
* arriving units are credited only until the credit's deadline (the source lock's expiry),
  so a transfer rolled back for an expired lock can never be credited late; the op log
  answers a repeat before the deadline is looked at, so a credit applied in time stays
  applied.

A registry's own rules sit in its servicer, or run inside the store's transaction as a
``guard`` on the units an operation takes (the Article 6 registry refuses the first
transfer of an unauthorized ITMO that way).  Details recorded under :data:`RECORD_PREFIX`
are permanent records of the units (an Article 6 first transfer): written once, kept
through every later operation and split.

The store is one sqlite3 database (a file under the emulator's data directory, or
``:memory:`` for tests).  Every operation runs in one serialized write transaction, so
overlap checks and splits cannot race.  A batch (:meth:`Store.batch`) runs many operations
in one transaction, one commit, and each operation still succeeds or fails on its own: an
operation makes every check first and is refused before it writes anything.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from adapters.client_core import AttributeMemo, relabelled
from registry_bridge.block_json import (
    attributes_to_json,
    block_from_json,
    block_from_parts,
    block_id_from_dict,
    block_id_to_dict,
)
from registry_bridge.errors import ACCOUNT_NOT_OPEN
from registry_bridge.model import BlockId, Program, UnitBlock, has_control_characters

Clock = Callable[[], datetime]

RECORD_PREFIX = "record."
"""Details whose key starts with this are permanent records of the units: the first value
written stays, and later operations keep it (unlike other details, which describe only
the last operation)."""


PAGE_SIZE_CAP = 1000
"""Rows one listing page carries at most, whatever the caller asks: it bounds what one
call reads and holds the store's lock for, and (with the pages' byte cap,
``adapters.emulator_core.paging``) what one reply weighs."""


class ListingKey(NamedTuple):
    """Where a row sits in a listing, which pages resume after.

    Unique among the store's rows (the rows of one program, series and layer never share
    a serial) and kept by a row for as long as it exists: a row changes state in place,
    and a split or a merge keeps the first serial of its leftmost piece.  Units held
    again over serials they left (layer 0) come before their exported history.
    """

    program: str
    series: str
    serial_start: int
    layer: int


INVALID_ACCOUNT = "INVALID_ACCOUNT"
"""The rejection code of an account (or holder) name the registry cannot open."""

MAX_ACCOUNT_LENGTH = 128
"""An account name's characters at most (the gateway's bound on an id, too)."""

MAX_HOLDER_LENGTH = 256
"""An account holder's name's characters at most."""


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the default clock of a store)."""
    return datetime.now(UTC)


class UnitState(enum.StrEnum):
    """Where a block stands inside one emulated registry."""

    ACTIVE = "active"
    LOCKED = "locked"
    """Held for a pending transfer until ``lock_expires_at``."""
    IMMOBILIZED = "immobilized"
    """Bridged: held still while a mirror of it exists elsewhere."""
    RETIRED = "retired"
    CANCELLED = "cancelled"
    SURRENDERED = "surrendered"
    EXPORTED = "exported"
    """Left this registry (a venue position delivered out, a mirror returned)."""


_TERMINAL = frozenset(
    {UnitState.RETIRED, UnitState.CANCELLED, UnitState.SURRENDERED, UnitState.EXPORTED}
)
_ACTIVE = frozenset({UnitState.ACTIVE})
_LOCKED_OR_ACTIVE = frozenset({UnitState.LOCKED, UnitState.ACTIVE})
_ACTIVE_OR_IMMOBILIZED = frozenset({UnitState.ACTIVE, UnitState.IMMOBILIZED})


class CreditMode(enum.StrEnum):
    """What a registry does with units arriving from another registry."""

    MIRROR = "mirror"
    """Issue a mirror block with local serials that references the origin block."""
    HOLD = "hold"
    """Hold the origin block as it is (a venue holding units of other programs)."""
    RETURN_ONLY = "return_only"
    """Accept only its own immobilized units coming back (Verra, Gold Standard)."""


class Rejection(Exception):
    """The registry's final refusal of an operation, with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StoredHolding:
    """One row of the store: a block, where it is held, and in what state."""

    block: UnitBlock
    account: str
    state: UnitState
    lock_expires_at: datetime | None = None
    lock_transfer: str = ""
    mirror_of: BlockId | None = None
    mirror_registry: str = ""
    details: tuple[tuple[str, str], ...] = ()
    """What the registry recorded with the last operation (beneficiary, currency...)."""

    def detail(self, key: str, default: str = "") -> str:
        """One recorded detail, or ``default``."""
        return dict(self.details).get(key, default)

    @property
    def records(self) -> tuple[tuple[str, str], ...]:
        """The permanent records (details under :data:`RECORD_PREFIX`), in order."""
        return tuple(pair for pair in self.details if pair[0].startswith(RECORD_PREFIX))


@dataclass(frozen=True)
class Account:
    """An account open at the registry."""

    account: str
    holder: str
    """Who holds it, as the back office recorded it when opening it ('' when not said)."""
    opened_at: datetime
    newly_opened: bool = False
    """Whether the call that answered this opened it (``False``: it was open already)."""


Guard = Callable[[StoredHolding], None]
"""A registry's own check of the units an operation is about to take; raises Rejection."""


@dataclass(frozen=True)
class OperationRecord:
    """The op log's entry for one operation id."""

    operation_id: str
    method: str
    holding: StoredHolding | None
    rejection: Rejection | None
    recorded_at: datetime


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    program TEXT NOT NULL,
    series TEXT NOT NULL,
    serial_start INTEGER NOT NULL,
    serial_end INTEGER NOT NULL,
    account TEXT NOT NULL,
    state TEXT NOT NULL,
    lock_expires_at TEXT,
    lock_transfer TEXT NOT NULL DEFAULT '',
    mirror_program TEXT,
    mirror_series TEXT,
    mirror_start INTEGER,
    mirror_registry TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '[]',
    layer INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS blocks_range ON blocks (program, series, serial_start);
CREATE TABLE IF NOT EXISTS operations (
    operation_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Every operation must cost O(log n) in the number of rows (the bench leaves tens of
# thousands of one-unit blocks behind), so every statement on its path seeks an index and
# reads only the rows it needs; tests/unit/adapters/test_store_scaling.py holds them to
# it.  Listings (``holdings``, ``totals``) read what they list.
#
# The serial-range lookups rest on one invariant: the rows of one (program, series) and
# ``layer`` never share a serial.  Rows not exported are layer 0, and they never overlap:
# an issuance overlapping any row is refused, a held credit overlapping a live row is
# refused, mirrors take fresh serials from a counter, and splits and merges keep a
# block's serials.  Exported rows are the history of units that left, and units that
# come back (a venue position delivered out and returned) are held again over the same
# serials, so exported rows may overlap live rows and one another; each is placed in the
# lowest layer from 1 up where it overlaps nothing, and layers are never rewritten (an
# exported row is never changed or deleted).  Within one layer, of the rows starting
# before a range only the last can reach into it, so a lookup seeks that row and scans
# from its start: O(log n) plus the rows it returns, where ``serial_start <= end AND
# serial_end >= start`` alone scanned every earlier row.  An operation reads the exported
# layers only when it needs the history (``find``, an issuance's overlap check, a refusal
# of exported units), at O(log n) per layer; layers stack only as deep as units of one
# serial left and came back.
_INDEXES = """
CREATE INDEX IF NOT EXISTS blocks_layer ON blocks (program, series, layer, serial_start);
CREATE INDEX IF NOT EXISTS blocks_mirror
    ON blocks (mirror_program, mirror_series, layer, mirror_start)
    WHERE mirror_program IS NOT NULL;
CREATE INDEX IF NOT EXISTS blocks_lock_expiry ON blocks (lock_expires_at)
    WHERE state = 'locked';
"""

_LAYER_OVERLAP = (
    "program = :program AND series = :series AND layer = :layer "
    "AND serial_start >= coalesce(("
    "SELECT serial_start FROM blocks WHERE program = :program AND series = :series "
    "AND layer = :layer AND serial_start < :start ORDER BY serial_start DESC LIMIT 1"
    "), :start) "
    "AND serial_start <= :end AND serial_end >= :start"
)
"""Rows of one layer of a (program, series) sharing a serial with ``start..end``."""

_MIRROR_OVERLAP = (
    # Live mirrors of one origin series never overlap in their origin serials either: a
    # credit is refused (DUPLICATE_MIRROR) while a live mirror of any of its units
    # exists, and a split or merge hands each piece exactly its own origin serials.  So
    # the bound of ``_LAYER_OVERLAP`` holds here, on the origin serials.
    "mirror_program = :program AND mirror_series = :series AND layer = 0 "
    "AND mirror_start >= coalesce(("
    "SELECT mirror_start FROM blocks WHERE mirror_program = :program "
    "AND mirror_series = :series AND layer = 0 AND mirror_start < :start "
    "ORDER BY mirror_start DESC LIMIT 1"
    "), :start) "
    "AND mirror_start <= :end AND mirror_start + serial_end - serial_start >= :start"
)
"""Live mirror rows whose origin serials share a serial with ``start..end``."""

_EXPIRED_LOCKS = "state = 'locked' AND lock_expires_at <= ?"
"""Locks expired at a moment (an ISO 8601 UTC text: stored expiries are written the same
way, so text order is time order)."""

_INSERT_ROW = (
    "INSERT INTO blocks (program, series, serial_start, serial_end, account, state, "
    "lock_expires_at, lock_transfer, mirror_program, mirror_series, mirror_start, "
    "mirror_registry, attributes, details, layer) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)

_EARLIEST_LOCK_EXPIRY = "SELECT min(lock_expires_at) FROM blocks WHERE state = 'locked'"
"""The expiry of the lock that expires first (one seek of the expiry index)."""

_NO_LOCKS = "\uffff"
"""Stands for the earliest lock expiry when no lock is held: after every ISO 8601 text."""


_ACCOUNTS = """
CREATE TABLE accounts (
    account TEXT PRIMARY KEY,
    holder TEXT NOT NULL DEFAULT '',
    opened_at TEXT NOT NULL
) WITHOUT ROWID
"""


def _open_schema(db: sqlite3.Connection, now: datetime) -> None:
    """Create the tables and indexes, bringing a store file from before layers (or from
    before accounts) up to date."""
    db.executescript(_SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(blocks)")}
        if "layer" not in columns:
            db.execute("ALTER TABLE blocks ADD COLUMN layer INTEGER NOT NULL DEFAULT 0")
            _assign_layers(db)
        if not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'accounts'"
        ).fetchone():
            # A store from before accounts were kept opened every account a credit
            # named: those its blocks sit in (exported ones included: the account held
            # them) are its open accounts, so a store served again keeps working.
            db.execute(_ACCOUNTS)
            db.execute(
                "INSERT INTO accounts (account, holder, opened_at) "
                "SELECT DISTINCT account, '', ? FROM blocks",
                (_iso(now.astimezone(UTC)),),
            )
        # One statement at a time: executescript would commit the transaction first.
        for statement in _INDEXES.split(";"):
            if statement.strip():
                db.execute(statement)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _assign_layers(db: sqlite3.Connection) -> None:
    """Place the exported rows of a store file written before layers (once, on opening)."""
    # Greedy by start: each row goes to the lowest layer whose last row ends before it,
    # which keeps every layer free of overlaps and the layers numbered 1, 2, ... densely.
    ends: dict[tuple[str, str], list[int]] = {}
    placed: list[tuple[int, int]] = []
    for rowid, program, series, start, end in db.execute(
        "SELECT id, program, series, serial_start, serial_end FROM blocks "
        "WHERE state = 'exported' ORDER BY program, series, serial_start, id"
    ).fetchall():
        layer_ends = ends.setdefault((program, series), [])
        for index, last in enumerate(layer_ends):
            if last < start:
                layer_ends[index] = end
                placed.append((index + 1, rowid))
                break
        else:
            layer_ends.append(end)
            placed.append((len(layer_ends), rowid))
    db.executemany("UPDATE blocks SET layer = ? WHERE id = ?", placed)


@dataclass(frozen=True)
class _Row:
    rowid: int
    holding: StoredHolding
    mirror_start: int | None
    attributes: str
    """The row's attribute JSON as stored: every piece of the row keeps it as it is."""
    details: str
    """The row's details JSON as stored."""


class _Held(NamedTuple):
    """What an operation leaves: the holding, and its block's attribute JSON."""

    holding: StoredHolding
    attributes: str


_Check = Callable[[sqlite3.Connection, datetime], Callable[[], _Held]]
"""An operation's checks (raising :class:`Rejection`, writing nothing), returning its write."""

_Recorded = tuple[str, str, str]
"""An op-log entry: the method, the request's fingerprint and the outcome's JSON."""

_IDS_PER_QUERY = 500
"""Operation ids looked up per query (sqlite builds may allow as few as 999 parameters)."""

# Encoders built once (``json.dumps`` with keyword arguments builds one per call), each
# writing what the ``json.dumps`` call it stands for wrote: recorded fingerprints and
# outcomes are compared and read back, so their text must not change.
_SORTED_JSON = json.JSONEncoder(sort_keys=True)
_FINGERPRINT_JSON = json.JSONEncoder(sort_keys=True, default=str)


def _block_json(block_id: BlockId, attributes: str) -> str:
    """:func:`block_to_json` of a block whose :func:`attributes_to_json` is ``attributes``."""
    return _SORTED_JSON.encode({"id": block_id_to_dict(block_id), "attributes": attributes})


def _details_json(details: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([list(pair) for pair in details]) if details else "[]"


def _holding_to_json(holding: StoredHolding, attributes: str) -> dict[str, Any]:
    """The op log's form of ``holding`` (``attributes``: its block's attribute JSON)."""
    return {
        "block": _block_json(holding.block.id, attributes),
        "account": holding.account,
        "state": holding.state.value,
        "lock_expires_at": None
        if holding.lock_expires_at is None
        else _iso(holding.lock_expires_at),
        "lock_transfer": holding.lock_transfer,
        "mirror_of": None if holding.mirror_of is None else block_id_to_dict(holding.mirror_of),
        "mirror_registry": holding.mirror_registry,
        "details": [list(pair) for pair in holding.details],
    }


def _holding_from_json(data: dict[str, Any]) -> StoredHolding:
    return StoredHolding(
        block=block_from_json(data["block"]),
        account=data["account"],
        state=UnitState(data["state"]),
        lock_expires_at=None
        if data["lock_expires_at"] is None
        else datetime.fromisoformat(data["lock_expires_at"]),
        lock_transfer=data["lock_transfer"],
        mirror_of=None if data["mirror_of"] is None else block_id_from_dict(data["mirror_of"]),
        mirror_registry=data["mirror_registry"],
        details=tuple((str(k), str(v)) for k, v in data["details"]),
    )


class Store:
    """One emulated registry's units and operation log.

    Args:
        registry_id: The registry this store belongs to (used for mirror serial series).
        programs: The programs this registry issues; issuance of any other is refused.
        credit_mode: What the registry does with arriving foreign units.
        path: The sqlite3 file, or ``None`` for an in-memory store.
        clock: The registry's clock, for lock expiry (tests inject one).
        page_size_cap: Rows per listing page at most (see :data:`PAGE_SIZE_CAP`).

    Raises:
        ValueError: ``page_size_cap`` is below 1.
    """

    def __init__(
        self,
        registry_id: str,
        programs: frozenset[Program],
        credit_mode: CreditMode,
        path: Path | None = None,
        clock: Clock = utc_now,
        page_size_cap: int = PAGE_SIZE_CAP,
    ) -> None:
        if page_size_cap < 1:
            raise ValueError(f"page_size_cap must be >= 1, got {page_size_cap}")
        self.registry_id = registry_id
        self.programs = programs
        self.credit_mode = credit_mode
        self.page_size_cap = page_size_cap
        self.mirror_series = f"{registry_id}-mirror"
        self._clock = clock
        # One connection used under one lock: sqlite serializes writers anyway, and the
        # overlap checks must see the state their own transaction will change.
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            check_same_thread=False,
            isolation_level=None,
        )
        _open_schema(self._db, clock())
        # The earliest expiry of a lock held (ISO 8601 UTC text, as stored), or
        # _NO_LOCKS, or None when not known: an operation before it has no lock to
        # release and skips the expiry query.  Lowered by every lock written; forgotten
        # on every rollback (which may bring back a lock released in it).
        self._next_expiry: str | None = None
        # Set when an operation failed while writing: the transaction must not commit.
        self._failed = False
        # Inside batch(): the op-log entries of its operation ids, read up front and
        # kept up to date by the batch's operations; dropped on any rollback.
        self._recorded: dict[str, _Recorded | None] | None = None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- transactions and the operation log -------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:
                # Inside atomic() or batch(): the outer transaction commits everything at
                # once, and this one is a savepoint in it, so a block that fails undoes
                # only itself (atomic() inside a batch: one item of several operations).
                savepoint = f"nested_{self._depth}"
                self._db.execute(f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield self._db
                except BaseException:
                    self._rollback(savepoint)
                    raise
                finally:
                    self._depth -= 1
                self._db.execute(f"RELEASE {savepoint}")
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
                if self._failed:
                    raise RuntimeError(
                        "an operation failed while writing; the transaction is rolled back"
                    )
            except BaseException:
                self._rollback()
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")

    def _rollback(self, savepoint: str = "") -> None:
        """Undo the transaction, or back to ``savepoint`` (and release it)."""
        if savepoint:
            self._db.execute(f"ROLLBACK TO {savepoint}")
            self._db.execute(f"RELEASE {savepoint}")
        else:
            self._db.execute("ROLLBACK")
            self._failed = False
        self._next_expiry = None
        self._recorded = None

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Run several operations as one: if any raises, none of them happened.

        Used by imports, where a file with one bad row must import nothing.
        """
        with self._transaction():
            yield

    @contextmanager
    def batch(self, operation_ids: Collection[str] = ()) -> Iterator[None]:
        """Run several independent operations in one transaction: one commit for a batch.

        Unlike :meth:`atomic`, the operations stay independent: one that is refused is
        refused alone (its checks come before its writes) and the caller may go on with
        the next; what the others did (refusals recorded in the op log included) is
        committed together when the block ends.  An exception leaving the block rolls
        the whole batch back, as a crash before the commit would; so does an operation
        failing while it writes (the database failing), which cannot be undone alone.

        Args:
            operation_ids: The operation ids the batch will carry, if known: their op-log
                entries are read in one query up front instead of one per operation.
        """
        with self._transaction():
            outermost = self._recorded is None
            if outermost and operation_ids:
                self._recorded = self._read_recorded(operation_ids)
            try:
                yield
            finally:
                if outermost:
                    self._recorded = None

    def _read_recorded(self, operation_ids: Collection[str]) -> dict[str, _Recorded | None]:
        """The op-log entries of ``operation_ids`` (``None`` for an id never used)."""
        found: dict[str, _Recorded | None] = dict.fromkeys(operation_ids)
        ids = list(found)
        for i in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[i : i + _IDS_PER_QUERY]
            for operation_id, *entry in self._db.execute(
                "SELECT operation_id, method, fingerprint, outcome FROM operations "
                f"WHERE operation_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                found[operation_id] = (entry[0], entry[1], entry[2])
        return found

    def _run(
        self,
        operation_id: str,
        method: str,
        request: dict[str, Any],
        check: _Check,
    ) -> StoredHolding:
        """Apply an operation at most once per operation id, recording its outcome.

        ``check`` runs the operation's checks, refusing it with a :class:`Rejection`
        before it writes anything, and returns what writes it: a write refuses nothing.
        """
        if not operation_id:
            raise Rejection("OPERATION_ID_REQUIRED", "every operation needs an operation id")
        fingerprint = _FINGERPRINT_JSON.encode({"method": method, **request})
        with self._lock:
            outer = not self._depth
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                outcome = self._once(operation_id, method, fingerprint, check)
            except BaseException:
                if outer:
                    self._rollback()
                raise
            finally:
                self._depth -= 1
            if outer:
                self._db.execute("COMMIT")
        if isinstance(outcome, Rejection):
            raise outcome
        return outcome

    def _once(
        self, operation_id: str, method: str, fingerprint: str, check: _Check
    ) -> StoredHolding | Rejection:
        """The body of :meth:`_run`, inside its transaction: the outcome, new or recorded."""
        db = self._db
        recorded_here = self._recorded
        row: _Recorded | None
        if recorded_here is not None and operation_id in recorded_here:
            row = recorded_here[operation_id]
        else:
            row = db.execute(
                "SELECT method, fingerprint, outcome FROM operations WHERE operation_id = ?",
                (operation_id,),
            ).fetchone()
        if row is not None:
            if row[1] != fingerprint:
                raise Rejection(
                    "OPERATION_ID_REUSED",
                    f"operation {operation_id} was already used for a different {row[0]} request",
                )
            return self._replay(json.loads(row[2]))
        now = self._clock()
        # No savepoint per operation (one costs as much as a small write): a refusal
        # comes before the operation's first write, so it has nothing to undo, and an
        # operation that fails while writing (the database failing, or a bug: a write
        # refuses nothing) cannot be undone alone, so it fails the whole transaction.
        # Standing alone, _run rolls that back; inside atomic() or batch(), the
        # transaction is marked unfit to commit.
        try:
            # A refused operation still finds its expired locks released, as any later
            # operation would.
            self._expire_locks(db, now)
        except BaseException:
            self._failed = True
            raise
        try:
            write = check(db, now)
        except Rejection as rejection:
            # The rejection is final: record it, so a repeat answers the same.
            recorded: dict[str, Any] = {
                "rejection": {"code": rejection.code, "message": rejection.message}
            }
            outcome: StoredHolding | Rejection = Rejection(rejection.code, rejection.message)
        else:
            try:
                held = write()
            except BaseException:
                self._failed = True
                raise
            recorded = {"holding": _holding_to_json(held.holding, held.attributes)}
            outcome = held.holding
        text = json.dumps(recorded)
        try:
            db.execute(
                "INSERT INTO operations VALUES (?, ?, ?, ?, ?)",
                (operation_id, method, fingerprint, text, _iso(now)),
            )
        except BaseException:
            self._failed = True
            raise
        if recorded_here is not None:
            recorded_here[operation_id] = (method, fingerprint, text)
        return outcome

    @staticmethod
    def _replay(outcome: dict[str, Any]) -> StoredHolding:
        if "rejection" in outcome:
            raise Rejection(outcome["rejection"]["code"], outcome["rejection"]["message"])
        return _holding_from_json(outcome["holding"])

    def operation(self, operation_id: str) -> OperationRecord | None:
        """The recorded outcome of an operation, or ``None`` if it never ran."""
        with self._lock:
            row = self._db.execute(
                "SELECT method, outcome, recorded_at FROM operations WHERE operation_id = ?",
                (operation_id,),
            ).fetchone()
        if row is None:
            return None
        outcome = json.loads(row[1])
        rejection = None
        holding = None
        if "rejection" in outcome:
            rejection = Rejection(outcome["rejection"]["code"], outcome["rejection"]["message"])
        else:
            holding = _holding_from_json(outcome["holding"])
        return OperationRecord(
            operation_id, row[0], holding, rejection, datetime.fromisoformat(row[2])
        )

    # -- rows ---------------------------------------------------------------------------

    _COLUMNS = (
        "id, program, series, serial_start, serial_end, account, state, lock_expires_at, "
        "lock_transfer, mirror_program, mirror_series, mirror_start, mirror_registry, "
        "attributes, details"
    )

    @staticmethod
    def _row(values: Sequence[Any]) -> _Row:
        (rowid, program, series, start, end, account, state, expires, transfer) = values[:9]
        (m_program, m_series, m_start, m_registry, attributes, details) = values[9:]
        block_id = BlockId(Program(program), series, start, end)
        mirror_of = None
        if m_program is not None:
            mirror_of = BlockId(Program(m_program), m_series, m_start, m_start + end - start)
        return _Row(
            rowid,
            StoredHolding(
                block=_block_of(block_id, attributes),
                account=account,
                state=UnitState(state),
                lock_expires_at=None if expires is None else datetime.fromisoformat(expires),
                lock_transfer=transfer,
                mirror_of=mirror_of,
                mirror_registry=m_registry,
                details=()
                if details == "[]"
                else tuple((str(k), str(v)) for k, v in json.loads(details)),
            ),
            m_start,
            attributes,
            details,
        )

    def _select(
        self,
        db: sqlite3.Connection,
        where: str,
        args: Sequence[Any] | Mapping[str, Any],
        *,
        ordered: bool = True,
    ) -> list[_Row]:
        # ``id`` last: rows of one start (an exported row and the units held again over
        # it) come in the order they were written, as the index on the range gives them.
        order = " ORDER BY program, series, serial_start, id" if ordered else ""
        rows = db.execute(
            f"SELECT {self._COLUMNS} FROM blocks WHERE {where}{order}",
            args if isinstance(args, Mapping) else tuple(args),
        ).fetchall()
        return [self._row(r) for r in rows]

    def _layer(
        self, db: sqlite3.Connection, block_id: BlockId, layer: int, extra: str = "", **args: Any
    ) -> list[_Row]:
        """Rows of one layer overlapping ``block_id``, narrowed by ``extra`` conditions."""
        return self._select(
            db,
            _LAYER_OVERLAP + extra,
            {
                "program": block_id.program.value,
                "series": block_id.serial_series,
                "layer": layer,
                "start": block_id.serial_start,
                "end": block_id.serial_end,
                **args,
            },
        )

    def _live(self, db: sqlite3.Connection, block_id: BlockId) -> list[_Row]:
        """Rows overlapping ``block_id`` that are still here (not exported)."""
        return self._layer(db, block_id, 0)

    @staticmethod
    def _top_layer(db: sqlite3.Connection, block_id: BlockId) -> int:
        # Layers are numbered densely from 0, so the highest names them all.
        row = db.execute(
            "SELECT layer FROM blocks WHERE program = ? AND series = ? ORDER BY layer DESC LIMIT 1",
            (block_id.program.value, block_id.serial_series),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _exported(self, db: sqlite3.Connection, block_id: BlockId) -> list[_Row]:
        """Exported rows overlapping ``block_id``, in serial order."""
        rows = [
            row
            for layer in range(1, self._top_layer(db, block_id) + 1)
            for row in self._layer(db, block_id, layer)
        ]
        return sorted(rows, key=_store_order)

    def _overlapping(self, db: sqlite3.Connection, block_id: BlockId) -> list[_Row]:
        """Every row overlapping ``block_id``, exported ones included, in serial order."""
        return sorted(self._live(db, block_id) + self._exported(db, block_id), key=_store_order)

    def _free_layer(self, db: sqlite3.Connection, block_id: BlockId) -> int:
        """The lowest exported layer where ``block_id`` overlaps no row."""
        layer = 1
        while db.execute(
            f"SELECT id FROM blocks WHERE {_LAYER_OVERLAP} LIMIT 1",
            {
                "program": block_id.program.value,
                "series": block_id.serial_series,
                "layer": layer,
                "start": block_id.serial_start,
                "end": block_id.serial_end,
            },
        ).fetchone():
            layer += 1
        return layer

    def _insert(
        self,
        db: sqlite3.Connection,
        holding: StoredHolding,
        mirror_start: int | None,
        attributes: str,
        details: str | None = None,
    ) -> None:
        """Write ``holding`` as a new row.

        ``attributes`` is its block's :func:`attributes_to_json`, and ``details`` (when
        known) the JSON of its details: a piece of a row keeps the row's text as it is.
        """
        # Rows become exported only here (an exported row is never updated or deleted),
        # so this is the one place a row leaves layer 0.
        block_id = holding.block.id
        mirror = holding.mirror_of
        state = holding.state
        layer = self._free_layer(db, block_id) if state is UnitState.EXPORTED else 0
        expires = self._expiry_text(holding)
        db.execute(
            _INSERT_ROW,
            (
                block_id.program.value,
                block_id.serial_series,
                block_id.serial_start,
                block_id.serial_end,
                holding.account,
                state.value,
                expires,
                holding.lock_transfer,
                None if mirror is None else mirror.program.value,
                None if mirror is None else mirror.serial_series,
                mirror_start,
                holding.mirror_registry,
                attributes,
                _details_json(holding.details) if details is None else details,
                layer,
            ),
        )

    def _expire_locks(self, db: sqlite3.Connection, now: datetime) -> None:
        # Expiry is applied lazily, at the start of each operation, in the same
        # transaction: an expired lock holds nothing.
        moment = _iso(now.astimezone(UTC))
        if self._next_expiry is not None and moment < self._next_expiry:
            return  # no lock held expires before the earliest one known
        # Read unordered and sorted here: asked for the store's order, sqlite walks the
        # whole range index to skip a sort, where the expiry index finds just these rows.
        expired = sorted(
            self._select(db, _EXPIRED_LOCKS, (moment,), ordered=False), key=_store_order
        )
        for row in expired:
            db.execute(
                "UPDATE blocks SET state = 'active', lock_expires_at = NULL, lock_transfer = '' "
                "WHERE id = ?",
                (row.rowid,),
            )
            self._coalesce(db, _with(row.holding, UnitState.ACTIVE))
        (earliest,) = db.execute(_EARLIEST_LOCK_EXPIRY).fetchone()
        self._next_expiry = _NO_LOCKS if earliest is None else earliest

    def _replace(
        self,
        db: sqlite3.Connection,
        row: _Row,
        target: BlockId,
        change: Callable[[StoredHolding], StoredHolding],
    ) -> _Held:
        """Split ``row`` around ``target`` and apply ``change`` to the middle piece."""
        held = row.holding
        start, end = held.block.id.serial_start, held.block.id.serial_end
        before = start < target.serial_start
        after = target.serial_end < end
        # A piece left unchanged either side of the target is the row itself, cut down
        # in place (the row is live: exported rows are never taken).  Rows of one start
        # still read in the order they were written: a live row's id is that of a row
        # which has held its first serial ever since, so it is newer than any exported
        # row starting there, as a rewritten row would be.
        result = change(_piece(held, target.serial_start, target.serial_end))
        details = row.details if result.details is held.details else None
        if before:
            self._cut(db, row, start, target.serial_start - 1)
        elif after:
            self._cut(db, row, target.serial_end + 1, end)
        elif result.state is not UnitState.EXPORTED:
            # The whole row changes and stays live: it is the target, changed in place.
            self._change(db, row, result, details)
            if result.state is UnitState.ACTIVE:
                self._coalesce(db, result)
            return _Held(result, row.attributes)
        else:
            # Exported: written anew, in a layer of its own.
            db.execute("DELETE FROM blocks WHERE id = ?", (row.rowid,))
        self._insert(db, result, _mirror_start(row, target.serial_start), row.attributes, details)
        if before and after:
            self._insert_cut(db, row, target.serial_end + 1, end)
        if result.state is UnitState.ACTIVE:
            self._coalesce(db, result)
        return _Held(result, row.attributes)

    def _change(
        self, db: sqlite3.Connection, row: _Row, holding: StoredHolding, details: str | None
    ) -> None:
        """Write ``holding``, ``row``'s units in a live state, over ``row`` in place."""
        expires = self._expiry_text(holding)
        db.execute(
            "UPDATE blocks SET account = ?, state = ?, lock_expires_at = ?, lock_transfer = ?, "
            "details = ? WHERE id = ?",
            (
                holding.account,
                holding.state.value,
                expires,
                holding.lock_transfer,
                _details_json(holding.details) if details is None else details,
                row.rowid,
            ),
        )

    def _expiry_text(self, holding: StoredHolding) -> str | None:
        """The stored form of ``holding``'s lock expiry, noted if it is the earliest."""
        if holding.lock_expires_at is None:
            return None
        expires = _iso(holding.lock_expires_at)
        if holding.state is UnitState.LOCKED and (
            self._next_expiry is not None and expires < self._next_expiry
        ):
            self._next_expiry = expires
        return expires

    @staticmethod
    def _cut(db: sqlite3.Connection, row: _Row, start: int, end: int) -> None:
        """Cut ``row`` down to ``start..end`` in place."""
        db.execute(
            "UPDATE blocks SET serial_start = ?, serial_end = ?, mirror_start = ? WHERE id = ?",
            (start, end, _mirror_start(row, start), row.rowid),
        )

    @staticmethod
    def _insert_cut(db: sqlite3.Connection, row: _Row, start: int, end: int) -> None:
        """Write ``row`` cut down to ``start..end`` as a new live row, otherwise unchanged."""
        held = row.holding
        block_id = held.block.id
        mirror = held.mirror_of
        db.execute(
            _INSERT_ROW,
            (
                block_id.program.value,
                block_id.serial_series,
                start,
                end,
                held.account,
                held.state.value,
                None if held.lock_expires_at is None else _iso(held.lock_expires_at),
                held.lock_transfer,
                None if mirror is None else mirror.program.value,
                None if mirror is None else mirror.serial_series,
                _mirror_start(row, start),
                held.mirror_registry,
                row.attributes,
                row.details,
                0,
            ),
        )

    def _coalesce(self, db: sqlite3.Connection, holding: StoredHolding) -> None:
        """Merge active neighbours that are one block again (after an unlock or return)."""
        block_id = holding.block.id
        # The block and its neighbours either side: active rows are live (layer 0).
        rows = self._layer(
            db,
            dataclasses.replace(
                block_id,
                serial_start=max(block_id.serial_start - 1, 0),
                serial_end=block_id.serial_end + 1,
            ),
            0,
            " AND account = :account AND state = 'active'",
            account=holding.account,
        )
        merged: list[_Row] = []
        for row in rows:
            if merged and _joinable(merged[-1], row):
                last = merged.pop()
                db.execute("DELETE FROM blocks WHERE id IN (?, ?)", (last.rowid, row.rowid))
                whole = _piece(
                    last.holding,
                    last.holding.block.id.serial_start,
                    row.holding.block.id.serial_end,
                )
                self._insert(db, whole, last.mirror_start, last.attributes, last.details)
                rowid = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                merged.append(_Row(rowid, whole, last.mirror_start, last.attributes, last.details))
            else:
                merged.append(row)

    def _take(
        self,
        db: sqlite3.Connection,
        account: str,
        block_id: BlockId,
        allowed: frozenset[UnitState],
    ) -> _Row:
        """The one row in ``account`` containing ``block_id``, checked to be in ``allowed``."""
        # Units that left and came back (a venue position delivered out, then returned)
        # are held again: the record of their earlier export must not refuse them, so the
        # exported rows are read only when no units are held here.
        rows = self._live(db, block_id) or self._exported(db, block_id)
        if not rows:
            raise Rejection("UNITS_NOT_FOUND", f"no units {_describe(block_id)} at this registry")
        for row in rows:
            if row.holding.state not in allowed:
                state = row.holding.state
                if state in _TERMINAL:
                    raise Rejection(
                        f"UNITS_{state.value.upper()}",
                        f"units {_describe(row.holding.block.id)} are {state.value}; "
                        "they can never move again",
                    )
                raise Rejection(
                    f"UNITS_{state.value.upper()}",
                    f"units {_describe(row.holding.block.id)} are {state.value}",
                )
        for row in rows:
            if row.holding.account == account and row.holding.block.id.contains(block_id):
                return row
        if all(row.holding.account != account for row in rows):
            raise Rejection(
                "UNITS_NOT_HELD", f"account {account} does not hold units {_describe(block_id)}"
            )
        raise Rejection(
            "UNITS_NOT_ONE_BLOCK",
            f"units {_describe(block_id)} are not held as one block in account {account}",
        )

    # -- accounts -------------------------------------------------------------------------

    def open_account(self, account: str, holder: str = "") -> Account:
        """Open ``account`` (the registry's back office), idempotently.

        Opening an open account changes nothing and answers it as it was opened (its
        first holder kept): the back office may repeat a request whose answer it lost.

        Args:
            account: The account's name.
            holder: Who holds it, '' when not said.

        Returns:
            The open account; ``newly_opened`` says whether this call opened it.

        Raises:
            Rejection: ``INVALID_ACCOUNT``: ``account`` is empty, longer than
                :data:`MAX_ACCOUNT_LENGTH`, starts or ends with a space or holds a
                control character, or ``holder`` is too long or holds one; the message
                starts with the field's name.  Nothing was opened.
        """
        _check_name("account", account, MAX_ACCOUNT_LENGTH, required=True)
        _check_name("holder", holder, MAX_HOLDER_LENGTH, required=False)
        with self._transaction() as db:
            now = self._clock()
            newly = self._open(db, account, holder, now)
            row = db.execute(
                "SELECT holder, opened_at FROM accounts WHERE account = ?", (account,)
            ).fetchone()
        return Account(account, row[0], datetime.fromisoformat(row[1]), newly)

    def open_accounts(self, accounts: Iterable[str]) -> None:
        """Open every account of ``accounts`` (as :meth:`open_account`) in one transaction.

        Raises:
            Rejection: ``INVALID_ACCOUNT``, naming the field; nothing was opened.
        """
        with self._transaction():
            for account in accounts:
                self.open_account(account)

    def accounts(self) -> list[Account]:
        """Every open account, by name."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT account, holder, opened_at FROM accounts ORDER BY account"
            ).fetchall()
        return [Account(a, h, datetime.fromisoformat(t)) for a, h, t in rows]

    def is_open(self, account: str) -> bool:
        """Whether ``account`` is open."""
        with self._transaction() as db:
            return self._is_open(db, account)

    @staticmethod
    def _is_open(db: sqlite3.Connection, account: str) -> bool:
        return (
            db.execute("SELECT 1 FROM accounts WHERE account = ?", (account,)).fetchone()
            is not None
        )

    @staticmethod
    def _open(db: sqlite3.Connection, account: str, holder: str, now: datetime) -> bool:
        """Open ``account`` unless it is open; whether it was opened now."""
        cursor = db.execute(
            "INSERT OR IGNORE INTO accounts (account, holder, opened_at) VALUES (?, ?, ?)",
            (account, holder, _iso(now.astimezone(UTC))),
        )
        return cursor.rowcount == 1

    def _require_open(self, db: sqlite3.Connection, account: str) -> None:
        """Refuse units sent to ``account`` unless it is open (one seek of its key)."""
        if not self._is_open(db, account):
            raise Rejection(
                ACCOUNT_NOT_OPEN,
                f"account {account!r} is not open at registry {self.registry_id}",
            )

    # -- operations -----------------------------------------------------------------------

    def issue(self, operation_id: str, account: str, block: UnitBlock) -> StoredHolding:
        """Issue ``block`` into ``account``; an overlapping issuance is refused."""

        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            if block.program not in self.programs:
                raise Rejection(
                    "PROGRAM_NOT_ISSUED_HERE",
                    f"{self.registry_id} does not issue {block.program.value} units",
                )
            if block.id.serial_series == self.mirror_series:
                raise Rejection(
                    "RESERVED_SERIES", f"series {self.mirror_series} is reserved for mirrors"
                )
            clash = self._overlapping(db, block.id)
            if clash:
                raise Rejection(
                    "DUPLICATE_ISSUANCE",
                    f"units {_describe(block.id)} overlap issued units "
                    f"{_describe(clash[0].holding.block.id)}",
                )
            holding = StoredHolding(block=block, account=account, state=UnitState.ACTIVE)

            def write() -> _Held:
                # The registry issues to a proponent's account, which it opens.
                self._open(db, account, "", now)
                return self._insert_new(db, holding, None, attributes)

            return write

        attributes = _attributes_json(block)
        return self._run(
            operation_id,
            "issue",
            {"account": account, "block": _block_json(block.id, attributes)},
            check,
        )

    def lock(
        self,
        operation_id: str,
        account: str,
        block_id: BlockId,
        expires_at: datetime,
        transfer: str,
        guard: Guard | None = None,
    ) -> StoredHolding:
        """Lock active units until ``expires_at`` for ``transfer``.

        ``guard``, when given, sees the held units first and may refuse the lock (the
        registry's own rule); its refusal is recorded like any other.
        """

        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            if expires_at.tzinfo is None:
                raise Rejection("LOCK_EXPIRY_NOT_UTC", "a lock expiry needs a time zone")
            if expires_at <= now:
                raise Rejection(
                    "LOCK_EXPIRY_IN_PAST", f"lock expiry {expires_at} is not after {now}"
                )
            row = self._take(db, account, block_id, _ACTIVE)
            if guard is not None:
                guard(row.holding)
            return lambda: self._replace(
                db,
                row,
                block_id,
                lambda h: _with(
                    h,
                    UnitState.LOCKED,
                    lock_expires_at=expires_at.astimezone(UTC),
                    transfer=transfer,
                ),
            )

        return self._run(
            operation_id,
            "lock",
            {
                "account": account,
                "block": block_id_to_dict(block_id),
                "expires_at": _iso(expires_at),
                "transfer": transfer,
            },
            check,
        )

    def _locked_row(
        self, db: sqlite3.Connection, account: str, block_id: BlockId, transfer: str
    ) -> _Row:
        row = self._take(db, account, block_id, _LOCKED_OR_ACTIVE)
        if row.holding.state is UnitState.ACTIVE:
            raise Rejection("UNITS_NOT_LOCKED", f"units {_describe(block_id)} are not locked")
        if row.holding.lock_transfer != transfer:
            raise Rejection(
                "LOCK_TRANSFER_MISMATCH",
                f"units {_describe(block_id)} are locked for another transfer",
            )
        return row

    def unlock(
        self, operation_id: str, account: str, block_id: BlockId, transfer: str
    ) -> StoredHolding:
        """Release a lock held for ``transfer``; the units are active again."""

        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            row = self._locked_row(db, account, block_id, transfer)
            return lambda: self._replace(db, row, block_id, lambda h: _with(h, UnitState.ACTIVE))

        return self._run(
            operation_id,
            "unlock",
            {"account": account, "block": block_id_to_dict(block_id), "transfer": transfer},
            check,
        )

    def finalize(
        self,
        operation_id: str,
        account: str,
        block_id: BlockId,
        transfer: str,
        *,
        export: bool,
        details: tuple[tuple[str, str], ...] = (),
    ) -> StoredHolding:
        """Complete the source side of a locked transfer: immobilize, or export the units."""

        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            row = self._locked_row(db, account, block_id, transfer)
            state = UnitState.EXPORTED if export else UnitState.IMMOBILIZED
            return lambda: self._replace(
                db,
                row,
                block_id,
                lambda h: _with(h, state, transfer=transfer, details=details, lock_expires_at=None),
            )

        return self._run(
            operation_id,
            "finalize",
            {
                "account": account,
                "block": block_id_to_dict(block_id),
                "transfer": transfer,
                "export": export,
                "details": details,
            },
            check,
        )

    def credit(
        self,
        operation_id: str,
        account: str,
        origin: UnitBlock,
        origin_registry: str,
        transfer: str,
        details: tuple[tuple[str, str], ...] = (),
        deadline: datetime | None = None,
    ) -> StoredHolding:
        """Credit arriving units: re-activate returning units, or mirror or hold them.

        A credit after ``deadline`` is refused (``DEADLINE_PASSED``); a repeat of a credit
        applied in time is answered from the op log, whatever the time.  A credit into an
        account not open is refused (``ACCOUNT_NOT_OPEN``), and the refusal recorded like
        any other: a repeat after the account is opened is refused still, as the gateway
        has rolled its transfer back on the first answer.
        """

        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            _check_deadline(deadline, now)
            self._require_open(db, account)
            live = self._live(db, origin.id)
            if any(r.holding.state is UnitState.IMMOBILIZED for r in live):
                return self._reactivate(db, account, origin.id, details)
            if self.credit_mode is CreditMode.RETURN_ONLY:
                raise Rejection(
                    "FOREIGN_UNITS_NOT_ACCEPTED",
                    f"{self.registry_id} accepts only its own immobilized units back",
                )
            if self.credit_mode is CreditMode.HOLD:
                if live:
                    raise Rejection(
                        "DUPLICATE_CREDIT",
                        f"units {_describe(origin.id)} are already held here",
                    )
                holding = StoredHolding(
                    block=origin,
                    account=account,
                    state=UnitState.ACTIVE,
                    mirror_registry=origin_registry,
                    details=details,
                )
                return lambda: self._insert_new(db, holding, None, attributes)
            mirrors = self._select(
                db,
                _MIRROR_OVERLAP,
                {
                    "program": origin.id.program.value,
                    "series": origin.id.serial_series,
                    "start": origin.id.serial_start,
                    "end": origin.id.serial_end,
                },
            )
            if mirrors:
                raise Rejection(
                    "DUPLICATE_MIRROR",
                    f"units {_describe(origin.id)} already have a mirror here: "
                    f"{_describe(mirrors[0].holding.block.id)}",
                )
            return lambda: self._mirror(db, account, origin, origin_registry, details, attributes)

        attributes = _attributes_json(origin)
        return self._run(
            operation_id,
            "credit",
            {
                "account": account,
                "origin": _block_json(origin.id, attributes),
                "origin_registry": origin_registry,
                "transfer": transfer,
                "details": details,
                "deadline": None if deadline is None else deadline.isoformat(),
            },
            check,
        )

    def _mirror(
        self,
        db: sqlite3.Connection,
        account: str,
        origin: UnitBlock,
        origin_registry: str,
        details: tuple[tuple[str, str], ...],
        attributes: str,
    ) -> _Held:
        """Write a mirror of ``origin`` (attribute JSON ``attributes``) with local serials."""
        start = self._next_serial(db, origin.id.program, origin.quantity)
        mirror_block = relabelled(
            origin,
            BlockId(origin.id.program, self.mirror_series, start, start + origin.quantity - 1),
        )
        holding = StoredHolding(
            block=mirror_block,
            account=account,
            state=UnitState.ACTIVE,
            mirror_of=origin.id,
            mirror_registry=origin_registry,
            details=details,
        )
        return self._insert_new(db, holding, origin.id.serial_start, attributes)

    def _insert_new(
        self,
        db: sqlite3.Connection,
        holding: StoredHolding,
        mirror_start: int | None,
        attributes: str,
    ) -> _Held:
        self._insert(db, holding, mirror_start, attributes)
        return _Held(holding, attributes)

    def _reactivate(
        self,
        db: sqlite3.Connection,
        account: str,
        block_id: BlockId,
        details: tuple[tuple[str, str], ...],
    ) -> Callable[[], _Held]:
        # Units this registry immobilized are coming back (their mirror was returned).
        for row in self._live(db, block_id):
            if row.holding.state is UnitState.IMMOBILIZED and row.holding.block.id.contains(
                block_id
            ):
                return lambda: self._replace(
                    db,
                    row,
                    block_id,
                    lambda h: _with(h, UnitState.ACTIVE, account=account, details=details),
                )
        raise Rejection(
            "UNITS_NOT_IMMOBILIZED",
            f"units {_describe(block_id)} are not one immobilized block at this registry",
        )

    def reactivate(
        self,
        operation_id: str,
        account: str,
        block_id: BlockId,
        transfer: str,
        details: tuple[tuple[str, str], ...] = (),
        deadline: datetime | None = None,
    ) -> StoredHolding:
        """Release immobilized units back to ``account`` (their mirror was returned).

        Refused after ``deadline`` (``DEADLINE_PASSED``), or into an account not open
        (``ACCOUNT_NOT_OPEN``), as :meth:`credit` is.
        """

        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            _check_deadline(deadline, now)
            self._require_open(db, account)
            return self._reactivate(db, account, block_id, details)

        return self._run(
            operation_id,
            "reactivate",
            {
                "account": account,
                "block": block_id_to_dict(block_id),
                "transfer": transfer,
                "details": details,
                "deadline": None if deadline is None else deadline.isoformat(),
            },
            check,
        )

    def _next_serial(self, db: sqlite3.Connection, program: Program, quantity: int) -> int:
        name = f"mirror:{program.value}"
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        last = 0 if row is None else int(row[0])
        db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
            (name, last + quantity, last + quantity),
        )
        return last + 1

    def _terminate(
        self,
        operation_id: str,
        method: str,
        state: UnitState,
        account: str,
        block_id: BlockId,
        details: tuple[tuple[str, str], ...],
    ) -> StoredHolding:
        def check(db: sqlite3.Connection, now: datetime) -> Callable[[], _Held]:
            # Immobilized units may end too: retiring a mirror retires its origin (the
            # immobilization model registries adopted for bridged units).
            row = self._take(db, account, block_id, _ACTIVE_OR_IMMOBILIZED)
            return lambda: self._replace(
                db, row, block_id, lambda h: _with(h, state, details=details)
            )

        return self._run(
            operation_id,
            method,
            {"account": account, "block": block_id_to_dict(block_id), "details": details},
            check,
        )

    def retire(
        self,
        operation_id: str,
        account: str,
        block_id: BlockId,
        details: tuple[tuple[str, str], ...] = (),
    ) -> StoredHolding:
        """Retire active units (terminal), recording ``details`` (beneficiary, claim)."""
        return self._terminate(
            operation_id, "retire", UnitState.RETIRED, account, block_id, details
        )

    def surrender(
        self,
        operation_id: str,
        account: str,
        block_id: BlockId,
        details: tuple[tuple[str, str], ...] = (),
    ) -> StoredHolding:
        """Surrender active units for compliance (terminal)."""
        return self._terminate(
            operation_id, "surrender", UnitState.SURRENDERED, account, block_id, details
        )

    def cancel(
        self,
        operation_id: str,
        account: str,
        block_id: BlockId,
        details: tuple[tuple[str, str], ...] = (),
    ) -> StoredHolding:
        """Cancel active units (terminal)."""
        return self._terminate(
            operation_id, "cancel", UnitState.CANCELLED, account, block_id, details
        )

    # -- reads ----------------------------------------------------------------------------

    def _read(self, where: str, args: Sequence[Any]) -> list[StoredHolding]:
        with self._transaction() as db:
            self._expire_locks(db, self._clock())
            return [row.holding for row in self._select(db, where, args)]

    def find(self, block_id: BlockId) -> list[StoredHolding]:
        """Every row overlapping ``block_id``, exported ones included."""
        with self._transaction() as db:
            self._expire_locks(db, self._clock())
            return [row.holding for row in self._overlapping(db, block_id)]

    def holdings(self, account: str = "", *, include_exported: bool = False) -> list[StoredHolding]:
        """Rows of one account (or all), without exported ones unless asked."""
        where = "1 = 1" if include_exported else "state != 'exported'"
        if account:
            return self._read(f"{where} AND account = ?", (account,))
        return self._read(where, ())

    def listing_page(
        self, account: str, overlapping: BlockId | None, after: ListingKey | None, limit: int
    ) -> list[tuple[ListingKey, StoredHolding]]:
        """Up to ``limit`` rows of a holdings query, in key order, after the key ``after``.

        The query is every row overlapping ``overlapping`` (exported ones included),
        narrowed to ``account`` when set; or without ``overlapping``, the rows of
        ``account`` (of every account when empty), exported ones left out.  One call
        reads in one transaction; calls resuming after the last key of the one before
        list each row present throughout exactly once (see :class:`ListingKey`).

        Args:
            account: The account, or ''.
            overlapping: The block asked about, or ``None`` to list by account.
            after: The key the rows follow; ``None`` from the first.
            limit: Rows at most.

        Returns:
            Each row with its key.
        """
        with self._transaction() as db:
            self._expire_locks(db, self._clock())
            if overlapping is None:
                return self._listed_after(db, account, after, limit)
            keyed = [(_key(row, 0), row.holding) for row in self._live(db, overlapping)] + [
                (_key(row, layer), row.holding)
                for layer in range(1, self._top_layer(db, overlapping) + 1)
                for row in self._layer(db, overlapping, layer)
            ]
        found = [
            (key, held)
            for key, held in keyed
            if (not account or held.account == account) and (after is None or key > after)
        ]
        return sorted(found, key=lambda pair: pair[0])[:limit]

    def _listed_after(
        self, db: sqlite3.Connection, account: str, after: ListingKey | None, limit: int
    ) -> list[tuple[ListingKey, StoredHolding]]:
        """The rows of :meth:`listing_page` without a block asked about."""
        # Rows not exported are layer 0 and never share a serial of their series, so the
        # range index orders them and seeks the first row after ``after``: a page reads
        # its own rows (an account's listing also walks past other accounts' rows).
        where = ["state != 'exported'"]
        args: list[Any] = []
        if account:
            where.append("account = ?")
            args.append(account)
        if after is not None:
            where.append("(program, series, serial_start) > (?, ?, ?)")
            args.extend((after.program, after.series, after.serial_start))
        rows = db.execute(
            f"SELECT {self._COLUMNS} FROM blocks WHERE {' AND '.join(where)} "
            "ORDER BY program, series, serial_start LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [(_key(row, 0), row.holding) for row in map(self._row, rows)]

    def totals(self) -> list[tuple[Program, UnitState, int]]:
        """Units held per program and state (exported units are no longer held here)."""
        with self._transaction() as db:
            self._expire_locks(db, self._clock())
            rows = db.execute(
                "SELECT program, state, SUM(serial_end - serial_start + 1) FROM blocks "
                "WHERE state != 'exported' GROUP BY program, state ORDER BY program, state"
            ).fetchall()
        return [(Program(p), UnitState(s), int(q)) for p, s, q in rows]


def _check_name(field: str, value: str, limit: int, *, required: bool) -> None:
    """Refuse a name the registry cannot open an account under (``INVALID_ACCOUNT``)."""
    problem = ""
    if required and not value:
        problem = "is required"
    elif len(value) > limit:
        problem = f"is longer than {limit} characters"
    elif has_control_characters(value):
        problem = "contains control characters"
    elif value != value.strip():
        # " B" and "B" would be two accounts no one can tell apart.
        problem = "starts or ends with white space"
    if problem:
        raise Rejection(INVALID_ACCOUNT, f"{field}: {problem}")


def _check_deadline(deadline: datetime | None, now: datetime) -> None:
    if deadline is None:
        return
    if deadline.tzinfo is None:
        raise Rejection("DEADLINE_NOT_UTC", "a credit deadline needs a time zone")
    if now > deadline:
        raise Rejection(
            "DEADLINE_PASSED", f"the credit's deadline {deadline.isoformat()} passed at {now}"
        )


_last_iso: tuple[datetime, str] = (datetime.min, datetime.min.isoformat())


def _iso(moment: datetime) -> str:
    """``moment.isoformat()``, remembered for the last moment written.

    An operation writes the same moment several times (a lock's expiry in its request's
    fingerprint, its row and its outcome; the clock's reading for expiry and the op log).
    """
    global _last_iso
    last = _last_iso
    if last[0] is moment:
        return last[1]
    text = moment.isoformat()
    _last_iso = (moment, text)
    return text


def _describe(block_id: BlockId) -> str:
    series = f"{block_id.serial_series}:" if block_id.serial_series else ""
    return f"{block_id.program.value}/{series}{block_id.serial_start}-{block_id.serial_end}"


_attributes_json = AttributeMemo(attributes_to_json)
"""A block's :func:`attributes_to_json` (every block credited in a batch shares its
attributes with the others)."""

# Blocks parsed from their attribute JSON, by the JSON (every split of a block keeps its
# attributes, so a store's rows share a few), bounded.
_TEMPLATES: dict[str, UnitBlock] = {}
_MAX_TEMPLATES = 4096


def _block_of(block_id: BlockId, attributes: str) -> UnitBlock:
    """The block of a stored row: its id and its attribute JSON."""
    template = _TEMPLATES.get(attributes)
    if template is None:
        template = block_from_parts(block_id, attributes)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[attributes] = template
    return relabelled(template, block_id)


def _piece(held: StoredHolding, start: int, end: int) -> StoredHolding:
    """``held`` over ``start..end``: a piece of it, or (merging) it grown to the right."""
    block_id = BlockId(held.block.id.program, held.block.id.serial_series, start, end)
    mirror = held.mirror_of
    if mirror is not None:
        offset = start - held.block.id.serial_start
        mirror = BlockId(
            mirror.program,
            mirror.serial_series,
            mirror.serial_start + offset,
            mirror.serial_start + offset + block_id.quantity - 1,
        )
    return StoredHolding(
        block=relabelled(held.block, block_id),
        account=held.account,
        state=held.state,
        lock_expires_at=held.lock_expires_at,
        lock_transfer=held.lock_transfer,
        mirror_of=mirror,
        mirror_registry=held.mirror_registry,
        details=held.details,
    )


def _store_order(row: _Row) -> tuple[str, str, int, int]:
    """The order ``_select`` reads rows in: by program, series and start, then as written."""
    block_id = row.holding.block.id
    return (block_id.program.value, block_id.serial_series, block_id.serial_start, row.rowid)


def _key(row: _Row, layer: int) -> ListingKey:
    """The listing key of ``row``, read from ``layer``."""
    block_id = row.holding.block.id
    return ListingKey(block_id.program.value, block_id.serial_series, block_id.serial_start, layer)


def _mirror_start(row: _Row, start: int) -> int | None:
    if row.mirror_start is None:
        return None
    return row.mirror_start + start - row.holding.block.id.serial_start


def _joinable(left: _Row, right: _Row) -> bool:
    a, b = left.holding, right.holding
    if a.block.id.serial_end + 1 != b.block.id.serial_start:
        return False
    if left.attributes != right.attributes and attributes_to_json(a.block) != attributes_to_json(
        b.block
    ):
        # (Texts written the same way are the same text; the blocks are compared only
        # when they are not, as a file written by an older store may hold either.)
        return False
    if (a.mirror_of is None) != (b.mirror_of is None) or a.mirror_registry != b.mirror_registry:
        return False
    if a.records != b.records:
        # Units with different permanent records (one first-transferred, one not) must
        # not become one block, or one piece's record would be lost or spread.
        return False
    if a.mirror_of is not None and b.mirror_of is not None:
        return (
            a.mirror_of.program == b.mirror_of.program
            and a.mirror_of.serial_series == b.mirror_of.serial_series
            and a.mirror_of.serial_end + 1 == b.mirror_of.serial_start
        )
    return True


def _with(
    holding: StoredHolding,
    state: UnitState,
    *,
    lock_expires_at: datetime | None = None,
    transfer: str = "",
    account: str | None = None,
    details: tuple[tuple[str, str], ...] | None = None,
) -> StoredHolding:
    if details is not None:
        # Permanent records are written once and outlive the operation that wrote them.
        kept = holding.records
        recorded = {key for key, _ in kept}
        details = kept + tuple(pair for pair in details if pair[0] not in recorded)
    return StoredHolding(
        block=holding.block,
        account=holding.account if account is None else account,
        state=state,
        lock_expires_at=lock_expires_at,
        lock_transfer=transfer,
        mirror_of=holding.mirror_of,
        mirror_registry=holding.mirror_registry,
        details=holding.details if details is None else details,
    )
