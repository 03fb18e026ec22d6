"""Registry faults and lock expiry: transfers still end where DESIGN.md says they must.

Faults come from the emulators' interceptor (lost requests, replies lost after the
effect committed, requests delivered twice, latency), so they hit the adapters exactly
as a flaky network would.  A registry that stays down is a stopped server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest

from adapters.emulator_core import FaultConfig
from adapters.retry import RetryingRegistry
from registry_bridge.bridge import Bridge
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import CreditRequest, RegistryHolding
from registry_bridge.transfers import (
    AccountRef,
    Transfer,
    TransferInstruction,
    TransferState,
    UseRequest,
)
from tests.integration.bridge.conftest import (
    FAST_RETRY,
    PermitAllRules,
    World,
    gs_block,
    make_world,
    vcs_block,
)

# Every registry flaky at once.  Seeded: a failure reproduces exactly.
FLAKY = FaultConfig(
    latency_ms=1,
    unavailable_fraction=0.15,
    crash_after_commit_fraction=0.1,
    duplicate_delivery_fraction=0.2,
    seed=7,
)


def _settle(world: World, rounds: int = 40) -> None:
    """Resume unfinished transfers until none is left (a gateway's periodic sweep)."""
    for _ in range(rounds):
        if not world.bridge.resume_unfinished():
            return
    raise AssertionError("transfers still unfinished after resuming them repeatedly")


def _use(world: World, request_id: str, request: UseRequest) -> str:
    """Retire with retries: a use that met an unavailable registry is repeated by id."""
    for _ in range(20):
        try:
            return world.bridge.use(request_id, request).state
        except RegistryUnavailable:
            continue
    raise AssertionError(f"use {request_id} never completed")


@pytest.fixture
def flaky_world(database_url: str) -> Iterator[World]:
    """Every registry flaky (FLAKY), on each database kind."""
    built = make_world(
        database_url,
        {registry: FLAKY for registry in ("verra", "gold-standard", "national", "hkmo")},
    )
    try:
        yield built
    finally:
        built.close()


def test_a_batch_under_registry_faults_ends_completed(flaky_world: World) -> None:
    world = flaky_world
    world.seed("verra", "dev-1", vcs_block(1, 200))
    world.seed("hkmo", "hk-seller", vcs_block(1001, 1200))
    world.seed("gold-standard", "gs-dev", gs_block(1, 100))
    gs = gs_block(1, 100).id
    national = AccountRef("national", "buyer")
    good = (
        [
            TransferInstruction(
                AccountRef("verra", "dev-1"),
                national,
                (BlockId(Program.VCS, "", 1 + 20 * i, 20 + 20 * i),),
            )
            for i in range(5)
        ]
        + [
            TransferInstruction(
                AccountRef("hkmo", "hk-seller"),
                national,
                (BlockId(Program.VCS, "", 1001 + 25 * i, 1025 + 25 * i),),
            )
            for i in range(4)
        ]
        + [
            TransferInstruction(
                AccountRef("gold-standard", "gs-dev"),
                national,
                (dataclasses.replace(gs, serial_end=40),),
            ),
        ]
    )
    bad = [
        # Units the source does not hold, and units already in the batch above.
        TransferInstruction(
            AccountRef("verra", "nobody"), national, (BlockId(Program.VCS, "", 150, 160),)
        ),
        TransferInstruction(
            AccountRef("verra", "dev-1"), national, (BlockId(Program.VCS, "", 5, 8),)
        ),
    ]
    batch = [(f"b-{i}", t) for i, t in enumerate(good + bad)]
    results = world.bridge.submit_many(batch)
    assert all(isinstance(r, Transfer) for r in results), results
    _settle(world)
    final = {t.request_id: t for t in world.bridge.list_transfers(None, 100)[0]}
    for i in range(len(good)):
        assert final[f"b-{i}"].state is TransferState.COMPLETED, final[f"b-{i}"].failure_reason
    for i in range(len(good), len(batch)):
        assert final[f"b-{i}"].state is TransferState.REJECTED

    # Retire some mirrors and send others back, still under faults.
    mirrors = [h for h in world.live() if h.is_mirror]
    assert len(mirrors) == len(good)
    for i, mirror in enumerate(mirrors[:3]):
        part = dataclasses.replace(mirror.block.id, serial_end=mirror.block.id.serial_start + 4)
        assert (
            _use(world, f"u-{i}", UseRequest("retirement", national, (part,), beneficiary="ACME"))
            == "completed"
        )
    returns = []
    for i, mirror in enumerate(mirrors[3:7]):
        home = (
            AccountRef("hkmo", "hk-buyer")
            if mirror.origin.serial_start > 1000
            else AccountRef("verra", "dev-2")
        )
        if mirror.origin.program is Program.GS:
            home = AccountRef("gold-standard", "gs-dev")
        returns.append((f"back-{i}", TransferInstruction(national, home, (mirror.block.id,))))
    world.bridge.submit_many(returns)
    _settle(world)
    final = {t.request_id: t for t in world.bridge.list_transfers(None, 100)[0]}
    for request_id, _ in returns:
        assert final[request_id].state is TransferState.COMPLETED, final[request_id].failure_reason

    assert world.violations() == []
    # Verra's totals, as the ledger must see them: 400 issued, 15 retired (all VCS here).
    totals = {(t.program, t.status): t.quantity for t in world.ports["verra"].totals()}
    assert sum(totals.values()) == 400
    assert totals.get((Program.VCS, HoldingStatus.RETIRED), 0) == 15


def _stuck_past_expiry(world: World) -> tuple[Transfer, BlockId]:
    """A transfer locked at Verra whose destination is down until after its lock expired."""
    world.seed("verra", "dev-1", vcs_block(1, 50))
    block = BlockId(Program.VCS, "", 1, 30)
    world.take_down("national")
    transfer = world.bridge.submit(
        "r-1",
        TransferInstruction(
            AccountRef("verra", "dev-1"), AccountRef("national", "buyer"), (block,)
        ),
    )
    # Locked at Verra, waiting for the destination: before DESTINATION_CREDITED.
    assert transfer.state is TransferState.SOURCE_LOCKED
    assert "waiting for a registry" in transfer.failure_reason
    assert world.at_registry("verra", block) == [(1, 30, "dev-1", "locked")]
    # Within the lock's TTL nothing rolls back.
    world.clock.advance(timedelta(minutes=4))
    assert world.bridge.resume_unfinished() == {transfer.transfer_id: TransferState.SOURCE_LOCKED}
    world.clock.advance(timedelta(minutes=2))
    return transfer, block


def test_expired_lock_waits_while_the_destination_is_down(world: World) -> None:
    transfer, block = _stuck_past_expiry(world)
    # Past the TTL the bridge cannot tell whether a credit it sent was applied until the
    # destination answers, so it holds on (rolling back blind could count units twice).
    assert world.bridge.resume_unfinished() == {transfer.transfer_id: TransferState.SOURCE_LOCKED}
    assert world.at_registry("verra", block) == [(1, 30, "dev-1", "locked")]
    assert world.statuses("verra", "dev-1", block) == {HoldingStatus.LOCKED}
    assert world.violations(registries=False) == []


def test_expired_lock_rolls_back_once_the_destination_answers(world: World) -> None:
    transfer, block = _stuck_past_expiry(world)
    # Once the destination answers, the late credit is refused (its deadline passed), and
    # the transfer rolls back: the source units are active again at Verra.
    world.bring_up("national")
    assert world.bridge.resume_unfinished() == {transfer.transfer_id: TransferState.ROLLED_BACK}
    rolled = world.bridge.get(transfer.transfer_id)
    assert world.at_registry("verra", BlockId(Program.VCS, "", 1, 50)) == [
        (1, 50, "dev-1", "active")
    ]
    assert world.at_registry("national", block) == []
    assert world.statuses("verra", "dev-1", BlockId(Program.VCS, "", 1, 50)) == {
        HoldingStatus.ACTIVE
    }
    assert world.violations() == []
    # Final means final: another sweep changes nothing.
    assert world.bridge.resume_unfinished() == {}
    assert world.bridge.get(transfer.transfer_id).history == rolled.history


def test_lock_expired_before_the_source_answered_rolls_back(world: World) -> None:
    """Source registry down at CHECKED until past the TTL: the transfer never locks, it
    rolls back, and the units are active and free again."""
    world.seed("verra", "dev-1", vcs_block(1, 50))
    block = BlockId(Program.VCS, "", 1, 30)
    world.take_down("verra")
    transfer = world.bridge.submit(
        "r-1",
        TransferInstruction(
            AccountRef("verra", "dev-1"), AccountRef("national", "buyer"), (block,)
        ),
    )
    assert transfer.state is TransferState.CHECKED
    assert world.statuses("verra", "dev-1", block) == {HoldingStatus.LOCKED}
    world.clock.advance(timedelta(minutes=6))
    world.bring_up("verra")
    assert world.bridge.resume_unfinished() == {transfer.transfer_id: TransferState.ROLLED_BACK}
    assert world.statuses("verra", "dev-1", BlockId(Program.VCS, "", 1, 50)) == {
        HoldingStatus.ACTIVE
    }
    assert world.at_registry("verra", BlockId(Program.VCS, "", 1, 50)) == [
        (1, 50, "dev-1", "active")
    ]
    assert world.violations() == []
    # The units can move again.
    again = world.bridge.submit(
        "r-2",
        TransferInstruction(
            AccountRef("verra", "dev-1"), AccountRef("national", "buyer"), (block,)
        ),
    )
    assert again.state is TransferState.COMPLETED, again.failure_reason
    assert world.violations() == []


class _CutOff(RetryingRegistry):
    """A registry no credit whose operation id ends with ``cut`` reaches: the network
    drops there, as it does for a gateway killed right before that call."""

    def __init__(self, inner: RetryingRegistry, cut: str) -> None:
        super().__init__(inner, FAST_RETRY)
        self._cut = cut

    def credit(self, request: CreditRequest) -> RegistryHolding:
        if request.operation_id.endswith(self._cut):
            raise RegistryUnavailable(self.registry_id, "cut off")
        return super().credit(request)

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        if any(r.operation_id.endswith(self._cut) for r in requests):
            raise RegistryUnavailable(self.registry_id, "cut off")
        return super().credit_many(requests)


def _cut_off(world: World, registry: str, cut: str) -> Bridge:
    """A gateway on ``world``'s ledger whose credits ending with ``cut`` never reach
    ``registry`` (the one that dies there; ``world.bridge`` is the one restarted)."""
    port = world.ports[registry]
    assert isinstance(port, RetryingRegistry)
    return Bridge(
        world.sessions,
        {**world.ports, registry: _CutOff(port, cut)},
        PermitAllRules(),
        clock=world.clock,
    )


def test_a_transfer_cut_off_between_its_credits_completes_past_the_lock_expiry(
    world: World,
) -> None:
    """Two blocks move to one destination, one credit each.  The gateway dies after the
    first credit, and the one restarted comes back past the lock's TTL: the first credit
    is applied and cannot be undone, so the second must land too."""
    world.seed("verra", "dev-1", vcs_block(1, 50))
    blocks = (BlockId(Program.VCS, "", 1, 10), BlockId(Program.VCS, "", 21, 30))
    instruction = TransferInstruction(
        AccountRef("verra", "dev-1"), AccountRef("national", "buyer"), blocks
    )
    transfer = _cut_off(world, "national", ":credit:1").submit("r-1", instruction)
    assert transfer.state is TransferState.SOURCE_LOCKED
    world.clock.advance(timedelta(minutes=6))

    assert world.bridge.resume_unfinished() == {transfer.transfer_id: TransferState.COMPLETED}
    done = world.bridge.get(transfer.transfer_id)
    assert [b.quantity for b in done.credited_blocks] == [10, 10]
    for block in blocks:
        assert world.statuses("verra", "dev-1", block) == {HoldingStatus.BRIDGED}
    assert world.violations() == []


def test_a_return_cut_off_between_the_venue_and_the_origin_never_rolls_back(
    world: World,
) -> None:
    """A mirror returns to a custody venue: the venue is credited, then the origin
    registry.  The gateway dies between the two, and the one restarted comes back past the
    lock's TTL: rolling back now would leave the units active at the venue and the mirror
    active in Shenzhen, so the origin's credit must land instead."""
    world.seed("hkmo", "hk-seller", vcs_block(1, 50))
    out = world.bridge.submit(
        "out-1",
        TransferInstruction(
            AccountRef("hkmo", "hk-seller"),
            AccountRef("shenzhen", "buyer"),
            (BlockId(Program.VCS, "", 1, 30),),
        ),
    )
    assert out.state is TransferState.COMPLETED, out.failure_reason
    mirror = out.credited_blocks[0].id
    back = _cut_off(world, "verra", ":credit-origin:0").submit(
        "back-1",
        TransferInstruction(
            AccountRef("shenzhen", "buyer"), AccountRef("hkmo", "hk-buyer"), (mirror,)
        ),
    )
    assert back.state is TransferState.SOURCE_LOCKED
    world.clock.advance(timedelta(minutes=6))

    assert world.bridge.resume_unfinished() == {back.transfer_id: TransferState.COMPLETED}
    assert world.statuses("hkmo", "hk-buyer", BlockId(Program.VCS, "", 1, 30)) == {
        HoldingStatus.ACTIVE
    }
    assert world.violations() == []
