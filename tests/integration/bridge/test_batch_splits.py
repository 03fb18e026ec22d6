"""A batch checked in one transaction cuts the ranges of its transfers out of a shared
source row together; transfers refused or contested leave the ledger whole."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from registry_bridge.bridge import TransferCheck
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.schema import LedgerEvent
from registry_bridge.transfers import (
    AccountRef,
    RulesDecision,
    RuleViolation,
    TransferInstruction,
    TransferState,
)
from tests.integration.bridge.conftest import PermitAllRules, World, vcs_block

HK_SELLER = AccountRef("hkmo", "hk-seller")
NATIONAL_BUYER = AccountRef("national", "buyer")
REFUSED = (5001, 5005)


def vcs(start: int, end: int) -> BlockId:
    return BlockId(Program.VCS, "", start, end)


class RefuseOneBlock(PermitAllRules):
    """Refuses transfers of the serials ``REFUSED``; allows the rest."""

    def check_transfer(self, check: TransferCheck) -> RulesDecision:
        if {b.id.serial_start for b in check.blocks} & set(REFUSED):
            return RulesDecision(
                allowed=False,
                violations=(RuleViolation("TEST-0001", "refused by the test", "test"),),
            )
        return RulesDecision(allowed=True)


def test_refused_and_contested_transfers_of_a_batch_leave_the_ledger_whole(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world.bridge, "_rules", RefuseOneBlock())
    world.seed("hkmo", "hk-seller", vcs_block(5001, 5100))
    lots = [
        (f"lot-{s}", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(s, s),)))
        for s in range(5001, 5011)
    ]
    # The same serial twice: one of the two has it, and it is not cut ahead for either.
    twice = [
        (f"twice-{i}", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(5020, 5020),)))
        for i in range(2)
    ]

    results = world.bridge.submit_many(lots + twice)

    states = {r.request_id: r.state for r in results if not isinstance(r, Exception)}
    assert [states.pop(f"lot-{s}") for s in REFUSED] == [TransferState.REJECTED] * 2
    assert sorted(states.pop(r).value for r, _ in twice) == ["COMPLETED", "REJECTED"]
    assert set(states.values()) == {TransferState.COMPLETED}
    with world.sessions() as session:
        splits = [
            json.loads(p)
            for p in session.execute(
                sa.select(LedgerEvent.payload).where(LedgerEvent.kind == "split")
            ).scalars()
        ]
    # One split cuts the lots (that of 5005 too, refused only after); the contested
    # serial is cut by the transfer that has it, from the remainder.
    assert [[p["serial_start"] for p in s["pieces"]] for s in splits] == [
        [*range(5001, 5011), 5011],
        [5011, 5020, 5021],
    ]
    cut_for = dict(zip(range(5001, 5012), splits[0]["cut_for"], strict=True))
    # 5001's transfer was refused before the split: nothing was cut for it.
    assert (cut_for[5001], cut_for[5011]) == ("", "")
    assert all(cut_for[s] for s in range(5002, 5011))
    assert "cut_for" not in splits[1]
    seller = {
        (h.block.id.serial_start, h.block.id.serial_end): h.status
        for h in world.live()
        if (h.registry, h.account) == ("hkmo", "hk-seller")
    }
    assert seller == {
        (5001, 5001): HoldingStatus.ACTIVE,
        (5005, 5005): HoldingStatus.ACTIVE,  # cut for its transfer, which was refused
        (5011, 5019): HoldingStatus.ACTIVE,
        (5021, 5100): HoldingStatus.ACTIVE,
    }
    assert world.violations() == []
