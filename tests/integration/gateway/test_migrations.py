"""The same Alembic migrations run up and down on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from registry_bridge import db, serial_tree
from registry_bridge.bridge import Bridge
from registry_bridge.entities import DatabaseEntityRecords, claimed_years
from registry_bridge.idempotency import LOCAL_CALLER, answer_once
from registry_bridge.migration import DatabaseCutovers, surrendered_per_year
from registry_bridge.schema import (
    Base,
    CoveredEntityRecord,
    EntityYearRecord,
    EventBlock,
    IdempotencyRecord,
    MigrationRecord,
    MigrationStepRecord,
    TransferRecord,
    TransferStepRecord,
    UnitUseRecord,
    metadata,
)
from registry_bridge.transfers import AccountRef, TransferState, UseState
from tests.integration.bridge.conftest import PermitAllRules


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        head = db.current_revision(engine)
        assert head is not None
        tables = set(sa.inspect(engine).get_table_names())
        assert set(metadata.tables) <= tables
        db.downgrade(engine, "base")
        assert db.current_revision(engine) is None
        assert not set(metadata.tables) & set(sa.inspect(engine).get_table_names())
        db.upgrade(engine)
        assert db.current_revision(engine) == head
    finally:
        engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    """Autogenerate finds nothing to do: the migrations build exactly the models' schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


_BEFORE_CALLERS = "0008"
"""The last revision whose request ids were one space for every caller."""
_AT = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


def _insert(connection: sa.Connection, model: type[Base], **values: Any) -> None:
    """Insert ``values`` alone into ``model``'s table (its schema of then may lack columns
    the model has now)."""
    columns = [sa.column(c.name, c.type) for c in model.__table__.columns if c.name in values]
    connection.execute(sa.table(str(model.__tablename__), *columns).insert().values(**values))


def _rows_of_one_space(connection: sa.Connection) -> None:
    """One row of each kind that keeps a request id, and rows that refer to them, as a
    gateway before 0009 wrote them (no caller)."""
    body = hashlib.sha256(b"old body").digest()
    _insert(
        connection,
        IdempotencyRecord,
        method="ListProject",
        request_id="listing-1",
        response=b"old answer",
        body_sha256=body,
    )
    _insert(
        connection,
        TransferRecord,
        id="t-old",
        request_id="trade-1",
        state="COMPLETED",
        kind="bridge_out",
        source_registry="hkmo",
        source_account="hk-seller",
        destination_registry="shenzhen",
        destination_account="sz-buyer",
        instruction="{}",
        plan="",
        decision="",
        failure_reason="",
        lease_owner="",
        created_at=_AT,
        updated_at=_AT,
        body_sha256=body,
    )
    _insert(
        connection,
        TransferStepRecord,
        transfer_id="t-old",
        seq=0,
        state="PROPOSED",
        reason="",
        at=_AT,
    )
    _insert(
        connection,
        UnitUseRecord,
        id="u-old",
        request_id="retire-1",
        kind="retirement",
        state="completed",
        registry="hkmo",
        account="hk-seller",
        detail="{}",
        decision="",
        created_at=_AT,
        body_sha256=body,
    )
    _insert(
        connection,
        CoveredEntityRecord,
        entity_id="steel-a",
        display_name="Steel A",
        sector="steel",
        gases="[]",
        updated_at=_AT,
    )
    _insert(
        connection,
        MigrationRecord,
        id="m-old",
        request_id="migrate-steel-a",
        entity_id="steel-a",
        from_jurisdiction="shenzhen",
        to_jurisdiction="national",
        first_year=2024,
        state="completed",
        plan="{}",
        failure_reason="",
        created_at=_AT,
        updated_at=_AT,
        body_sha256=body,
    )
    _insert(
        connection,
        MigrationStepRecord,
        migration_id="m-old",
        seq=0,
        kind="register",
        state="done",
        detail="{}",
        updated_at=_AT,
    )


def _kept(connection: sa.Connection) -> dict[str, list[tuple[object, ...]]]:
    def rows(statement: sa.Select[Any]) -> list[tuple[object, ...]]:
        return [tuple(r) for r in connection.execute(statement)]

    return {
        "idempotency_records": rows(
            sa.select(
                IdempotencyRecord.method, IdempotencyRecord.request_id, IdempotencyRecord.response
            )
        ),
        "transfers": rows(
            sa.select(TransferRecord.id, TransferRecord.request_id, TransferRecord.created_at)
        ),
        "transfer_steps": rows(sa.select(TransferStepRecord.transfer_id, TransferStepRecord.seq)),
        "unit_uses": rows(sa.select(UnitUseRecord.id, UnitUseRecord.request_id)),
        "migrations": rows(sa.select(MigrationRecord.id, MigrationRecord.request_id)),
        "migration_steps": rows(
            sa.select(MigrationStepRecord.migration_id, MigrationStepRecord.seq)
        ),
    }


def test_an_upgrade_to_per_caller_request_ids_keeps_every_row_in_the_local_space(
    database_url: str,
) -> None:
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine, _BEFORE_CALLERS)
        with engine.begin() as connection:
            _rows_of_one_space(connection)
            before = _kept(connection)
        db.upgrade(engine)
        with engine.connect() as connection:
            assert _kept(connection) == before
            for record in (IdempotencyRecord, TransferRecord, UnitUseRecord, MigrationRecord):
                assert set(connection.execute(sa.select(record.caller)).scalars()) == {LOCAL_CALLER}
            if connection.dialect.name == "sqlite":
                # Enforcement, off while the tables were rebuilt, is back on.
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

        # The local caller (an insecure gateway's) still gets its old answer; any other
        # caller's request under the same id is its own.
        sessions = db.session_factory(engine)
        body = hashlib.sha256(b"old body").digest()

        def fresh() -> bytes:
            return b"new answer"

        def ask(caller: str) -> bytes:
            return answer_once(sessions, "ListProject", "listing-1", body, fresh, caller=caller)

        assert ask(LOCAL_CALLER) == b"old answer"
        assert ask("verra-desk") == b"new answer"
        # Every foreign key is enforced again.
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            _insert(
                connection,
                TransferStepRecord,
                transfer_id="no-such-transfer",
                seq=0,
                state="PROPOSED",
                reason="",
                at=_AT,
            )

        # One space cannot hold two callers' listing-1: the downgrade refuses, and leaves
        # the database as it was.
        with pytest.raises(RuntimeError, match="'listing-1' is used by more than one caller"):
            db.downgrade(engine, _BEFORE_CALLERS)
        assert db.current_revision(engine) != _BEFORE_CALLERS
        with engine.connect() as connection:
            assert len(_kept(connection)["idempotency_records"]) == 2
            assert _kept(connection)["transfers"] == before["transfers"]
    finally:
        engine.dispose()


_BEFORE_ABANDONMENT = "0017"
"""The last revision that allowed one migration per entity and pilot, whatever its state."""


def _migration(connection: sa.Connection, migration_id: str, state: str, **columns: str) -> None:
    """A migration of steel-a out of Shenzhen, with ``columns`` a revision added."""
    _insert(
        connection,
        MigrationRecord,
        id=migration_id,
        request_id=f"migrate-{migration_id}",
        caller=LOCAL_CALLER,
        entity_id="steel-a",
        from_jurisdiction="shenzhen",
        to_jurisdiction="national",
        first_year=2024,
        state=state,
        plan="{}",
        failure_reason="",
        created_at=_AT,
        updated_at=_AT,
        body_sha256=hashlib.sha256(migration_id.encode()).digest(),
        **columns,
    )


def test_an_abandoned_migration_leaves_room_for_one_more_of_its_entity(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine, _BEFORE_ABANDONMENT)
        with engine.begin() as connection:
            _insert(
                connection,
                CoveredEntityRecord,
                entity_id="steel-a",
                display_name="Steel A",
                sector="steel",
                gases="[]",
                updated_at=_AT,
            )
            _migration(connection, "m-failed", "failed")
        db.upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(sa.select(MigrationRecord.id, MigrationRecord.abandonment))
            assert [tuple(r) for r in kept] == [("m-failed", "")]
        # Not abandoned, it is the entity's one migration out of the pilot.
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            _migration(connection, "m-second", "running", abandonment="")
        with engine.begin() as connection:
            connection.execute(
                sa.update(MigrationRecord)
                .where(MigrationRecord.id == "m-failed")
                .values(state="abandoned")
            )
            _migration(connection, "m-second", "running", abandonment="")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            _migration(connection, "m-third", "failed", abandonment="")
        # The schema before cannot hold the abandoned one and the one after it.
        with pytest.raises(RuntimeError, match="migrations/m-failed is abandoned"):
            db.downgrade(engine, _BEFORE_ABANDONMENT)
        assert db.current_revision(engine) != _BEFORE_ABANDONMENT
    finally:
        engine.dispose()


def test_recovery_finds_pending_uses_and_running_migrations_by_an_index(tmp_path: Any) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path}/plan.db")
    try:
        db.upgrade(engine)
        with engine.connect() as connection:
            for table, state in (("unit_uses", "pending"), ("migrations", "running")):
                plan = " ".join(
                    str(row[-1])
                    for row in connection.execute(
                        sa.text(f"EXPLAIN QUERY PLAN SELECT id FROM {table} WHERE state = :s"),
                        {"s": state},
                    )
                )
                # ix_unit_uses_state_created covers the query: "USING COVERING INDEX".
                assert f" INDEX ix_{table}_state" in plan, plan
    finally:
        engine.dispose()


def _cutovers_statement(engine: sa.Engine) -> tuple[str, Any]:
    """The statement the rules gate's ``DatabaseCutovers`` runs for an entity, and its
    parameters."""
    statements: list[tuple[str, Any]] = []

    def grab(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM migrations" in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        DatabaseCutovers(db.session_factory(engine)).cutovers("steel-a")
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    assert len(statements) == 1, statements
    return statements[0]


def test_the_rules_gate_seeks_an_entitys_migrations_abandoned_ones_too(
    database_url: str,
) -> None:
    """Every surrender asks for the entity's migrations, the abandoned ones included (the
    newest abandoned one splits the entity's years until another is recorded): an index
    seek on the entity, read in the order asked, never a scan of every migration nor a
    sort. PostgreSQL's planner chooses by cost, and a table this small is cheaper to scan:
    with scans priced out, it still finds the index that seeks the entity in order."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        statement, parameters = _cutovers_statement(engine)
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                plan = [
                    str(row[-1])
                    for row in connection.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {statement}", parameters
                    )
                ]
                assert plan == [
                    "SEARCH migrations USING INDEX ix_migrations_entity_created (entity_id=?)"
                ], plan
            else:
                connection.exec_driver_sql("SET enable_seqscan = off")
                connection.exec_driver_sql("SET enable_bitmapscan = off")
                plan = [
                    str(row[0])
                    for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
                ]
                text = "\n".join(plan)
                assert plan[0].startswith(
                    "Index Scan using ix_migrations_entity_created on migrations"
                ), text
                assert "Sort" not in text and "Seq Scan" not in text, text
    finally:
        engine.dispose()


_RESUME_AT = (datetime(2026, 11, 1, 9, 30, tzinfo=UTC), "t-0042")


def _page_statement(
    engine: sa.Engine,
    after: tuple[datetime, str] | None,
    filters: dict[str, Any],
    table: str = "transfers",
) -> tuple[str, Any]:
    """The statement ``Bridge.list_transfers`` (or ``list_uses``, for ``unit_uses``)
    runs to find one page, and its parameters."""
    bridge = Bridge(db.session_factory(engine), {}, PermitAllRules(), clock=lambda: _AT)
    statements: list[tuple[str, Any]] = []

    def grab(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if f"FROM {table}" in statement and "ORDER BY" in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        if table == "transfers":
            bridge.list_transfers(after, 50, **filters)
        else:
            bridge.list_uses(after, 50, **filters)
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    assert len(statements) == 1, statements
    return statements[0]


def _page_plan(
    engine: sa.Engine,
    after: tuple[datetime, str] | None,
    filters: dict[str, Any],
    table: str = "transfers",
) -> list[str]:
    """SQLite's plan for the statement ``Bridge.list_transfers`` (or ``list_uses``, for
    ``unit_uses``) runs for one page."""
    statement, parameters = _page_statement(engine, after, filters, table)
    with engine.connect() as connection:
        return [
            str(row[-1])
            for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        ]


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_transfers_created"),
        ({"state": TransferState.PROPOSED}, "ix_transfers_state_created"),
    ],
    # A registry's page reads each side's registry index: test_request_plans holds it.
    ids=["all", "state"],
)
def test_a_transfers_page_reads_an_index_from_its_position_instead_of_sorting(
    tmp_path: Any, filters: dict[str, Any], index: str
) -> None:
    """ListTransfers' page reads an index in (created_at, id) order, from the position of
    the previous page's last transfer, and stops after the page: neither a scan from the
    start nor a sort of every matching transfer, whose cost would grow with the history."""
    engine = db.create_engine(f"sqlite:///{tmp_path}/plan.db")
    try:
        db.upgrade(engine)
        for after in (None, _RESUME_AT):
            plan = _page_plan(engine, after, filters)
            assert not any("TEMP B-TREE" in step for step in plan), plan
            (read,) = [
                step
                for step in plan
                if f"{step} ".startswith(("SCAN transfers ", "SEARCH transfers "))
            ]
            assert f" USING INDEX {index} " in f"{read} ", plan
            if after is not None:
                # The position is a bound of the index search, not a filter of a scan.
                assert read.startswith("SEARCH") and "(created_at,id)>(?,?)" in read, plan
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_unit_uses_created"),
        ({"state": UseState.PENDING}, "ix_unit_uses_state_created"),
        ({"holder": AccountRef("hkmo", "hk-seller")}, "ix_unit_uses_holder_created"),
        (
            {"holder": AccountRef("hkmo", "hk-seller"), "kind": "retirement"},
            "ix_unit_uses_holder_created",
        ),
        ({"kind": "surrender"}, "ix_unit_uses_created"),
    ],
    ids=["all", "state", "holder", "holder-and-kind", "kind"],
)
def test_a_uses_page_reads_an_index_from_its_position_instead_of_sorting(
    tmp_path: Any, filters: dict[str, Any], index: str
) -> None:
    """ListUses' page, as ListTransfers' does, reads an index in (created_at, id) order
    from the previous page's last use, and stops after the page."""
    engine = db.create_engine(f"sqlite:///{tmp_path}/plan.db")
    try:
        db.upgrade(engine)
        for after in (None, _RESUME_AT):
            plan = _page_plan(engine, after, filters, table="unit_uses")
            assert not any("TEMP B-TREE" in step for step in plan), plan
            (read,) = [
                step
                for step in plan
                if f"{step} ".startswith(("SCAN unit_uses ", "SEARCH unit_uses "))
            ]
            assert f" USING INDEX {index} " in f"{read} ", plan
            if after is not None:
                assert read.startswith("SEARCH") and "(created_at,id)>(?,?)" in read, plan
    finally:
        engine.dispose()


_TWO_ACCOUNTS = frozenset({"hkmo:hk-seller", "shenzhen:sz-buyer"})
_ACCOUNT_INDEXES = ("ix_transfers_source_created", "ix_transfers_destination_created")


@pytest.mark.parametrize(
    "filters",
    [
        {"accounts": _TWO_ACCOUNTS},
        {"accounts": _TWO_ACCOUNTS, "state": TransferState.PROPOSED},
        {"accounts": _TWO_ACCOUNTS, "registry": "hkmo"},
    ],
    ids=["accounts", "accounts-and-state", "accounts-and-registry"],
)
def test_a_transfers_page_for_accounts_seeks_each_account_on_each_side(
    tmp_path: Any, filters: dict[str, Any]
) -> None:
    """A page of the transfers of some accounts reads, for each account, its transfers
    as source and as destination in (created_at, id) order from the previous page's
    last one, a page at most of each: never a scan of every transfer filtered by an OR,
    nor a sort of all the account's transfers."""
    engine = db.create_engine(f"sqlite:///{tmp_path}/plan.db")
    try:
        db.upgrade(engine)
        for after in (None, _RESUME_AT):
            statement, parameters = _page_statement(engine, after, filters)
            with engine.connect() as connection:
                plan = [
                    (int(row[0]), int(row[1]), str(row[-1]))
                    for row in connection.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {statement}", parameters
                    )
                ]
            reads = [
                p for p in plan if f"{p[2]} ".startswith(("SCAN transfers ", "SEARCH transfers "))
            ]
            # One read per account and side, and each a search of its side's index.
            assert len(reads) == 2 * len(filters["accounts"]), plan
            sides = []
            for node, parent, detail in reads:
                assert detail.startswith("SEARCH transfers USING "), plan
                (index,) = [i for i in _ACCOUNT_INDEXES if f" INDEX {i} (" in detail]
                side = index.split("_")[2]
                sides.append(side)
                assert f"({side}_registry=? AND {side}_account=?" in detail, plan
                if after is not None:
                    assert "(created_at,id)>(?,?)" in detail, plan
                # The read gives its rows in page order: nothing beside it sorts them.
                assert not any(
                    "TEMP B-TREE" in d for _, p, d in plan if p == parent and _ != node
                ), plan
            assert sorted(sides) == sorted(["source", "destination"] * len(filters["accounts"]))
    finally:
        engine.dispose()


def test_postgres_pages_transfers_of_accounts_by_one_limited_index_read_per_side(
    postgres_url: str,
) -> None:
    """PostgreSQL's plan for a page of two accounts' transfers, over a history large
    enough for its planner to choose by cost: per account and side, an index scan from
    the previous page's position under a limit, no sequential scan and no sort of an
    account's transfers."""
    from tests.unit.registry_bridge.test_transfer_account_pages import Row, transfer_rows

    engine = db.create_engine(postgres_url)
    try:
        db.upgrade(engine)
        # Many accounts, each with a few hundred transfers per side: a page of one
        # account is a small part of the history, and of that account's transfers.
        accounts = [f"{r}:acct-{i:02d}" for r in ("hkmo", "shenzhen") for i in range(20)]
        rows = [
            Row(
                f"t-{i:05d}",
                _AT + timedelta(seconds=i),
                accounts[i % 40],
                accounts[(i // 40 + i) % 40],
                TransferState.COMPLETED,
            )
            for i in range(12_000)
        ]
        with engine.begin() as connection:
            connection.execute(sa.insert(TransferRecord), transfer_rows(rows))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE transfers")
        wanted = frozenset({accounts[1], accounts[4]})
        for after in (None, (_AT + timedelta(seconds=6000), "t-06000")):
            statement, parameters = _page_statement(engine, after, {"accounts": wanted})
            with engine.connect() as connection:
                plan = [
                    str(row[0])
                    for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
                ]
            text = "\n".join(plan)
            assert "Seq Scan" not in text, text
            scans = [i for i, line in enumerate(plan) if " on transfers " in line]
            assert len(scans) == 2 * len(wanted), text
            used = sorted(
                next(index for index in _ACCOUNT_INDEXES if f"using {index} on" in plan[i])
                for i in scans
            )
            assert used == sorted(_ACCOUNT_INDEXES * len(wanted)), text
            for i in scans:
                # Straight under its limit: read in page order, not sorted after.
                assert plan[i - 1].strip().startswith("->  Limit"), text
                if after is not None:
                    assert "ROW(created_at, id) > ROW(" in plan[i + 1], text
    finally:
        engine.dispose()


_BEFORE_SURRENDER_KEYS = "0020"
"""The last revision whose ``unit_uses`` kept a surrender's entity, scheme and year only
in ``detail``."""


def _use_row(connection: sa.Connection, use_id: str, kind: str, request: dict[str, Any]) -> None:
    """A use as a gateway before 0021 recorded one."""
    _insert(
        connection,
        UnitUseRecord,
        id=use_id,
        request_id=f"use-{use_id}",
        caller=LOCAL_CALLER,
        body_sha256=hashlib.sha256(use_id.encode()).digest(),
        kind=kind,
        state="completed",
        registry="shenzhen",
        account="sz-steel-a",
        detail=json.dumps({"request": request, "legs": [], "surrendered": []}),
        decision="",
        created_at=_AT,
    )


def test_an_upgrade_gives_each_recorded_surrender_its_entity_scheme_and_year(
    database_url: str,
) -> None:
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine, _BEFORE_SURRENDER_KEYS)
        with engine.begin() as connection:
            for n in range(3):
                _use_row(
                    connection,
                    f"s-{n}",
                    "surrender",
                    {
                        "entity_id": f"steel-{n}",
                        "jurisdiction": "shenzhen",
                        "compliance_year": 2023,
                    },
                )
            _use_row(
                connection,
                "r-0",
                "retirement",
                {"entity_id": "", "jurisdiction": "", "compliance_year": 0},
            )
        db.upgrade(engine)
        with engine.connect() as connection:
            keys = connection.execute(
                sa.select(
                    UnitUseRecord.id,
                    UnitUseRecord.entity_id,
                    UnitUseRecord.jurisdiction,
                    UnitUseRecord.compliance_year,
                ).order_by(UnitUseRecord.id)
            ).all()
        assert [tuple(k) for k in keys] == [
            ("r-0", None, None, None),
            ("s-0", "steel-0", "shenzhen", 2023),
            ("s-1", "steel-1", "shenzhen", 2023),
            ("s-2", "steel-2", "shenzhen", 2023),
        ]
        db.downgrade(engine, _BEFORE_SURRENDER_KEYS)
        assert "entity_id" not in {c["name"] for c in sa.inspect(engine).get_columns("unit_uses")}
    finally:
        engine.dispose()


def _surrender_statements(engine: sa.Engine) -> list[tuple[str, Any]]:
    """The statements that read an entity's surrenders: the offset limits' count of its
    year, the years it claimed in each scheme, and a migration plan's count per year."""
    statements: list[tuple[str, Any]] = []

    def grab(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM unit_uses" in statement:
            statements.append((statement, parameters))

    sessions = db.session_factory(engine)
    with sessions.begin() as session:
        session.add(
            EntityYearRecord(
                entity_id="steel-a",
                jurisdiction="shenzhen",
                compliance_year=2023,
                verified_emissions=1000,
                allowances_due=1000,
            )
        )
    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        DatabaseEntityRecords(sessions).get("steel-a", "shenzhen", 2023)
        with db.read_only(sessions) as session:
            claimed_years(session, "steel-a")
            surrendered_per_year(session, "steel-a", "shenzhen")
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    assert len(statements) == 3, statements
    return statements


def test_an_entitys_surrenders_are_sought_by_an_index(database_url: str) -> None:
    """Each surrender's checks read the entity's own surrenders through
    ``ix_unit_uses_entity_year``, never every surrender of every entity (as they did,
    parsing each one's detail). PostgreSQL's planner prices a scan of a table this small
    below the index: with scans priced out, it still finds the index."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        statements = _surrender_statements(engine)
        with engine.connect() as connection:
            for statement, parameters in statements:
                if engine.dialect.name == "sqlite":
                    plan = " ".join(
                        str(row[-1])
                        for row in connection.exec_driver_sql(
                            f"EXPLAIN QUERY PLAN {statement}", parameters
                        )
                    )
                    assert "USING INDEX ix_unit_uses_entity_year (entity_id=?" in plan, plan
                else:
                    connection.exec_driver_sql("SET enable_seqscan = off")
                    connection.exec_driver_sql("SET enable_bitmapscan = off")
                    plan = "\n".join(
                        str(row[0])
                        for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
                    )
                    assert "Index Scan using ix_unit_uses_entity_year" in plan, plan
                    assert "Seq Scan" not in plan, plan
    finally:
        engine.dispose()


def test_an_upgrade_files_each_logged_range_under_its_serial_node(database_url: str) -> None:
    """The ranges logged before the serials' tree get their node, as new ones do, so a
    trace finds their events node by node; the downgrade drops the nodes only."""
    entries = [(0, 0, 0, 0), (0, 1, 5, 5), (1, 0, 1, 1_000), (2, 0, 100_000, 100_999)]
    entries += [(3 + n, 0, n * 7, n * 7 + n) for n in range(2_100)]  # past one batch
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine, "0022")
        blocks = sa.table(
            "event_blocks",
            *(sa.column(name) for name in ("event_idx", "seq", "program", "serial_series")),
            *(sa.column(name) for name in ("serial_start", "serial_end")),
        )
        with engine.begin() as connection:
            connection.execute(
                sa.insert(blocks),
                [
                    {
                        "event_idx": idx,
                        "seq": seq,
                        "program": "VCS",
                        "serial_series": "",
                        "serial_start": start,
                        "serial_end": end,
                    }
                    for idx, seq, start, end in entries
                ],
            )
        db.upgrade(engine)
        with engine.connect() as connection:
            filed = connection.execute(
                sa.select(
                    EventBlock.event_idx,
                    EventBlock.seq,
                    EventBlock.serial_start,
                    EventBlock.serial_end,
                    EventBlock.serial_node,
                ).order_by(EventBlock.event_idx, EventBlock.seq)
            ).all()
        assert [tuple(row) for row in filed] == [
            (idx, seq, start, end, serial_tree.serial_node(start, end))
            for idx, seq, start, end in entries
        ]
        assert [row.serial_node for row in filed[:4]] == [0, 5, 512, 100_352]
        db.downgrade(engine, "0022")
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(blocks)).scalar() == (
                len(entries)
            )
    finally:
        engine.dispose()
