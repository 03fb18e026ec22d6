"""The ledger's tables (SQLAlchemy 2.0 typed models); Alembic migrations create them.

Timestamps default on the server (``func.now()``) rather than in Python, so every writer
agrees on the clock of record.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC timestamp on every backend (SQLite hands back naive ones otherwise)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite a timestamp is text.  SQLAlchemy's own conversion parses it with a regular
    # expression and formats it field by field, which showed in every batch; these write
    # the same text (UTC, "YYYY-MM-DD HH:MM:SS.ffffff", so text order is time order) and
    # read it with the C parser.

    def bind_processor(self, dialect: sa.Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_text(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("timestamps must be timezone-aware")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return to_text

    def result_processor(self, dialect: sa.Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_text(value: str | None) -> datetime | None:
            if value is None:
                return None
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

        return from_text


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    metadata = metadata


class IdempotencyRecord(Base):
    """The first answer to each mutating request, keyed by its caller and request id."""

    __tablename__ = "idempotency_records"

    caller: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    """Whose request-id space the id is in (see ``idempotency.LOCAL_CALLER``)."""
    method: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    """Full gRPC method name: request ids are scoped per method."""
    request_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    """Client-chosen id of the request."""
    body_sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    """Hash of the canonical request body, to refuse a reused id with another body."""
    response: Mapped[bytes] = mapped_column(sa.LargeBinary)
    """The serialized first response, returned again for a repeat."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=sa.func.now())


class LedgerBlock(Base):
    """One holding of a run of units: a version of where a block sits and in what state.

    A row is *live* while it describes the present. Splitting a block retires the row
    (``live`` false) and inserts the pieces, so the history of a range stays readable and
    the live rows of one program never overlap (the database enforces it: an exclusion
    constraint on PostgreSQL, serialized writers on SQLite).
    """

    __tablename__ = "ledger_blocks"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    program: Mapped[str] = mapped_column(sa.String(16))
    """Program the row's serials belong to (a mirror's own serial space for mirrors)."""
    serial_series: Mapped[str] = mapped_column(sa.String(64))
    serial_start: Mapped[int] = mapped_column(sa.BigInteger)
    serial_end: Mapped[int] = mapped_column(sa.BigInteger)
    # "registry" is taken by SQLAlchemy's declarative base, hence the attribute name.
    registry_id: Mapped[str] = mapped_column("registry", sa.String(32))
    """Registry that holds the units now."""
    account: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16))
    """active, locked, bridged, retired, cancelled or surrendered."""
    live: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    is_mirror: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    origin_program: Mapped[str] = mapped_column(sa.String(16))
    """For a mirror: the origin block's program; for an origin row: its own program."""
    origin_series: Mapped[str] = mapped_column(sa.String(64))
    origin_start: Mapped[int] = mapped_column(sa.BigInteger)
    """Origin serial that this row's first serial stands for (a mirror maps 1:1 onto it)."""
    attributes: Mapped[str] = mapped_column(sa.Text)
    """The unit block's other attributes (project, vintage, ...) as canonical JSON."""
    lock_transfer_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=sa.func.now())

    # Nothing reads a new row's creation time back in its transaction: fetching it at the
    # insert (RETURNING) made the ORM insert rows one statement each, not in one batch.
    # (A plain dict, as DeclarativeBase declares it: ruff's ClassVar rule does not apply.)
    __mapper_args__ = {"eager_defaults": False}  # noqa: RUF012

    __table_args__ = (
        sa.Index("ix_ledger_blocks_live_range", "program", "serial_series", "serial_start", "live"),
        sa.Index("ix_ledger_blocks_origin", "origin_program", "origin_series", "origin_start"),
        sa.Index("ix_ledger_blocks_holder", "registry", "account", "live"),
        sa.Index(
            "ix_ledger_blocks_live_mirrors",
            "origin_program",
            "origin_series",
            "origin_start",
            sqlite_where=sa.text("is_mirror = 1 AND live = 1"),
            postgresql_where=sa.text("is_mirror AND live"),
        ),
        sa.CheckConstraint("serial_end >= serial_start", name="range_ordered"),
    )


class TransferRecord(Base):
    """A cross-registry transfer and where its state machine stands."""

    __tablename__ = "transfers"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(128))
    """Client request id: one transfer per id and caller (the database refuses a second)."""
    caller: Mapped[str] = mapped_column(sa.String(128))
    """Whose request-id space the id is in (see ``idempotency.LOCAL_CALLER``)."""
    body_sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    state: Mapped[str] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(16))
    """bridge_out (origin to mirror) or return (mirror back to the origin side)."""
    source_registry: Mapped[str] = mapped_column(sa.String(32))
    source_account: Mapped[str] = mapped_column(sa.String(128))
    destination_registry: Mapped[str] = mapped_column(sa.String(32))
    destination_account: Mapped[str] = mapped_column(sa.String(128))
    instruction: Mapped[str] = mapped_column(sa.Text)
    """The instruction as received, canonical JSON."""
    plan: Mapped[str] = mapped_column(sa.Text, default="")
    """Resolved blocks and registry legs, canonical JSON, fixed once CHECKED."""
    decision: Mapped[str] = mapped_column(sa.Text, default="")
    failure_reason: Mapped[str] = mapped_column(sa.Text, default="")
    lock_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    lease_owner: Mapped[str] = mapped_column(sa.String(64), default="")
    """Gateway process driving the transfer now, so two gateways never drive one transfer."""
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    # The request id leads so that a batch's lookup by request ids alone uses the index.
    # ListTransfers pages in (created_at, id) order, filtered by state or not: each page
    # seeks its position in one of the two ordered indexes instead of sorting the table.
    # A page for accounts seeks each account in the index of each side and merges them; a
    # page for a registry alone seeks it in the registry index of each side.
    __table_args__ = (
        sa.Index("ix_transfers_created", "created_at", "id"),
        sa.Index("ix_transfers_state_created", "state", "created_at", "id"),
        sa.Index(
            "ix_transfers_source_created", "source_registry", "source_account", "created_at", "id"
        ),
        sa.Index(
            "ix_transfers_destination_created",
            "destination_registry",
            "destination_account",
            "created_at",
            "id",
        ),
        sa.Index("ix_transfers_source_registry_created", "source_registry", "created_at", "id"),
        sa.Index(
            "ix_transfers_destination_registry_created", "destination_registry", "created_at", "id"
        ),
        sa.UniqueConstraint("request_id", "caller", name="uq_transfers_request_id_caller"),
    )


class TransferStepRecord(Base):
    """One state a transfer entered, in order."""

    __tablename__ = "transfer_steps"

    transfer_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("transfers.id", ondelete="RESTRICT"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class UnitUseRecord(Base):
    """A retirement or a surrender, and the registry legs that carry it out."""

    __tablename__ = "unit_uses"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(128))
    """Client request id: one use per id and caller (the database refuses a second)."""
    caller: Mapped[str] = mapped_column(sa.String(128))
    """Whose request-id space the id is in (see ``idempotency.LOCAL_CALLER``)."""
    body_sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    kind: Mapped[str] = mapped_column(sa.String(16))
    """retirement or surrender."""
    state: Mapped[str] = mapped_column(sa.String(16))
    """pending (legs under way), completed, rejected (a registry refused it before any
    leg was done), failed (refused after some were: see ``Bridge._finish_use``) or
    resolved (a failed one an operator settled by hand: see ``Bridge.resolve_use``)."""
    registry_id: Mapped[str] = mapped_column("registry", sa.String(32))
    account: Mapped[str] = mapped_column(sa.String(128))
    detail: Mapped[str] = mapped_column(sa.Text)
    """Beneficiary, claim, entity, year, jurisdiction, blocks and legs, canonical JSON."""
    decision: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    entity_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    """A surrender's covered entity, with the scheme and year it surrenders for (all three
    None for a retirement).  Also in ``detail``; here so that the checks of a surrender,
    which count the entity's earlier surrenders, seek them instead of reading every one."""
    jurisdiction: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    compliance_year: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("request_id", "caller", name="uq_unit_uses_request_id_caller"),
        # A surrender's offset limits count its entity's surrenders for the year, and the
        # migration checks the years it surrendered for in each scheme.
        sa.Index("ix_unit_uses_entity_year", "entity_id", "jurisdiction", "compliance_year"),
        # ListUses pages in (created_at, id) order, unfiltered, by holder or by state: each
        # page seeks its position in one of these instead of sorting the table. The state
        # one also serves recovery's look for pending uses every few seconds, and metrics'
        # at each scrape: without it, each look reads every retirement ever made.
        sa.Index("ix_unit_uses_created", "created_at", "id"),
        sa.Index("ix_unit_uses_holder_created", "registry", "account", "created_at", "id"),
        # A holder registry with no account: the holder index is not in page order for it.
        sa.Index("ix_unit_uses_registry_created", "registry", "created_at", "id"),
        sa.Index("ix_unit_uses_state_created", "state", "created_at", "id"),
    )


class LogHead(Base):
    """The provenance log's size: one row, locked by every append so indexes are dense."""

    __tablename__ = "log_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)


class LedgerEvent(Base):
    """One entry of the append-only provenance log: exactly one per ledger state change."""

    __tablename__ = "ledger_events"

    idx: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    """Position in the log, dense from 0."""
    kind: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    """Canonical JSON of the change: the exact bytes hashed into the log."""
    leaf_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    """RFC 9162 leaf hash: SHA-256(0x00 || payload)."""
    transfer_id: Mapped[str] = mapped_column(sa.String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (sa.Index("ix_ledger_events_transfer", "transfer_id"),)


class EventBlock(Base):
    """Which serial ranges an event concerns: the index TraceUnits looks units up in.

    Written with the event, in the same transaction: the row's own range and, for a
    mirror, the origin range it stands for, so a trace from either side finds it.
    """

    __tablename__ = "event_blocks"

    # No foreign key to ledger_events on purpose: the index is derived data, rebuilt from
    # the events' payloads if need be, and must not stand in the way of the invariant
    # checker's tests that corrupt the log itself.
    event_idx: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    """Index of the event in the log."""
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    """Position of the range among the event's ranges."""
    program: Mapped[str] = mapped_column(sa.String(16))
    serial_series: Mapped[str] = mapped_column(sa.String(64))
    serial_start: Mapped[int] = mapped_column(sa.BigInteger)
    serial_end: Mapped[int] = mapped_column(sa.BigInteger)
    serial_node: Mapped[int] = mapped_column(sa.BigInteger)
    """The node of the serials' tree the range is filed under (``serial_tree``)."""

    __table_args__ = (
        # In log order within a program and series, the ranges inside the index: a
        # trace's first page, a wide range's page and a reconciliation read the events
        # of a range from a position on (or back), testing the ranges as they read.
        sa.Index(
            "ix_event_blocks_log_order",
            "program",
            "serial_series",
            "event_idx",
            "serial_start",
            "serial_end",
        ),
        # In log order within each node: a narrow range's page seeks, node by node, its
        # own units' entries from its position, none of the program's other units'.
        sa.Index(
            "ix_event_blocks_node",
            "program",
            "serial_series",
            "serial_node",
            "event_idx",
            "serial_start",
            "serial_end",
        ),
    )


class MerkleHead(Base):
    """How many leaves the Merkle node cache covers: one row, locked by whoever extends it."""

    __tablename__ = "merkle_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)


class MerkleNode(Base):
    """A complete subtree's hash (level >= 1): never changes once the log covers it."""

    __tablename__ = "merkle_nodes"

    level: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    """Height above the leaves: the subtree spans 2**level leaves."""
    idx: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    """The subtree's position at its level: it covers leaves [idx * 2**level, ...)."""
    hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32))


class EntityYearRecord(Base):
    """A covered entity's compliance year in one jurisdiction: what it emitted and owes."""

    __tablename__ = "entity_years"

    entity_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    jurisdiction: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    """The scheme the entity complies under: shenzhen, guangdong or national."""
    compliance_year: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    verified_emissions: Mapped[int] = mapped_column(sa.BigInteger)
    """Verified emissions of the year, tCO2e."""
    allowances_due: Mapped[int] = mapped_column(sa.BigInteger)
    """Allowances the entity must surrender for the year."""
    covered_by_national_ets: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    """True when the entity is a key emitter of the national ETS (pilot carve-outs)."""


class CoveredEntityRecord(Base):
    """A covered entity of an ETS: who it is, its sector and the gases it is covered for."""

    __tablename__ = "covered_entities"

    entity_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(sa.String(256))
    sector: Mapped[str] = mapped_column(sa.String(64))
    """Sector as the rule packs name it: ``steel``, ``civil_aviation``, ``power``..."""
    gases: Mapped[str] = mapped_column(sa.Text)
    """Gases the entity is covered for, canonical JSON list (``["CO2"]``)."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class EntityYearWithdrawalRecord(Base):
    """A compliance year withdrawn from an entity's record, with the figures it had.

    A withdrawal deletes the year's ``entity_years`` row (the plan of a migration, the
    rules gate and the recording of a year all read that table as the years recorded), so
    this is where a withdrawn year is still seen: who withdrew it, when, and what it said.
    """

    __tablename__ = "entity_year_withdrawals"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    """In the order they were recorded: one request's withdrawals as it names them."""
    entity_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("covered_entities.entity_id", ondelete="RESTRICT")
    )
    jurisdiction: Mapped[str] = mapped_column(sa.String(32))
    compliance_year: Mapped[int] = mapped_column(sa.Integer)
    verified_emissions: Mapped[int] = mapped_column(sa.BigInteger)
    """As the year's record had it when withdrawn, tCO2e."""
    allowances_due: Mapped[int] = mapped_column(sa.BigInteger)
    """As the year's record had it when withdrawn."""
    covered_by_national_ets: Mapped[bool] = mapped_column(sa.Boolean)
    withdrawn_by: Mapped[str] = mapped_column(sa.String(128))
    """The caller who withdrew it (the token subject; empty for the local caller)."""
    request_id: Mapped[str] = mapped_column(sa.String(128))
    """The caller's request id of the UpsertCoveredEntity that withdrew it."""
    withdrawn_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (
        # An entity's withdrawals are read with its record, oldest first.
        sa.Index("ix_entity_year_withdrawals_entity_at", "entity_id", "withdrawn_at", "id"),
    )


class CoveredEntityAccountRecord(Base):
    """The account a covered entity holds (or is registered for) at one registry."""

    __tablename__ = "covered_entity_accounts"

    entity_id: Mapped[str] = mapped_column(
        sa.String(128),
        sa.ForeignKey("covered_entities.entity_id", ondelete="RESTRICT"),
        primary_key=True,
    )
    # "registry" is taken by SQLAlchemy's declarative base, hence the attribute name.
    registry_id: Mapped[str] = mapped_column("registry", sa.String(32), primary_key=True)
    account: Mapped[str] = mapped_column(sa.String(128))


class MigrationRecord(Base):
    """A covered entity's migration from a pilot ETS to the national ETS, and its plan.

    One per entity and pilot that is not abandoned (the database refuses a second): an
    entity leaves a scheme once, so no two migrations can cover the same years
    differently. An abandoned one was given up for good (AbandonMigration), so a new one
    may follow it; until then, the years from its first year on are each the scheme's
    that claimed it (see ``migration.DatabaseCutovers``).
    """

    __tablename__ = "migrations"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(128))
    """Client request id: one migration per id and caller (the database refuses a second)."""
    caller: Mapped[str] = mapped_column(sa.String(128))
    """Whose request-id space the id is in (see ``idempotency.LOCAL_CALLER``); the
    migration's own transfers are requested in it too."""
    body_sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    entity_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("covered_entities.entity_id", ondelete="RESTRICT")
    )
    from_jurisdiction: Mapped[str] = mapped_column(sa.String(32))
    to_jurisdiction: Mapped[str] = mapped_column(sa.String(32))
    first_year: Mapped[int] = mapped_column(sa.Integer)
    """First compliance year the destination covers; the pilot covers the years before."""
    state: Mapped[str] = mapped_column(sa.String(16))
    """running, completed, failed or abandoned (final)."""
    plan: Mapped[str] = mapped_column(sa.Text)
    """The plan as executed, canonical JSON, fixed when the migration starts."""
    failure_reason: Mapped[str] = mapped_column(sa.Text, default="")
    abandonment: Mapped[str] = mapped_column(sa.Text, default="")
    """Who abandoned the migration, when, why and under which request id and signature,
    canonical JSON; empty until it is abandoned."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (
        sa.Index(
            "uq_migrations_live_entity",
            "entity_id",
            "from_jurisdiction",
            unique=True,
            sqlite_where=sa.text("state <> 'abandoned'"),
            postgresql_where=sa.text("state <> 'abandoned'"),
        ),
        sa.UniqueConstraint("request_id", "caller", name="uq_migrations_request_id_caller"),
        sa.Index("ix_migrations_state", "state"),
        # Every migration of an entity, abandoned ones too, in the order recorded: the
        # rules gate's cutovers (the index above leaves abandoned ones out).
        sa.Index("ix_migrations_entity_created", "entity_id", "created_at", "id"),
    )


class MigrationStepRecord(Base):
    """One operation of a migration, in order; each is idempotent under its derived id."""

    __tablename__ = "migration_steps"

    migration_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("migrations.id", ondelete="RESTRICT"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(16))
    """cancel, transfer, keep or register."""
    state: Mapped[str] = mapped_column(sa.String(16))
    """pending, applied (ledger committed, registry call may be outstanding), done, failed,
    or not_taken (the migration was abandoned before the step ran)."""
    detail: Mapped[str] = mapped_column(sa.Text)
    """What the step does and what came of it (operation ids, transfer id), canonical JSON;
    with the attempts a failed step was retried in (``attempts``, see migration.py)."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class InstructionNonce(Base):
    """A nonce of a signed instruction, kept so the same signed instruction runs once.

    Security bookkeeping, not ledger state: rows are dropped once ``forget_after`` has
    passed, since a replay that late fails the timestamp window anyway.
    """

    __tablename__ = "instruction_nonces"

    key_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    """The signing key's id: nonces are unique per key."""
    nonce: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    forget_after: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    """When the row may go: past the timestamp window of the instruction's signing time."""


class ProjectListingRecord(Base):
    """The facts an issuer declared for a project when it was listed (ListProject).

    The rules read them for every transfer of the project's units: start and construction
    dates, GEC status and registrations under other programs are not in any serial.
    """

    __tablename__ = "project_listings"

    program: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    project_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    facts: Mapped[str] = mapped_column(sa.Text)
    """The declared facts, canonical JSON."""
    listed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    listed_by: Mapped[str] = mapped_column(sa.String(128))
    """The caller who listed the project (the token subject; the local caller before
    schema 0010): only they, or a regulator, may replace its facts."""


class ListingDecisionRecord(Base):
    """One answer to ListProject, listed or refused, as it was given (GetListing reads it).

    Kept apart from ``project_listings``, which holds only the latest facts of listed
    projects for the rules to read: this is the record of each decision, never changed.
    """

    __tablename__ = "listing_decisions"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    """The ``{listing_id}`` of its ``listings/{listing_id}`` name."""
    program: Mapped[str] = mapped_column(sa.String(16))
    project_id: Mapped[str] = mapped_column(sa.String(128))
    jurisdiction: Mapped[str] = mapped_column(sa.String(32))
    as_of: Mapped[date] = mapped_column(sa.Date())
    """The day whose rules decided."""
    facts: Mapped[str] = mapped_column(sa.Text)
    """The declared facts, canonical JSON (as ``project_listings.facts``)."""
    outcome: Mapped[str] = mapped_column(sa.Text)
    """Listed or not, per-use eligibility and conditions, refusals, pack versions: JSON."""
    requested_by: Mapped[str] = mapped_column(sa.String(128))
    """The caller who asked (the token subject): they, or a regulator, may read it."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    binding: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    """Taken for the gateway's today, so the project's standing in its jurisdiction while
    it is the latest binding one; false for a decision asked for another day."""

    __table_args__ = (sa.Index("ix_listing_decisions_project", "program", "project_id"),)


class ReconciliationRecord(Base):
    """A reconciliation of the ledger with registries: who ran it, when, and what it found.

    Kept for every run, asked for or scheduled, so an auditor can see when the ledger was
    last compared with a registry and what differed, whichever gateway ran it. The
    database lets one run at a time over all the gateways sharing it: each reads every
    holding of the registries it covers, and two side by side would only double that
    load and answer the same.
    """

    __tablename__ = "reconciliations"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(sa.String(16))
    """``request`` (the Reconcile RPC) or ``schedule`` (``reconcile_interval_seconds``)."""
    requested_by: Mapped[str] = mapped_column(sa.String(128))
    """The caller who asked for it (the token subject); empty for a scheduled run."""
    runner: Mapped[str] = mapped_column(sa.String(128))
    """The gateway process that ran it (host and process id)."""
    registries: Mapped[str] = mapped_column(sa.Text)
    """The registries it covers, canonical JSON (a list of ids)."""
    state: Mapped[str] = mapped_column(sa.String(16))
    """running, completed, abandoned (its caller went away, or its gateway stopped or
    died) or failed (the ledger could not be read)."""
    report: Mapped[str] = mapped_column(sa.Text, default="")
    """What a completed run found, canonical JSON; why a failed one failed."""
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    lease_expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    """While running: when the run counts as dead if its gateway has not renewed it."""
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    __table_args__ = (
        # At most one running row: the database, not a lock in one process, decides
        # which of two gateways starting a reconciliation at once runs it.
        sa.Index(
            "uq_reconciliations_running",
            "state",
            unique=True,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        ),
        sa.Index("ix_reconciliations_trigger_started_at", "trigger", "started_at"),
        # ListReconciliations of one trigger, newest first from a page's last run.
        sa.Index("ix_reconciliations_trigger_id", "trigger", "id"),
        # The newest completed run, looked up before every transfer's check.
        sa.Index("ix_reconciliations_state_id", "state", "id"),
    )
