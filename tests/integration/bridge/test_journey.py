"""The exchange-operator journey, idempotency and rejections, over real gRPC emulators.

VCUs held at the Hong Kong venue (backed at Verra in the venue's account) are sold to a
buyer in the national registry, who retires part of them and sends the rest back to Hong
Kong.  At every step Verra must show the origin block in the right state, and every
invariant of DESIGN.md must hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from registry_bridge import bridge as bridge_module
from registry_bridge.errors import (
    FailedPrecondition,
    InvalidRequest,
    LedgerConflict,
    RequestIdConflict,
)
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import BlockStatusRequest, LockRequest
from registry_bridge.schema import LedgerEvent
from registry_bridge.transfers import (
    AccountRef,
    Transfer,
    TransferInstruction,
    TransferState,
    UseRequest,
)
from tests.integration.bridge.conftest import World, ccer_block, gs_block, vcs_block

HK_SELLER = AccountRef("hkmo", "hk-seller")
HK_BUYER = AccountRef("hkmo", "hk-buyer")
NATIONAL_BUYER = AccountRef("national", "buyer")


def vcs(start: int, end: int) -> BlockId:
    """A VCS serial range."""
    return BlockId(Program.VCS, "", start, end)


def test_exchange_journey_keeps_verra_in_step(world: World) -> None:
    world.seed("hkmo", "hk-seller", vcs_block(1001, 1100))
    assert world.violations() == []
    assert world.at_registry("verra", vcs(1001, 1100)) == [(1001, 1100, "venue-hkmo", "active")]

    # 1. 60 of the 100 VCUs move to the national registry as a mirror.
    moved = world.bridge.submit(
        "r1", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(1001, 1060),))
    )
    assert moved.state is TransferState.COMPLETED, moved.failure_reason
    assert [s.state for s in moved.history] == [
        TransferState.PROPOSED,
        TransferState.CHECKED,
        TransferState.SOURCE_LOCKED,
        TransferState.DESTINATION_CREDITED,
        TransferState.SOURCE_FINALIZED,
        TransferState.COMPLETED,
    ]
    (mirror,) = moved.credited_blocks
    assert mirror.quantity == 60
    assert mirror.id.serial_series == "national-mirror"
    assert world.at_registry("verra", vcs(1001, 1100)) == [
        (1001, 1060, "venue-hkmo", "bridged"),  # immobilized while the mirror exists
        (1061, 1100, "venue-hkmo", "active"),
    ]
    assert world.at_registry("hkmo", vcs(1001, 1100)) == [(1061, 1100, "hk-seller", "active")]
    assert world.at_registry("national", mirror.id) == [
        (mirror.id.serial_start, mirror.id.serial_end, "buyer", "active")
    ]
    assert world.violations() == []

    # 2. The buyer retires the first 20 mirror units: their origin retires at Verra.
    retired_part = dataclasses.replace(mirror.id, serial_end=mirror.id.serial_start + 19)
    use = world.bridge.use(
        "u1",
        UseRequest("retirement", NATIONAL_BUYER, (retired_part,), beneficiary="ACME"),
    )
    assert use.state == "completed"
    assert world.at_registry("verra", vcs(1001, 1100)) == [
        (1001, 1020, "venue-hkmo", "retired"),
        (1021, 1060, "venue-hkmo", "bridged"),
        (1061, 1100, "venue-hkmo", "active"),
    ]
    assert world.violations() == []

    # 3. The other 40 return to Hong Kong: their origin is free again at Verra.
    rest = dataclasses.replace(mirror.id, serial_start=mirror.id.serial_start + 20)
    back = world.bridge.submit("r2", TransferInstruction(NATIONAL_BUYER, HK_BUYER, (rest,)))
    assert back.state is TransferState.COMPLETED, back.failure_reason
    assert world.at_registry("verra", vcs(1001, 1100)) == [
        (1001, 1020, "venue-hkmo", "retired"),
        (1021, 1100, "venue-hkmo", "active"),
    ]
    assert world.at_registry("hkmo", vcs(1001, 1100)) == [
        (1021, 1060, "hk-buyer", "active"),
        (1061, 1100, "hk-seller", "active"),
    ]
    assert world.at_registry("national", mirror.id) == [
        (mirror.id.serial_start, mirror.id.serial_start + 19, "buyer", "retired")
    ]
    assert world.statuses("hkmo", "hk-buyer", vcs(1021, 1060)) == {HoldingStatus.ACTIVE}
    # The returned mirror's last event says it left the national registry.
    ended = [b for b in _bodies(world, back.transfer_id) if b.get("exported")]
    assert [(b["kind"], b["status"], b["previous_status"]) for b in ended] == [
        ("finalize", "exported", "locked")
    ]
    assert world.violations() == []


def test_same_request_id_same_body_returns_the_same_transfer(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    instruction = TransferInstruction(AccountRef("verra", "dev-1"), NATIONAL_BUYER, (vcs(1, 10),))
    first = world.bridge.submit("req-1", instruction)
    events_before = _log_size(world)
    again = world.bridge.submit("req-1", instruction)
    assert again.transfer_id == first.transfer_id
    assert again.state is first.state is TransferState.COMPLETED
    assert again.history == first.history
    # A repeat changes nothing: no new event, no second mirror.
    assert _log_size(world) == events_before
    assert len([h for h in world.live() if h.is_mirror]) == 1
    assert world.violations() == []


def test_same_request_id_other_body_is_refused(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    source = AccountRef("verra", "dev-1")
    first = world.bridge.submit("req-1", TransferInstruction(source, NATIONAL_BUYER, (vcs(1, 10),)))
    events_before = _log_size(world)
    with pytest.raises(RequestIdConflict, match="'req-1' was already used") as caught:
        world.bridge.submit("req-1", TransferInstruction(source, NATIONAL_BUYER, (vcs(1, 11),)))
    # The refusal names no transfer, not even the caller's own.
    assert first.transfer_id not in str(caught.value)
    assert _log_size(world) == events_before
    assert world.bridge.get(first.transfer_id).instruction.units == (vcs(1, 10),)


def test_use_request_id_is_idempotent_too(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    owner = AccountRef("verra", "dev-1")
    request = UseRequest("retirement", owner, (vcs(1, 5),), beneficiary="ACME")
    first = world.bridge.use("u-1", request)
    events_before = _log_size(world)
    assert world.bridge.use("u-1", request).use_id == first.use_id
    assert _log_size(world) == events_before
    with pytest.raises(RequestIdConflict, match="'u-1' was already used") as caught:
        world.bridge.use("u-1", dataclasses.replace(request, beneficiary="Other"))
    assert first.use_id not in str(caught.value)
    assert world.violations() == []


def test_request_ids_are_each_callers_own(world: World) -> None:
    """The same id from two callers names two transfers, and each repeat is answered
    within its caller's space: a single repeated in a batch too."""
    world.seed("verra", "dev-1", vcs_block(1, 50))
    source = AccountRef("verra", "dev-1")
    first_ten = TransferInstruction(source, NATIONAL_BUYER, (vcs(1, 10),))
    next_ten = TransferInstruction(source, NATIONAL_BUYER, (vcs(11, 20),))
    a = world.bridge.submit("req-1", first_ten, caller="desk-a")
    b = world.bridge.submit("req-1", next_ten, caller="desk-b")
    assert a.state is b.state is TransferState.COMPLETED, (a.failure_reason, b.failure_reason)
    assert a.transfer_id != b.transfer_id
    events_before = _log_size(world)
    assert world.bridge.submit("req-1", first_ten, caller="desk-a").transfer_id == a.transfer_id
    (again,) = world.bridge.submit_many([("req-1", next_ten)], caller="desk-b")
    assert isinstance(again, Transfer) and again.transfer_id == b.transfer_id
    with pytest.raises(RequestIdConflict, match="'req-1' was already used"):
        world.bridge.submit("req-1", first_ten, caller="desk-b")
    assert _log_size(world) == events_before
    # The local caller's space (an insecure gateway's) is one more: its req-1 is free.
    local = world.bridge.submit(
        "req-1", TransferInstruction(source, NATIONAL_BUYER, (vcs(21, 30),))
    )
    assert local.state is TransferState.COMPLETED
    assert len({a.transfer_id, b.transfer_id, local.transfer_id}) == 3
    assert world.violations() == []


def test_a_replay_of_another_callers_request_is_a_request_of_its_own(world: World) -> None:
    """Never answered with the other caller's transfer or use: decided afresh, and here
    refused, as the units it names have left the account."""
    world.seed("verra", "dev-1", vcs_block(1, 50))
    source = AccountRef("verra", "dev-1")
    instruction = TransferInstruction(source, NATIONAL_BUYER, (vcs(1, 10),))
    theirs = world.bridge.submit("req-1", instruction, caller="desk-a")
    assert theirs.state is TransferState.COMPLETED
    mine = world.bridge.submit("req-1", instruction, caller="desk-b")
    assert mine.transfer_id != theirs.transfer_id
    assert mine.state is TransferState.REJECTED
    (batched,) = world.bridge.submit_many([("req-1", instruction)], caller="desk-c")
    assert isinstance(batched, Transfer) and batched.transfer_id != theirs.transfer_id
    retirement = UseRequest("retirement", source, (vcs(11, 15),), beneficiary="ACME")
    world.bridge.use("u-1", retirement, caller="desk-a")
    with pytest.raises(FailedPrecondition):
        world.bridge.use("u-1", retirement, caller="desk-b")
    assert world.bridge.get(theirs.transfer_id) == theirs
    assert world.violations() == []


def test_use_request_ids_are_each_callers_own(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    owner = AccountRef("verra", "dev-1")
    first_five = UseRequest("retirement", owner, (vcs(1, 5),), beneficiary="ACME")
    next_five = UseRequest("retirement", owner, (vcs(6, 10),), beneficiary="ACME")
    a = world.bridge.use("u-1", first_five, caller="desk-a")
    b = world.bridge.use("u-1", next_five, caller="desk-b")
    assert a.state == b.state == "completed"
    assert a.use_id != b.use_id
    events_before = _log_size(world)
    assert world.bridge.use("u-1", next_five, caller="desk-b").use_id == b.use_id
    with pytest.raises(RequestIdConflict, match="'u-1' was already used"):
        world.bridge.use("u-1", first_five, caller="desk-b")
    assert _log_size(world) == events_before
    assert world.violations() == []


def test_a_use_of_overlapping_selectors_names_them_and_changes_nothing(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    owner = AccountRef("verra", "dev-1")
    events_before = _log_size(world)
    request = UseRequest("retirement", owner, (vcs(1, 10), vcs(5, 15)), beneficiary="ACME")
    with pytest.raises(InvalidRequest, match=r"units\[0\]: overlaps another unit selector"):
        world.bridge.use("u-overlap", request)
    assert _log_size(world) == events_before
    assert world.violations() == []


def _bodies(world: World, transfer_id: str) -> list[dict[str, Any]]:
    from registry_bridge import db
    from registry_bridge.schema import LedgerEvent

    with db.read_only(world.sessions) as session:
        return [
            json.loads(bytes(payload))
            for payload in session.execute(
                sa.select(LedgerEvent.payload)
                .where(LedgerEvent.transfer_id == transfer_id)
                .order_by(LedgerEvent.idx)
            ).scalars()
        ]


def _log_size(world: World) -> int:
    from registry_bridge import db
    from registry_bridge.event_log import log_size

    with db.unit_of_work(world.sessions) as session:
        return log_size(session)


def _rejected(world: World, request_id: str, instruction: TransferInstruction) -> str:
    """Submit, check the transfer ends REJECTED with its reasons and changed nothing."""
    up = world.ports
    rows_before = {(h.block.id, h.registry, h.account, h.status) for h in world.live()}
    totals_before = {r: sorted(map(str, p.totals())) for r, p in up.items() if r not in world.down}
    transfer = world.bridge.submit(request_id, instruction)
    assert transfer.state is TransferState.REJECTED
    assert transfer.decision is not None
    assert not transfer.decision.allowed
    assert transfer.decision.violations, "a rejection names its reasons"
    assert transfer.failure_reason
    assert {(h.block.id, h.registry, h.account, h.status) for h in world.live()} == rows_before
    totals_after = {r: sorted(map(str, p.totals())) for r, p in up.items() if r not in world.down}
    assert totals_after == totals_before
    assert world.violations(registries=not world.down) == []
    return " ".join(v.rule_id + " " + v.message for v in transfer.decision.violations)


def test_units_not_held_are_rejected(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    # Someone else's units, and units that were never issued.
    reasons = _rejected(
        world,
        "r-not-held",
        TransferInstruction(AccountRef("verra", "dev-2"), NATIONAL_BUYER, (vcs(1, 10),)),
    )
    assert "CL-LEDGER-HOLDER" in reasons
    reasons = _rejected(
        world,
        "r-unknown",
        TransferInstruction(AccountRef("verra", "dev-1"), NATIONAL_BUYER, (vcs(40, 60),)),
    )
    assert "CL-LEDGER-UNKNOWN_UNITS" in reasons


def test_bridged_units_say_where_their_mirror_is(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    source = AccountRef("verra", "dev-1")
    moved = world.bridge.submit("out-1", TransferInstruction(source, NATIONAL_BUYER, (vcs(1, 10),)))
    assert moved.state is TransferState.COMPLETED
    reasons = _rejected(
        world, "again-1", TransferInstruction(source, NATIONAL_BUYER, (vcs(1, 10),))
    )
    assert "units are bridged out: their mirror is at national" in reasons
    assert "buyer" not in reasons


def test_retired_units_are_rejected(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    owner = AccountRef("verra", "dev-1")
    world.bridge.use("u-1", UseRequest("retirement", owner, (vcs(1, 10),), beneficiary="ACME"))
    reasons = _rejected(
        world, "r-retired", TransferInstruction(owner, NATIONAL_BUYER, (vcs(5, 15),))
    )
    assert "CL-LEDGER-STATUS" in reasons and "retired" in reasons


def test_units_locked_by_another_transfer_are_rejected(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    owner = AccountRef("verra", "dev-1")
    # The national registry is down: the first transfer holds its lock, waiting.
    world.take_down("national")
    waiting = world.bridge.submit(
        "r-first", TransferInstruction(owner, NATIONAL_BUYER, (vcs(1, 20),))
    )
    assert waiting.state is TransferState.SOURCE_LOCKED
    assert world.violations(registries=False) == []
    reasons = _rejected(
        world,
        "r-second",
        TransferInstruction(owner, AccountRef("national", "other"), (vcs(15, 30),)),
    )
    assert "CL-LEDGER-STATUS" in reasons and "locked" in reasons
    world.bring_up("national")
    assert world.bridge.resume_unfinished() == {waiting.transfer_id: TransferState.COMPLETED}
    assert world.violations() == []


def test_routes_the_bridge_does_not_take_are_rejected(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    world.seed("national", "ent-1", ccer_block(1, 50))
    # Verra and its custody venue hold VCUs natively: no bridge between them.
    reasons = _rejected(
        world,
        "r-to-venue",
        TransferInstruction(AccountRef("verra", "dev-1"), HK_BUYER, (vcs(1, 10),)),
    )
    assert "CL-LEDGER-ROUTE" in reasons
    # A transfer inside one registry is that registry's business: refused as malformed.
    with pytest.raises(InvalidRequest, match=r"destination\.registry"):
        world.bridge.submit(
            "r-internal",
            TransferInstruction(
                AccountRef("verra", "dev-1"), AccountRef("verra", "x"), (vcs(1, 2),)
            ),
        )
    assert world.violations() == []


def test_a_corsia_obligation_year_is_kept_with_the_transfer_and_its_request_id(
    world: World,
) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    for_2026 = TransferInstruction(
        AccountRef("verra", "dev-1"),
        NATIONAL_BUYER,
        (vcs(1, 10),),
        intended_use="corsia",
        compliance_year=2026,
    )
    moved = world.bridge.submit("r-corsia", for_2026)
    assert moved.state is TransferState.COMPLETED, moved.failure_reason
    # Read back from the stored instruction, not from the submission in memory.
    assert world.bridge.get(moved.transfer_id).instruction == for_2026
    assert world.bridge.submit("r-corsia", for_2026).transfer_id == moved.transfer_id
    events_before = _log_size(world)
    # Another obligation year is another body for the same request id.
    with pytest.raises(RequestIdConflict, match="'r-corsia' was already used"):
        world.bridge.submit("r-corsia", dataclasses.replace(for_2026, compliance_year=2027))
    with pytest.raises(RequestIdConflict, match="'r-corsia' was already used"):
        world.bridge.submit("r-corsia", dataclasses.replace(for_2026, compliance_year=0))
    assert _log_size(world) == events_before
    assert world.violations() == []


@pytest.mark.parametrize(
    ("use", "year", "problem"),
    [
        ("holding", 2026, "only for intended use 'corsia', not 'holding'"),
        ("corsia", 2020, "2020 is not a CORSIA compliance year"),
        ("corsia", 2101, "2101 is not a CORSIA compliance year"),
    ],
)
def test_a_bad_compliance_year_is_refused_naming_it_and_changes_nothing(
    world: World, use: str, year: int, problem: str
) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    instruction = TransferInstruction(
        AccountRef("verra", "dev-1"),
        NATIONAL_BUYER,
        (vcs(1, 10),),
        intended_use=use,
        compliance_year=year,
    )
    rows_before = {(h.block.id, h.registry, h.account, h.status) for h in world.live()}
    events_before = _log_size(world)
    for attempt in (
        lambda: world.bridge.evaluate(instruction),
        lambda: world.bridge.submit("r-bad-year", instruction),
    ):
        with pytest.raises(InvalidRequest) as caught:
            attempt()
        (violation,) = caught.value.violations
        assert violation.field == "instruction.compliance_year"
        assert problem in violation.description
    (refused,) = world.bridge.submit_many([("r-bad-year", instruction)])
    assert isinstance(refused, InvalidRequest)
    assert {(h.block.id, h.registry, h.account, h.status) for h in world.live()} == rows_before
    assert _log_size(world) == events_before
    # The request id was not taken: a good instruction may still use it.
    good = dataclasses.replace(instruction, intended_use="corsia", compliance_year=2026)
    assert world.bridge.submit("r-bad-year", good).state is TransferState.COMPLETED
    assert world.violations() == []


def test_foreign_units_refused_by_the_destination_roll_back(world: World) -> None:
    world.seed("gold-standard", "gs-dev", gs_block(1, 30))
    gs = gs_block(1, 30).id
    transfer = world.bridge.submit(
        "r-gs-to-verra",
        TransferInstruction(AccountRef("gold-standard", "gs-dev"), AccountRef("verra", "x"), (gs,)),
    )
    # Verra accepts only its own units back: the credit is refused, the lock released.
    assert transfer.state is TransferState.ROLLED_BACK
    assert "credit refused" in transfer.failure_reason
    assert world.at_registry("gold-standard", gs) == [(1, 30, "gs-dev", "active")]
    assert world.statuses("gold-standard", "gs-dev", gs) == {HoldingStatus.ACTIVE}
    assert world.violations() == []


def test_a_use_refused_by_the_origin_registry_leaves_the_ledger_reconciled(world: World) -> None:
    world.seed("verra", "dev-1", vcs_block(1, 50))
    moved = world.bridge.submit(
        "r1", TransferInstruction(AccountRef("verra", "dev-1"), NATIONAL_BUYER, (vcs(1, 20),))
    )
    (mirror,) = moved.credited_blocks
    # Verra has no compliance surrender, so surrendering the mirror cannot be carried out
    # at the origin.  Whatever the bridge answers, it must not leave the two apart.
    request = UseRequest(
        "surrender",
        NATIONAL_BUYER,
        (mirror.id,),
        entity_id="ENT-1",
        compliance_year=2026,
        jurisdiction="CN",
    )
    with contextlib.suppress(FailedPrecondition):
        world.bridge.use("s1", request)
    assert world.violations() == []
    assert all(h.status is not HoldingStatus.LOCKED for h in world.live())


def test_units_of_one_row_move_together_in_one_transfer(world: World) -> None:
    """Two ranges cut from the same held block: each moves once, the gap stays behind."""
    world.seed("hkmo", "hk-seller", vcs_block(2001, 2100))

    moved = world.bridge.submit(
        "two-ranges",
        TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(2001, 2005), vcs(2011, 2015))),
    )

    assert moved.state is TransferState.COMPLETED, moved.failure_reason
    assert sorted(b.quantity for b in moved.credited_blocks) == [5, 5]
    assert world.at_registry("hkmo", vcs(2001, 2100)) == [
        (2006, 2010, "hk-seller", "active"),
        (2016, 2100, "hk-seller", "active"),
    ]
    assert world.at_registry("verra", vcs(2001, 2100)) == [
        (2001, 2005, "venue-hkmo", "bridged"),
        (2006, 2010, "venue-hkmo", "active"),
        (2011, 2015, "venue-hkmo", "bridged"),
        (2016, 2100, "venue-hkmo", "active"),
    ]
    assert world.violations() == []


def test_a_batch_driven_as_parallel_parts_settles_every_transfer_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of one batch carve the same held block at the same time; none is lost."""
    monkeypatch.setattr(bridge_module, "_PIPELINE_PART", 7)
    world.seed("hkmo", "hk-seller", vcs_block(3001, 3100))
    good = [
        (f"part-{i}", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(3001 + i, 3001 + i),)))
        for i in range(40)
    ]
    # The same units twice in one batch: exactly one of the two transfers may have them.
    twice = [
        (f"twice-{i}", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(3090, 3091),)))
        for i in range(2)
    ]

    results = world.bridge.submit_many(good + twice)

    states = {r.request_id: r.state for r in results if not isinstance(r, Exception)}
    assert all(states[r] is TransferState.COMPLETED for r, _ in good), states
    assert sorted(states[r].value for r, _ in twice) == ["COMPLETED", "REJECTED"]
    assert world.at_registry("hkmo", vcs(3001, 3100)) == [
        (3041, 3089, "hk-seller", "active"),
        (3092, 3100, "hk-seller", "active"),
    ]
    assert world.violations() == []


def test_a_batch_of_returns_and_bridge_outs_settles_as_each_would_alone(world: World) -> None:
    """One check group holds returns of mirrors, new bridge-outs and a refused transfer;
    on PostgreSQL the group's ledger lookups are read at once (``ledger.prefetch``), and
    each transfer must end as it would have alone."""
    world.seed("hkmo", "hk-seller", vcs_block(8001, 8100))
    out = world.bridge.submit(
        "out", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(8001, 8020),))
    )
    assert out.state is TransferState.COMPLETED, out.failure_reason
    (mirror,) = out.credited_blocks
    first = mirror.id.serial_start

    def part(offset: int, size: int) -> BlockId:
        return dataclasses.replace(
            mirror.id, serial_start=first + offset, serial_end=first + offset + size - 1
        )

    batch = [
        ("back-1", TransferInstruction(NATIONAL_BUYER, HK_BUYER, (part(0, 5),))),
        ("back-2", TransferInstruction(NATIONAL_BUYER, HK_BUYER, (part(5, 1), part(10, 3)))),
        ("out-1", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(8050, 8054),))),
        ("out-2", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(8055, 8055),))),
        # Already moved out by "out": not held by the seller any more.
        ("gone", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(8010, 8011),))),
        # The same mirror units as back-1: the first of the two has them.
        ("back-again", TransferInstruction(NATIONAL_BUYER, HK_BUYER, (part(0, 5),))),
    ]

    results = world.bridge.submit_many(batch)

    states = {r.request_id: r.state for r in results if not isinstance(r, Exception)}
    assert states == {
        "back-1": TransferState.COMPLETED,
        "back-2": TransferState.COMPLETED,
        "out-1": TransferState.COMPLETED,
        "out-2": TransferState.COMPLETED,
        "gone": TransferState.REJECTED,
        "back-again": TransferState.REJECTED,
    }
    assert world.at_registry("verra", vcs(8001, 8100)) == [
        (8001, 8006, "venue-hkmo", "active"),
        (8007, 8010, "venue-hkmo", "bridged"),
        (8011, 8013, "venue-hkmo", "active"),
        (8014, 8020, "venue-hkmo", "bridged"),
        (8021, 8049, "venue-hkmo", "active"),
        (8050, 8054, "venue-hkmo", "bridged"),  # one block per transfer
        (8055, 8055, "venue-hkmo", "bridged"),
        (8056, 8100, "venue-hkmo", "active"),
    ]
    assert world.at_registry("hkmo", vcs(8001, 8100)) == [
        (8001, 8005, "hk-buyer", "active"),
        (8006, 8006, "hk-buyer", "active"),
        (8011, 8013, "hk-buyer", "active"),
        (8021, 8049, "hk-seller", "active"),
        (8056, 8100, "hk-seller", "active"),
    ]
    assert world.violations() == []


def test_a_lock_refused_at_the_venue_releases_the_origin_lock_taken_beside_it(
    world: World,
) -> None:
    """A venue's lock and its origin's go out together; a refusal of one undoes both."""
    world.seed("hkmo", "hk-seller", vcs_block(3001, 3050))
    # Someone else's lock at the venue, unknown to the gateway: the venue refuses ours.
    world.ports["hkmo"].lock(
        LockRequest(
            "outside-lock",
            "hk-seller",
            vcs(3001, 3050),
            world.clock() + timedelta(hours=1),
            "outside",
        )
    )
    transfer = world.bridge.submit(
        "venue-refuses", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(3001, 3010),))
    )
    assert transfer.state is TransferState.ROLLED_BACK
    assert "lock refused" in transfer.failure_reason
    # The origin lock was taken beside the refused one (the legs are independent) and
    # released by the rollback: Verra shows the venue's position whole and active.
    verra = world.emulators["verra"].store
    locked = verra.operation(f"{transfer.transfer_id}:lock-origin:0")
    assert locked is not None and locked.rejection is None
    unlocked = verra.operation(f"{transfer.transfer_id}:lock-origin:0:unlock")
    assert unlocked is not None and unlocked.rejection is None
    origin = world.ports["verra"]
    trail = origin.block_status(BlockStatusRequest(vcs(3001, 3050)))
    assert [(h.block.id.serial_start, h.block.id.serial_end, h.status) for h in trail] == [
        (3001, 3050, HoldingStatus.ACTIVE)
    ]
    assert [s.state for s in transfer.history] == [
        TransferState.PROPOSED,
        TransferState.CHECKED,
        TransferState.ROLLED_BACK,
    ]
    assert world.statuses("hkmo", "hk-seller", vcs(3001, 3050)) == {HoldingStatus.ACTIVE}


def test_a_completed_transfer_records_every_step_once(world: World) -> None:
    """Steps recorded in one transaction (proposed and checked; finalized and completed)
    are each in the history, in order, with one provenance event each."""
    world.seed("hkmo", "hk-seller", vcs_block(4001, 4010))
    transfer = world.bridge.submit(
        "every-step", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(4001, 4010),))
    )
    assert transfer.state is TransferState.COMPLETED, transfer.failure_reason
    assert [s.state for s in transfer.history] == [
        TransferState.PROPOSED,
        TransferState.CHECKED,
        TransferState.SOURCE_LOCKED,
        TransferState.DESTINATION_CREDITED,
        TransferState.SOURCE_FINALIZED,
        TransferState.COMPLETED,
    ]
    with world.sessions() as session:
        states = [
            json.loads(payload)["state"]
            for payload in session.execute(
                sa.select(LedgerEvent.payload)
                .where(
                    LedgerEvent.transfer_id == transfer.transfer_id,
                    LedgerEvent.kind == "transfer_state",
                )
                .order_by(LedgerEvent.idx)
            ).scalars()
        ]
    # PROPOSED is the transfer's creation, not a change of state: no event of its own.
    assert states == [s.state.value for s in transfer.history[1:]]
    assert world.violations() == []


def test_a_conflict_met_while_checking_new_transfers_leaves_them_proposed_for_the_rounds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New transfers are proposed and checked in one transaction; a conflict there (another
    gateway claimed the same units meanwhile) undoes it whole, and they are proposed
    alone and checked by the rounds, each once."""
    world.seed("hkmo", "hk-seller", vcs_block(5001, 5010))
    checked: list[str] = []
    check_in = bridge_module.Bridge._check_in

    def conflicting_once(
        self: bridge_module.Bridge, session: Any, transfer_id: str, payload: Any, now: Any
    ) -> None:
        checked.append(transfer_id)
        if len(checked) == 1:
            raise LedgerConflict("another gateway claimed these units meanwhile")
        check_in(self, session, transfer_id, payload, now)

    monkeypatch.setattr(bridge_module.Bridge, "_check_in", conflicting_once)
    results = world.bridge.submit_many(
        [
            (
                f"conflict-{i}",
                TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(5001 + i, 5001 + i),)),
            )
            for i in range(2)
        ]
    )

    assert [r.state for r in results if not isinstance(r, Exception)] == [
        TransferState.COMPLETED,
        TransferState.COMPLETED,
    ]
    assert len(checked) == 3  # the undone attempt, then each transfer once
    transfers, _ = world.bridge.list_transfers(None, 10)
    assert sorted(t.request_id for t in transfers) == ["conflict-0", "conflict-1"]
    for transfer in transfers:
        assert [s.state for s in transfer.history][:2] == [
            TransferState.PROPOSED,
            TransferState.CHECKED,
        ]
    assert world.violations() == []


def test_a_plan_that_names_no_locked_rows_still_finalizes_from_the_ledger(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finalizing takes the rows a transfer locked from its plan; a plan written before
    the plan named them (or rows changed since) falls back to looking them up."""
    world.seed("hkmo", "hk-seller", vcs_block(6001, 6100))
    monkeypatch.setattr(bridge_module, "_locked_rows", lambda plan: [])
    moved = world.bridge.submit(
        "old-plan",
        TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(6001, 6005), vcs(6011, 6015))),
    )
    assert moved.state is TransferState.COMPLETED, moved.failure_reason
    assert world.at_registry("verra", vcs(6001, 6100)) == [
        (6001, 6005, "venue-hkmo", "bridged"),
        (6006, 6010, "venue-hkmo", "active"),
        (6011, 6015, "venue-hkmo", "bridged"),
        (6016, 6100, "venue-hkmo", "active"),
    ]
    assert world.statuses("verra", "venue-hkmo", vcs(6001, 6005)) == {HoldingStatus.BRIDGED}
    assert world.violations() == []


def test_a_reply_built_from_the_settlement_equals_the_transfer_read_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer settled from proposal to end is answered from what its steps committed,
    without reading it back: the answer must be what a read gives, field for field, for
    every way a transfer ends; one left waiting is read back."""
    monkeypatch.setattr(bridge_module, "_PIPELINE_PART", 3)  # parts, as big batches run
    world.seed("hkmo", "hk-seller", vcs_block(5001, 5100))
    world.seed("gold-standard", "gs-dev", gs_block(1, 30))
    reads: list[str] = []
    read = world.bridge._get_many

    def counted_read(transfer_ids: Sequence[str]) -> dict[str, Transfer]:
        reads.extend(transfer_ids)
        return read(transfer_ids)

    monkeypatch.setattr(world.bridge, "_get_many", counted_read)
    completed = [
        (f"done-{i}", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(5001 + i, 5001 + i),)))
        for i in range(5)
    ]
    rejected = ("not-held", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(9001, 9002),)))
    rolled_back = (
        "refused",
        TransferInstruction(
            AccountRef("gold-standard", "gs-dev"), AccountRef("verra", "x"), (gs_block(1, 30).id,)
        ),
    )
    answers = world.bridge.submit_many([*completed, rejected, rolled_back])
    single = world.bridge.submit(
        "single", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(5050, 5051),))
    )
    world.take_down("national")
    waiting = world.bridge.submit(
        "waiting", TransferInstruction(HK_SELLER, NATIONAL_BUYER, (vcs(5060, 5061),))
    )

    assert reads == [waiting.transfer_id]  # the ended ones were not read back
    ended = [a for a in [*answers, single] if isinstance(a, Transfer)]
    assert sorted({a.state.value for a in ended}) == ["COMPLETED", "REJECTED", "ROLLED_BACK"]
    assert waiting.state is TransferState.SOURCE_LOCKED
    for answer in [*ended, waiting]:
        assert answer == world.bridge.get(answer.transfer_id)
    world.bring_up("national")
