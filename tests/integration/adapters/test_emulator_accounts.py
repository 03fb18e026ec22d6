"""Every emulated registry puts units only into accounts it has opened.

Its back office (the one ``EmulatorAdmin`` service every emulator serves) opens them, or
``carbonlink registry open-account`` does through it; issuance and the seed accounts an
emulator starts with open them too.  A credit into any other account is refused
``ACCOUNT_NOT_OPEN`` by every registry's native API, singly and in a batch, and changes
nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters._pb.registries.emulator.v1 import emulator_admin_pb2 as admin_pb
from adapters._pb.registries.emulator.v1 import emulator_admin_pb2_grpc as admin_grpc
from adapters.client_core import REJECTION_CODE_KEY
from adapters.emulator_core.admin import list_accounts, open_accounts
from adapters.registry import REGISTRIES
from registry_bridge.bridge import venue_account
from registry_bridge.errors import ACCOUNT_NOT_OPEN, RegistryRejected
from registry_bridge.model import UnitBlock
from registry_bridge.port import (
    CreditRequest,
    FinalizeDisposition,
    FinalizeRequest,
    IssueRequest,
    ListHoldingsRequest,
    LockRequest,
    RegistryHolding,
)
from tests.integration.adapters.conftest import Harness, later, start_harness
from tests.integration.adapters.test_cli_and_persistence import run_cli

NEVER_OPENED = "ACC-NEVER-OPENED"


def immobilized(harness: Harness, start: int, end: int) -> UnitBlock:
    """Units issued into ACC-1, then immobilized there: units that may come back."""
    block = harness.adapter.issue(
        IssueRequest(harness.op("issue"), "ACC-1", harness.block(start, end))
    ).block
    harness.adapter.lock(
        LockRequest(harness.op("lock"), "ACC-1", block.id, later(harness), "t-out")
    )
    harness.adapter.finalize(
        FinalizeRequest(
            harness.op("finalize"), "ACC-1", block.id, FinalizeDisposition.IMMOBILIZE, "t-out", "x"
        )
    )
    return block


def test_a_credit_into_an_account_not_open_is_refused_until_it_is_opened(
    harness: Harness,
) -> None:
    block = immobilized(harness, 1, 10)
    before = harness.adapter.list_holdings(ListHoldingsRequest())
    calls = harness.running.calls.snapshot()
    with pytest.raises(RegistryRejected) as refused:
        harness.adapter.credit(CreditRequest("credit-1", NEVER_OPENED, block, "x", "t-back"))
    # A final refusal: the retrying adapter made the one call, and never again.
    assert sum((harness.running.calls.snapshot() - calls).values()) == 1
    assert refused.value.code == ACCOUNT_NOT_OPEN
    assert NEVER_OPENED in str(refused.value) and harness.registry_id in str(refused.value)
    assert harness.adapter.list_holdings(ListHoldingsRequest()) == before

    (opened,) = open_accounts(harness.running.target, [NEVER_OPENED], "Buyer Ltd")
    assert opened.newly_opened and opened.holder == "Buyer Ltd"
    credited = harness.adapter.credit(CreditRequest("credit-2", NEVER_OPENED, block, "x", "t-back"))
    assert credited.account == NEVER_OPENED


def test_a_batch_refuses_only_its_credits_into_accounts_not_open(harness: Harness) -> None:
    blocks = [immobilized(harness, 100 * i + 1, 100 * i + 10) for i in range(3)]
    requests = [
        CreditRequest(f"credit-{i}", NEVER_OPENED if i == 1 else "ACC-2", b, "x", "t-back")
        for i, b in enumerate(blocks)
    ]
    results = harness.adapter.credit_many(requests)
    assert isinstance(results[0], RegistryHolding) and isinstance(results[2], RegistryHolding)
    assert isinstance(results[1], RegistryRejected) and results[1].code == ACCOUNT_NOT_OPEN
    assert NEVER_OPENED in str(results[1])
    assert sorted(
        h.block.id.serial_start for h in harness.adapter.list_holdings(ListHoldingsRequest("ACC-2"))
    ) == [1, 201]
    assert not harness.adapter.list_holdings(ListHoldingsRequest(NEVER_OPENED))


@pytest.fixture
def verra() -> Iterator[Harness]:
    started = start_harness("verra")
    yield started
    started.running.stop(grace=None)


def test_open_account_is_idempotent_and_listed(verra: Harness) -> None:
    target = verra.running.target
    (first,) = open_accounts(target, ["NEW-1"], "First Holder")
    (again,) = open_accounts(target, ["NEW-1"], "Second Holder")
    assert first.newly_opened and not again.newly_opened
    assert again.holder == "First Holder" and again.opened_at == first.opened_at
    listed = {a.account: a.holder for a in list_accounts(target)}
    assert listed["NEW-1"] == "First Holder"
    # The seed accounts the fixture started the emulator with are open too.
    assert "ACC-1" in listed


@pytest.mark.parametrize(
    ("account", "holder", "field"),
    [
        ("", "", "account"),
        (" x", "", "account"),
        ("x" * 129, "", "account"),
        ("new-account", "\t", "holder"),
    ],
)
def test_a_bad_account_is_refused_invalid_argument_naming_the_field(
    verra: Harness, account: str, holder: str, field: str
) -> None:
    with grpc.insecure_channel(verra.running.target) as channel:
        stub = admin_grpc.EmulatorAdminStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.OpenAccount(admin_pb.OpenAccountRequest(account=account, holder=holder))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}: ")
    assert (REJECTION_CODE_KEY, "INVALID_ACCOUNT") in tuple(refused.value.trailing_metadata())
    assert account not in {a.account for a in list_accounts(verra.running.target)}


def test_the_cli_opens_and_lists_accounts(
    verra: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    target = verra.running.target
    assert run_cli("registry", "open-account", "--target", target, "CLI-1", "CLI-2") == 0
    out = capsys.readouterr().out
    assert "opened account CLI-1" in out and "opened account CLI-2" in out
    assert run_cli("registry", "open-account", "--target", target, "CLI-1", "--holder", "H") == 0
    assert "account CLI-1 was already open" in capsys.readouterr().out
    assert run_cli("registry", "accounts", "--target", target) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "CLI-1" in listed and "CLI-2" in listed

    assert run_cli("registry", "open-account", "--target", target, "bad\x01name") == 2
    assert "account: contains control characters" in capsys.readouterr().err
    # No emulator there: said so, exit 1.
    verra.running.stop(grace=None)
    assert run_cli("registry", "open-account", "--target", target, "CLI-3") == 1
    assert "cannot open" in capsys.readouterr().err


def test_a_store_from_before_accounts_serves_its_accounts(tmp_path: Path) -> None:
    first = start_harness("national", data_dir=tmp_path)
    try:
        first.adapter.issue(IssueRequest("issue", "OLD-HOLDER", first.block(1, 10)))
    finally:
        first.running.stop(grace=None)
    with sqlite3.connect(tmp_path / "national.sqlite3") as db:
        db.execute("DROP TABLE accounts")  # as a store file written before accounts

    again = start_harness("national", data_dir=tmp_path)
    try:
        assert "OLD-HOLDER" in {a.account for a in list_accounts(again.running.target)}
        block = immobilized(again, 101, 110)
        credited = again.adapter.credit(CreditRequest("back", "OLD-HOLDER", block, "x", "t-back"))
        assert credited.account == "OLD-HOLDER" and credited.block.id == block.id
    finally:
        again.running.stop(grace=None)


def test_every_origin_registry_holds_the_venues_account_open_from_the_start() -> None:
    # Units returned to a custody venue come back into its account at their origin
    # registry, which the registry opened when the venue joined, not at the first issuance.
    for registry in ("verra", "national", "hkmo"):
        started = start_harness(registry)
        try:
            listed = {a.account for a in list_accounts(started.running.target)}
        finally:
            started.running.stop(grace=None)
        assert (venue_account("hkmo") in listed) is (registry != "hkmo"), registry


def test_emulate_refuses_a_bad_seed_account_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["emulate", "verra", "--listen", "127.0.0.1:0", "--data", str(tmp_path)]
    assert run_cli(*argv, "--open-account", "fine", "--open-account", "bad ") == 2
    assert "bad --open-account: account: starts or ends with white space" in (
        capsys.readouterr().err
    )
    # Nothing was opened: the seed accounts open together or not at all.
    store = REGISTRIES["verra"].emulator().open_store(tmp_path)
    try:
        assert "fine" not in {a.account for a in store.accounts()}
    finally:
        store.close()
