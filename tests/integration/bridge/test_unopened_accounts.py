"""A destination registry refuses units sent to an account it has not opened: the
transfer rolls back, its source's units active again, and its reason names the account.

In a batch only the transfers to that account roll back; the others complete.
"""

from __future__ import annotations

from adapters.emulator_core.admin import open_accounts
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.transfers import AccountRef, TransferInstruction, TransferState
from tests.integration.bridge.conftest import World, vcs_block

HK_SELLER = AccountRef("hkmo", "hk-seller")
NATIONAL_BUYER = AccountRef("national", "buyer")
MISTYPED = AccountRef("national", "byuer")


def vcs(start: int, end: int) -> BlockId:
    return BlockId(Program.VCS, "", start, end)


def test_a_transfer_to_an_account_not_open_rolls_back_until_it_is_opened(world: World) -> None:
    world.seed("hkmo", "hk-seller", vcs_block(1, 100))

    refused = world.bridge.submit("typo", TransferInstruction(HK_SELLER, MISTYPED, (vcs(1, 10),)))

    assert refused.state is TransferState.ROLLED_BACK
    assert "the destination account 'byuer' is not open at registry national" in (
        refused.failure_reason
    )
    assert world.statuses("hkmo", "hk-seller", vcs(1, 100)) == {HoldingStatus.ACTIVE}
    assert {status for *_, status in world.at_registry("hkmo", vcs(1, 100))} == {"active"}
    assert world.at_registry("national", vcs(1, 100)) == []
    assert world.violations() == []

    open_accounts(world.emulators["national"].target, ["byuer"])
    moved = world.bridge.submit("typo-2", TransferInstruction(HK_SELLER, MISTYPED, (vcs(1, 10),)))
    assert moved.state is TransferState.COMPLETED, moved.failure_reason
    assert world.violations() == []


def test_a_batch_rolls_back_only_its_transfer_to_an_account_not_open(world: World) -> None:
    world.seed("hkmo", "hk-seller", vcs_block(1, 100))
    batch = [
        (f"lot-{i}", TransferInstruction(HK_SELLER, to, (vcs(10 * i + 1, 10 * i + 10),)))
        for i, to in enumerate([NATIONAL_BUYER, MISTYPED, NATIONAL_BUYER])
    ]

    results = world.bridge.submit_many(batch)

    states = [r.state for r in results if not isinstance(r, Exception)]
    assert states == [
        TransferState.COMPLETED,
        TransferState.ROLLED_BACK,
        TransferState.COMPLETED,
    ]
    assert not isinstance(results[1], Exception)
    assert "'byuer' is not open at registry national" in results[1].failure_reason
    assert world.statuses("hkmo", "hk-seller", vcs(11, 20)) == {HoldingStatus.ACTIVE}
    assert world.violations() == []
