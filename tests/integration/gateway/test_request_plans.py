"""Reads on a request's path, or on a background pass every few seconds, that concern a
part of the ledger seek it through an index: their cost is that part's, never the whole
history's (every transfer ever made read to find the few unfinished ones).

Each test captures the statement the code runs and asks both databases for its plan.
PostgreSQL's planner prices a scan of a table this small below an index: with scans
priced out, it still finds the index.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from registry_bridge import db, reconciliations
from registry_bridge.bridge import Bridge
from registry_bridge.covered_entities import CoveredEntity
from registry_bridge.migration import PENDING_OPERATIONS, Migrations
from registry_bridge.schema import TransferRecord, UnitUseRecord
from registry_bridge.transfers import AccountRef, RuleViolation, TransferState, UseState
from tests.integration.bridge.conftest import PermitAllRules
from tests.unit.registry_bridge.test_transfer_account_pages import Row, transfer_rows
from tests.unit.registry_bridge.test_use_account_pages import Use, use_rows

_AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@contextmanager
def _statements(engine: sa.Engine, table: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements run inside the block that read ``table``."""
    statements: list[tuple[str, Any]] = []

    def grab(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if f"FROM {table}" in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)


def _plan(engine: sa.Engine, statement: str, parameters: Any) -> str:
    """The database's plan for ``statement``, one line per step."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return "\n".join(str(row[-1]) for row in rows)
        connection.exec_driver_sql("SET enable_seqscan = off")
        connection.exec_driver_sql("SET enable_bitmapscan = off")
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        return "\n".join(str(row[0]) for row in rows)


def _assert_seeks(
    engine: sa.Engine, statement: str, parameters: Any, table: str, index: str
) -> None:
    """``statement`` seeks ``table`` through ``index``, and reads it through nothing else."""
    plan = _plan(engine, statement, parameters)
    if engine.dialect.name == "sqlite":
        assert f"SEARCH {table} USING INDEX {index} (" in plan or (
            f"SEARCH {table} USING COVERING INDEX {index} (" in plan
        ), plan
        assert f"SCAN {table}" not in plan, plan
    else:
        assert re.search(rf"Index (Only )?Scan (Backward )?using {index} on {table}\b", plan), plan
        assert "Seq Scan" not in plan, plan


def _one_statement(engine: sa.Engine, table: str, run: Callable[[], object]) -> tuple[str, Any]:
    with _statements(engine, table) as statements:
        run()
    assert len(statements) == 1, statements
    return statements[0]


def test_recovery_seeks_the_unfinished_transfers_by_their_state(database_url: str) -> None:
    """The recovery loop looks for unfinished transfers every few seconds: a seek of each
    unfinished state in ``ix_transfers_state_created``, not a scan of every transfer ever
    made (``state NOT IN`` the final ones, which no index bounds)."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        bridge = Bridge(db.session_factory(engine), {}, PermitAllRules(), clock=lambda: _AT)
        statement, parameters = _one_statement(engine, "transfers", bridge.resume_unfinished)
        _assert_seeks(engine, statement, parameters, "transfers", "ix_transfers_state_created")
    finally:
        engine.dispose()


_ENTITY = CoveredEntity(
    entity_id="steel-a",
    display_name="Steel A",
    sector="steel",
    gases=("CO2",),
    accounts={"shenzhen": "sz-steel-a", "national": "cn-steel-a"},
)


def _pending_findings(engine: sa.Engine) -> list[RuleViolation]:
    """What a migration plan of ``_ENTITY`` finds of the operations under way on its
    accounts."""
    blocking: list[RuleViolation] = []
    with db.read_only(db.session_factory(engine)) as session:
        Migrations._check_pending(session, _ENTITY, blocking)
    return blocking


def test_a_migration_plan_finds_the_unfinished_transfers_on_the_entitys_accounts(
    database_url: str,
) -> None:
    """Every unfinished transfer from or to one of the entity's accounts blocks its
    migration; a finished one, or one between other accounts, does not."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        rows = [
            Row("t-out", _AT, "shenzhen:sz-steel-a", "hkmo:hk-buyer", TransferState.SOURCE_LOCKED),
            Row("t-in", _AT, "hkmo:hk-seller", "national:cn-steel-a", TransferState.PROPOSED),
            Row("t-done", _AT, "shenzhen:sz-steel-a", "hkmo:hk-buyer", TransferState.COMPLETED),
            Row("t-back", _AT, "shenzhen:sz-steel-a", "hkmo:hk-buyer", TransferState.ROLLED_BACK),
            Row("t-other", _AT, "shenzhen:sz-other", "hkmo:hk-buyer", TransferState.CHECKED),
            # The entity's account name, at another registry: not its account.
            Row("t-elsewhere", _AT, "hkmo:sz-steel-a", "hkmo:hk-buyer", TransferState.CHECKED),
        ]
        with engine.begin() as connection:
            connection.execute(sa.insert(TransferRecord), transfer_rows(rows))
        findings = _pending_findings(engine)
        assert {f.rule_id for f in findings} == {PENDING_OPERATIONS}
        assert sorted(f.message for f in findings) == [
            "transfers/t-in (PROPOSED) touches an account of steel-a",
            "transfers/t-out (SOURCE_LOCKED) touches an account of steel-a",
        ]
    finally:
        engine.dispose()


def test_a_migration_plan_seeks_the_unfinished_transfers_by_their_state(
    database_url: str,
) -> None:
    """A migration plan's look for transfers under way on the entity's accounts seeks
    each unfinished state in ``ix_transfers_state_created``: the transfers under way, of
    every account, not every transfer ever made, read to find the entity's."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        statement, parameters = _one_statement(
            engine, "transfers", lambda: _pending_findings(engine)
        )
        _assert_seeks(engine, statement, parameters, "transfers", "ix_transfers_state_created")
    finally:
        engine.dispose()


_USE_ACCOUNTS = frozenset({"hkmo:hk-seller", "shenzhen:sz-buyer", "macau:mo-a"})


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"kind": "surrender"},
        {"state": UseState.PENDING},
        {"holder": AccountRef("hkmo", "hk-seller")},
    ],
    ids=["accounts", "accounts-and-kind", "accounts-and-state", "accounts-and-holder"],
)
def test_a_uses_page_for_accounts_seeks_each_account(
    database_url: str, filters: dict[str, Any]
) -> None:
    """A page of the uses of some accounts (a caller whose token names them) reads each
    account's uses in ``ix_unit_uses_holder_created`` from the previous page's last one,
    a page at most of each: never every use of every holder after the position, tested
    against the accounts, which read the whole history for a page of an account that
    uses units rarely.

    Over a history of many accounts per registry, analysed: on an empty table
    PostgreSQL prices the smaller registry index (0025) below the holder index, both
    seeks, though on any real history the holder index reads only the account's uses.
    """
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        holders = sorted(_USE_ACCOUNTS) + [
            f"{r}:acct-{i:02d}" for r in ("hkmo", "shenzhen", "macau") for i in range(20)
        ]
        history = [
            Use(
                f"u-{i:05d}",
                _AT + timedelta(seconds=i),
                holders[i % len(holders)],
                "retirement",
                UseState.COMPLETED,
            )
            for i in range(6_000)
        ]
        with db.session_factory(engine).begin() as session:
            session.execute(sa.insert(UnitUseRecord), use_rows(history))
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE unit_uses")
        bridge = Bridge(db.session_factory(engine), {}, PermitAllRules(), clock=lambda: _AT)
        holder: AccountRef | None = filters.get("holder")
        # A holder keeps its own of the accounts: only those are read.
        sought = [
            a for a in _USE_ACCOUNTS if holder is None or a == f"{holder.registry}:{holder.account}"
        ]
        for after in (None, (_AT, "u-0042")):
            with _statements(engine, "unit_uses") as statements:
                bridge.list_uses(after, 50, accounts=_USE_ACCOUNTS, **filters)
            (statement, parameters), *_ = statements
            plan = _plan(engine, statement, parameters)
            if engine.dialect.name == "sqlite":
                reads = [
                    step
                    for step in plan.splitlines()
                    if step.startswith(("SCAN unit_uses", "SEARCH unit_uses"))
                ]
                assert len(reads) == len(sought), plan
                for read in reads:
                    assert read.startswith(
                        (
                            "SEARCH unit_uses USING INDEX ix_unit_uses_holder_created "
                            "(registry=? AND account=?",
                            "SEARCH unit_uses USING COVERING INDEX ix_unit_uses_holder_created "
                            "(registry=? AND account=?",
                        )
                    ), plan
                    if after is not None:
                        assert "(created_at,id)>(?,?)" in read, plan
            else:
                scans = [line for line in plan.splitlines() if " on unit_uses" in line]
                assert len(scans) == len(sought), plan
                assert all(
                    "Scan using ix_unit_uses_holder_created on unit_uses" in scan
                    and "Index" in scan
                    for scan in scans
                ), plan
                assert "Seq Scan" not in plan, plan
    finally:
        engine.dispose()


@pytest.mark.parametrize("trigger", ["request", "schedule"])
def test_a_page_of_one_triggers_reconciliations_seeks_it_newest_first(
    database_url: str, trigger: str
) -> None:
    """ListReconciliations of one trigger reads that trigger's runs newest first from the
    previous page's last one, a page of them: not every run of the trigger ever recorded,
    each with its report, sorted by id for a page (a scheduled run is recorded every
    interval, for as long as the gateways run)."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        for before in (None, 42):
            with db.read_only(db.session_factory(engine)) as session:
                page = functools.partial(
                    reconciliations.list_runs, session, before_id=before, limit=11, trigger=trigger
                )
                statement, parameters = _one_statement(engine, "reconciliations", page)
            _assert_seeks(
                engine, statement, parameters, "reconciliations", "ix_reconciliations_trigger_id"
            )
            plan = _plan(engine, statement, parameters)
            assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
            if before is not None:
                # The position bounds the search, it does not filter a read from the newest.
                assert "trigger=? AND id<?" in plan or "(id < " in plan, plan
    finally:
        engine.dispose()


_REGISTRY_INDEXES = {
    "source": "ix_transfers_source_registry_created",
    "destination": "ix_transfers_destination_registry_created",
}


def _reads(engine: sa.Engine, plan: str, table: str) -> list[str]:
    """The steps of ``plan`` that read ``table`` (SQLite: its SCAN and SEARCH steps;
    PostgreSQL: its scans)."""
    if engine.dialect.name == "sqlite":
        return [
            step
            for step in plan.splitlines()
            if f"{step} ".startswith((f"SCAN {table} ", f"SEARCH {table} "))
        ]
    return [line for line in plan.splitlines() if f" on {table}" in line]


@pytest.mark.parametrize(
    "filters",
    [{"registry": "hkmo"}, {"registry": "hkmo", "state": TransferState.COMPLETED}],
    ids=["registry", "registry-and-state"],
)
def test_a_transfers_page_for_a_registry_seeks_each_side(
    database_url: str, filters: dict[str, Any]
) -> None:
    """A page of one registry's transfers (no accounts) reads the registry's transfers as
    source and as destination, each from the previous page's last one in its side's
    registry index, a page at most of each: never the (created_at, id) order of every
    transfer after the position tested for the registry, the whole history for a page of
    a registry that transfers rarely (nor, with a state, every transfer in the state)."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        bridge = Bridge(db.session_factory(engine), {}, PermitAllRules(), clock=lambda: _AT)
        for after in (None, (_AT, "t-0042")):
            with _statements(engine, "transfers") as statements:
                bridge.list_transfers(after, 50, **filters)
            (statement, parameters), *_ = statements
            plan = _plan(engine, statement, parameters)
            reads = _reads(engine, plan, "transfers")
            assert len(reads) == 2, plan
            sides = []
            for read in reads:
                (side,) = [s for s, index in _REGISTRY_INDEXES.items() if index in read]
                sides.append(side)
                if engine.dialect.name == "sqlite":
                    assert read.startswith("SEARCH transfers USING "), plan
                    assert f"({side}_registry=?" in read, plan
                    if after is not None:
                        assert "(created_at,id)>(?,?)" in read, plan
                else:
                    assert "Index" in read, plan
            assert sorted(sides) == ["destination", "source"], plan
            if engine.dialect.name == "sqlite":
                assert "SCAN transfers" not in plan, plan
            else:
                assert "Seq Scan" not in plan, plan
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "filters",
    [{}, {"kind": "surrender"}, {"state": UseState.PENDING}],
    ids=["registry", "registry-and-kind", "registry-and-state"],
)
def test_a_uses_page_for_a_holder_registry_seeks_it_in_page_order(
    database_url: str, filters: dict[str, Any]
) -> None:
    """A page of the uses of every account of one registry (a holder whose account is
    "") seeks the registry's uses in ``ix_unit_uses_registry_created`` from the previous
    page's last one: the holder index, (registry, account, created_at, id), is not in
    page order for a registry alone, so a page read either every use of the registry and
    sorted them, or every use of every holder after the position."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        bridge = Bridge(db.session_factory(engine), {}, PermitAllRules(), clock=lambda: _AT)
        for after in (None, (_AT, "u-0042")):
            with _statements(engine, "unit_uses") as statements:
                bridge.list_uses(after, 50, holder=AccountRef("hkmo", ""), **filters)
            (statement, parameters), *_ = statements
            _assert_seeks(
                engine, statement, parameters, "unit_uses", "ix_unit_uses_registry_created"
            )
            plan = _plan(engine, statement, parameters)
            (read,) = _reads(engine, plan, "unit_uses")
            assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
            if engine.dialect.name == "sqlite" and after is not None:
                assert "(registry=? AND (created_at,id)>(?,?))" in read, plan
    finally:
        engine.dispose()
