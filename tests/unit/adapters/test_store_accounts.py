"""Accounts in the emulator store: units go only into an account the registry opened.

A registry opens an account when it issues into it, when its seed or import data names
it, or when its back office opens it; every operation that puts units into an account
(a credit, mirror or held, and a reactivation) refuses one that is not open, and changes
nothing.  A store written before accounts were kept knows the accounts its blocks sit in.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from adapters.emulator_core import CreditMode, Rejection, Store, UnitState
from registry_bridge.model import BlockId, Program, UnitBlock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def ccer(start: int, end: int, series: str = "") -> UnitBlock:
    return UnitBlock(
        BlockId(Program.CCER, series, start, end), "P1", "CN", date(2024, 1, 1), date(2024, 12, 31)
    )


def unit(serial: int) -> BlockId:
    return BlockId(Program.CCER, "", serial, serial)


def store(mode: CreditMode = CreditMode.MIRROR, path: Path | None = None) -> Store:
    return Store("reg", frozenset({Program.CCER}), mode, path=path, clock=lambda: NOW)


def test_issuance_opens_the_account_it_issues_into() -> None:
    registry = store()
    assert not registry.is_open("A")
    registry.issue("issue", "A", ccer(1, 10))
    assert registry.is_open("A")
    assert [a.account for a in registry.accounts()] == ["A"]


def test_opening_an_account_twice_is_idempotent_and_keeps_the_first_holder() -> None:
    registry = store()
    first = registry.open_account("B", "Buyer Ltd")
    again = registry.open_account("B", "someone else")
    assert first.newly_opened and not again.newly_opened
    assert again.account == "B" and again.holder == "Buyer Ltd"
    assert [(a.account, a.holder) for a in registry.accounts()] == [("B", "Buyer Ltd")]


@pytest.mark.parametrize(
    ("account", "holder", "field"),
    [
        ("", "", "account"),
        (" B", "", "account"),
        ("B ", "", "account"),
        ("B\x00", "", "account"),
        ("x" * 129, "", "account"),
        ("B", "h\n", "holder"),
        ("B", "h" * 257, "holder"),
    ],
)
def test_a_bad_account_or_holder_is_refused_naming_the_field(
    account: str, holder: str, field: str
) -> None:
    registry = store()
    with pytest.raises(Rejection) as refused:
        registry.open_account(account, holder)
    assert refused.value.code == "INVALID_ACCOUNT"
    assert refused.value.message.startswith(f"{field}: ")
    assert registry.accounts() == []


@pytest.mark.parametrize("mode", [CreditMode.MIRROR, CreditMode.HOLD])
def test_a_credit_into_an_account_not_open_is_refused_and_changes_nothing(
    mode: CreditMode,
) -> None:
    registry = store(mode)
    with pytest.raises(Rejection) as refused:
        registry.credit("credit", "NOPE", ccer(1, 5, "origin"), "other", "t1")
    assert refused.value.code == "ACCOUNT_NOT_OPEN"
    assert "NOPE" in refused.value.message and "reg" in refused.value.message
    assert registry.holdings(include_exported=True) == []
    assert not registry.is_open("NOPE")
    # The refusal is final for its operation id (a late repeat must not land the units
    # after the gateway rolled the transfer back); a new credit after opening lands.
    registry.open_account("NOPE")
    with pytest.raises(Rejection, match="ACCOUNT_NOT_OPEN"):
        registry.credit("credit", "NOPE", ccer(1, 5, "origin"), "other", "t1")
    held = registry.credit("credit-2", "NOPE", ccer(1, 5, "origin"), "other", "t2")
    assert held.account == "NOPE" and held.state is UnitState.ACTIVE


def test_returning_units_into_an_account_not_open_are_refused_both_ways() -> None:
    registry = store(CreditMode.RETURN_ONLY)
    registry.issue("issue", "A", ccer(1, 10))
    registry.lock("lock", "A", unit(3), LATER, "t1")
    registry.finalize("immobilize", "A", unit(3), "t1", export=False)
    with pytest.raises(Rejection, match="ACCOUNT_NOT_OPEN"):
        registry.reactivate("reactivate", "NOPE", unit(3), "t1")
    with pytest.raises(Rejection, match="ACCOUNT_NOT_OPEN"):
        registry.credit("credit", "NOPE", ccer(3, 3), "other", "t1")
    (held,) = registry.find(unit(3))
    assert held.state is UnitState.IMMOBILIZED and held.account == "A"
    # Into an open account they come back.
    registry.open_account("B")
    assert registry.reactivate("reactivate-2", "B", unit(3), "t1").account == "B"


def test_a_batch_refuses_only_its_credits_into_accounts_not_open() -> None:
    registry = store(CreditMode.HOLD)
    registry.open_account("B")
    outcomes: list[str] = []
    with registry.batch():
        for i, account in enumerate(["B", "NOPE", "B"]):
            try:
                registry.credit(f"c{i}", account, ccer(10 * i + 1, 10 * i + 5, "o"), "x", "t")
                outcomes.append("ok")
            except Rejection as rejection:
                outcomes.append(rejection.code)
    assert outcomes == ["ok", "ACCOUNT_NOT_OPEN", "ok"]
    assert sorted(h.block.id.serial_start for h in registry.holdings("B")) == [1, 21]


def test_a_store_written_before_accounts_knows_the_accounts_its_blocks_sit_in(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reg.sqlite3"
    old = store(path=path)
    old.issue("issue-a", "A", ccer(1, 10))
    old.issue("issue-b", "B", ccer(11, 20))
    old.lock("lock", "B", unit(12), LATER, "t1")
    old.finalize("export", "B", unit(12), "t1", export=True)
    old.close()
    # As a store file from before accounts: no accounts table.
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE accounts")
    reopened = store(path=path)
    assert [a.account for a in reopened.accounts()] == ["A", "B"]
    assert reopened.credit("credit", "A", ccer(1, 5, "o"), "x", "t2").account == "A"
    with pytest.raises(Rejection, match="ACCOUNT_NOT_OPEN"):
        reopened.credit("credit-c", "C", ccer(6, 9, "o"), "x", "t3")
    reopened.close()
    # Opened again, nothing is read back twice, and an account opened since stays.
    again = store(path=path)
    again.open_account("C")
    again.close()
    assert [a.account for a in store(path=path).accounts()] == ["A", "B", "C"]
