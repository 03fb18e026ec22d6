"""Rules particular to one registry, over real gRPC: what the contract suite cannot share.

The Article 6.2 registry refuses the first transfer of an unauthorized ITMO and keeps a
write-once first-transfer record; the pilot registries surrender only units that count
towards their own compliance and name the beneficiary of a voluntary cancellation;
Guangdong answers applications with receipts it can give again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import date

import grpc
import pytest

from adapters._pb.registries.bri.v1 import bri_pb2, bri_pb2_grpc
from adapters._pb.registries.guangdong.v1 import guangdong_pb2, guangdong_pb2_grpc
from adapters._pb.registries.shenzhen.v1 import shenzhen_pb2, shenzhen_pb2_grpc
from adapters.bri.client import range_to_native as bri_range
from adapters.guangdong.client import range_to_native as gd_range
from adapters.shenzhen.client import numbers_to_native
from registry_bridge.errors import RegistryRejected
from registry_bridge.model import Authorization, BlockId, CorrespondingAdjustment, HoldingStatus
from registry_bridge.port import (
    CreditRequest,
    FinalizeDisposition,
    FinalizeRequest,
    IssueRequest,
    ListHoldingsRequest,
    LockRequest,
    RetireRequest,
    SurrenderRequest,
)
from tests.integration.adapters.conftest import (
    FOREIGN_BLOCK,
    OWN_BLOCK,
    Harness,
    later,
    start_harness,
)

ACCOUNT = "ACC-1"


def rejected(code: str) -> pytest.RaisesExc[RegistryRejected]:
    """Expect a rejection with the registry's own ``code``."""
    return pytest.raises(RegistryRejected, match=rf"\({code}\)")


@pytest.fixture
def bri() -> Iterator[Harness]:
    """The Article 6.2 registry's emulator and adapter."""
    started = start_harness("bri")
    yield started
    started.running.stop(grace=None)


@pytest.fixture(params=["shenzhen", "guangdong"])
def pilot(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Each pilot registry's emulator and adapter."""
    started = start_harness(str(request.param))
    yield started
    started.running.stop(grace=None)


@pytest.fixture
def guangdong() -> Iterator[Harness]:
    """The Guangdong registry's emulator and adapter."""
    started = start_harness("guangdong")
    yield started
    started.running.stop(grace=None)


# -- Article 6.2: authorization and first transfer ------------------------------------------


def test_first_transfer_of_an_unauthorized_itmo_is_refused(bri: Harness) -> None:
    unauthorized = dataclasses.replace(
        OWN_BLOCK["bri"](1, 100),
        authorization=None,
        corresponding_adjustment=CorrespondingAdjustment.NOT_APPLICABLE,
    )
    held = bri.adapter.issue(IssueRequest(bri.op(), ACCOUNT, unauthorized))
    lock = LockRequest("reserve-1", ACCOUNT, held.block.id, later(bri), "T1")
    with rejected("ITMO_NOT_AUTHORIZED"):
        bri.adapter.lock(lock)
    # The refusal is the registry's recorded answer, and the units did not move.
    with rejected("ITMO_NOT_AUTHORIZED"):
        bri.adapter.lock(lock)
    [still] = bri.adapter.list_holdings(ListHoldingsRequest(ACCOUNT))
    assert (still.block.id, still.status) == (held.block.id, HoldingStatus.ACTIVE)

    # An authorization with no authorized use authorizes nothing.
    no_uses = dataclasses.replace(
        OWN_BLOCK["bri"](201, 300),
        authorization=Authorization("LOA-KE-9", "KE", frozenset(), date(2025, 1, 1)),
    )
    held = bri.adapter.issue(IssueRequest(bri.op(), ACCOUNT, no_uses))
    with rejected("ITMO_NOT_AUTHORIZED"):
        bri.adapter.lock(LockRequest(bri.op(), ACCOUNT, held.block.id, later(bri), "T2"))


def test_issuance_must_be_consistent_with_the_authorization(bri: Harness) -> None:
    block = OWN_BLOCK["bri"](1, 100)
    foreign_letter = dataclasses.replace(
        block,
        authorization=Authorization("LOA-TH-1", "TH", frozenset({"ndc"}), date(2025, 1, 1)),
    )
    with rejected("AUTHORIZATION_HOST_MISMATCH"):
        bri.adapter.issue(IssueRequest(bri.op(), ACCOUNT, foreign_letter))
    adjusted_unauthorized = dataclasses.replace(
        block, authorization=None, corresponding_adjustment=CorrespondingAdjustment.APPLIED
    )
    with rejected("ADJUSTMENT_WITHOUT_AUTHORIZATION"):
        bri.adapter.issue(IssueRequest(bri.op(), ACCOUNT, adjusted_unauthorized))
    assert list(bri.adapter.list_holdings(ListHoldingsRequest())) == []


def _native_holdings(h: Harness, block_id: BlockId) -> list[bri_pb2.ItmoHolding]:
    with grpc.insecure_channel(h.running.target) as channel:
        stub = bri_pb2_grpc.ItmoRegistryStub(channel)
        answer = stub.GetHoldings(
            bri_pb2.GetHoldingsRequest(overlapping=bri_range(block_id)), timeout=5
        )
    return list(answer.holdings)


def test_the_first_transfer_is_recorded_once_and_kept(bri: Harness) -> None:
    held = bri.adapter.issue(IssueRequest(bri.op(), ACCOUNT, OWN_BLOCK["bri"](1, 100)))
    block_id = held.block.id
    bri.adapter.lock(LockRequest(bri.op(), ACCOUNT, block_id, later(bri), "T1"))
    bri.adapter.finalize(
        FinalizeRequest(
            "transfer-1", ACCOUNT, block_id, FinalizeDisposition.IMMOBILIZE, "T1", "shenzhen"
        )
    )
    [bridged] = _native_holdings(bri, block_id)
    assert bridged.status == bri_pb2.ITMO_STATUS_HELD_FOR_LINKED_REGISTRY
    first = bridged.first_transfer
    assert (first.transfer_id, first.acquiring_registry, first.action_id) == (
        "T1",
        "shenzhen",
        "transfer-1",
    )
    assert first.recorded_at == bri.clock().isoformat()

    # The mirror comes back, and the ITMOs are transferred again: the record stays the first.
    bri.adapter.credit(CreditRequest(bri.op(), "ACC-2", held.block, "shenzhen", "T9"))
    bri.adapter.lock(LockRequest(bri.op(), "ACC-2", block_id, later(bri), "T2"))
    bri.adapter.finalize(
        FinalizeRequest(bri.op(), "ACC-2", block_id, FinalizeDisposition.EXPORT, "T2", "hkmo")
    )
    [transferred] = _native_holdings(bri, block_id)
    assert transferred.status == bri_pb2.ITMO_STATUS_TRANSFERRED
    assert transferred.transfer_id == "T2"
    assert transferred.first_transfer == first


# -- pilot registries: compliance and voluntary cancellation -------------------------------


def test_a_pilot_surrenders_only_units_of_its_own_compliance(pilot: Harness) -> None:
    origin_registry, ccer = FOREIGN_BLOCK[pilot.registry_id]
    ccer_mirror = pilot.adapter.credit(
        CreditRequest(pilot.op(), ACCOUNT, ccer, origin_registry, "T1")
    )
    vcs = FOREIGN_BLOCK["national"][1]
    vcs_mirror = pilot.adapter.credit(CreditRequest(pilot.op(), ACCOUNT, vcs, "verra", "T2"))

    with rejected("NOT_ELIGIBLE_FOR_COMPLIANCE"):
        pilot.adapter.surrender(
            SurrenderRequest(pilot.op(), ACCOUNT, vcs_mirror.block.id, "E-9", 2025)
        )
    surrendered = pilot.adapter.surrender(
        SurrenderRequest(pilot.op(), ACCOUNT, ccer_mirror.block.id, "E-9", 2025)
    )
    assert surrendered.status is HoldingStatus.SURRENDERED
    assert surrendered.mirror_of == ccer.id


def test_a_pilot_names_the_beneficiary_of_a_voluntary_cancellation(pilot: Harness) -> None:
    held = pilot.adapter.issue(IssueRequest(pilot.op(), ACCOUNT, pilot.block(1, 100)))
    with rejected("BENEFICIARY_REQUIRED"):
        pilot.adapter.retire(RetireRequest(pilot.op(), ACCOUNT, held.block.id, "", "neutrality"))
    retired = pilot.adapter.retire(
        RetireRequest(pilot.op(), ACCOUNT, held.block.id, "Acme", "neutrality")
    )
    assert retired.status is HoldingStatus.RETIRED


def test_shenzhen_tells_voluntary_from_administrative_cancellation() -> None:
    h = start_harness("shenzhen")
    try:
        held = h.adapter.issue(IssueRequest(h.op(), ACCOUNT, h.block(1, 100)))
        h.adapter.retire(RetireRequest(h.op(), ACCOUNT, sub(held.block.id, 1, 10), "A", ""))
        with grpc.insecure_channel(h.running.target) as channel:
            stub = shenzhen_pb2_grpc.ShenzhenRegistryStub(channel)
            stub.Cancel(
                shenzhen_pb2.CancelRequest(
                    business_serial_no="cancel-admin",
                    account_no=ACCOUNT,
                    numbers=numbers_to_native(sub(held.block.id, 91, 100)),
                    kind=shenzhen_pb2.CANCELLATION_KIND_ADMINISTRATIVE,
                    statement="issued in error",
                ),
                timeout=5,
            )
            lots = stub.QueryLots(shenzhen_pb2.QueryLotsRequest(account_no=ACCOUNT), timeout=5)
        states = {(lot.info.numbers.number_from, lot.state, lot.statement) for lot in lots.lots}
        assert states == {
            (1, shenzhen_pb2.LOT_STATE_VOLUNTARILY_CANCELLED, ""),
            (11, shenzhen_pb2.LOT_STATE_AVAILABLE, ""),
            (91, shenzhen_pb2.LOT_STATE_CANCELLED, "issued in error"),
        }
    finally:
        h.running.stop(grace=None)


def sub(block_id: BlockId, start: int, end: int) -> BlockId:
    """A sub-range of ``block_id``."""
    return BlockId(block_id.program, block_id.serial_series, start, end)


# -- Guangdong: receipts -------------------------------------------------------------------


def test_guangdong_answers_receipts_and_gives_them_again(guangdong: Harness) -> None:
    block = guangdong.block(1, 100)
    with grpc.insecure_channel(guangdong.running.target) as channel:
        stub = guangdong_pb2_grpc.GuangdongRegistryStub(channel)
        issue = guangdong_pb2.IssueApplication(
            application_no="GD-1",
            holder_code=ACCOUNT,
            batch=guangdong_pb2.Batch(
                range=gd_range(block.id),
                project_code=block.project_id,
                country="CN",
                certified_from="2024-01-01",
                certified_to="2024-12-31",
            ),
        )
        approved = stub.Issue(issue, timeout=5)
        assert approved.outcome == guangdong_pb2.OUTCOME_APPROVED
        assert approved.batch.status == guangdong_pb2.BATCH_STATUS_NORMAL
        assert approved.decided_at == guangdong.clock().isoformat()

        clash = guangdong_pb2.IssueApplication(
            application_no="GD-2", holder_code="ACC-2", batch=issue.batch
        )
        refused = stub.Issue(clash, timeout=5)
        assert (refused.outcome, refused.refusal_code) == (
            guangdong_pb2.OUTCOME_REFUSED,
            "DUPLICATE_ISSUANCE",
        )
        assert not refused.HasField("batch")

        assert stub.GetReceipt(guangdong_pb2.GetReceiptRequest(application_no="GD-1")) == approved
        assert stub.GetReceipt(guangdong_pb2.GetReceiptRequest(application_no="GD-2")) == refused
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetReceipt(guangdong_pb2.GetReceiptRequest(application_no="GD-404"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
