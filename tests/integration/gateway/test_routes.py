"""Transfers to a registry that cannot hold the units at all are refused before anything
moves, as the routes the bridge does not take are, over real gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import CreditMode
from adapters.registry import REGISTRIES
from adapters.serials import parse_serial
from registry_bridge.model import HoldingStatus
from registry_bridge.port import BlockStatusRequest
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start


@pytest.fixture
def with_gold_standard(database_url: str) -> Iterator[tuple[LiveGateway, LinkedRegistries]]:
    with linked_registries(wired=("verra", "hkmo", "shenzhen", "gold-standard")) as linked:
        linked.seed_venue()
        with running_gateway(database_url, linked) as gateway:
            yield gateway, linked


def _vcs_to_gold_standard() -> model_pb2.TransferInstruction:
    return model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        destination=model_pb2.AccountRef(registry="gold-standard", account="gs-buyer"),
        units=[
            model_pb2.UnitSelector(
                block=model_pb2.BlockId(program="VCS", serial_start=START, serial_end=START + 9)
            )
        ],
    )


def test_units_a_destination_cannot_hold_are_refused_before_anything_is_locked(
    with_gold_standard: tuple[LiveGateway, LinkedRegistries],
) -> None:
    gateway, registries = with_gold_standard
    evaluated = gateway.stub.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(instruction=_vcs_to_gold_standard()), timeout=30
    )
    assert not evaluated.decision.allowed
    (violation,) = evaluated.decision.violations
    assert violation.rule_id == "CL-LEDGER-ROUTE"
    assert "gold-standard" in violation.message and "VCS" in violation.message

    transfer = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="vcs-to-gs", instruction=_vcs_to_gold_standard()
        ),
        timeout=30,
    )
    assert transfer.state == model_pb2.TRANSFER_STATE_REJECTED
    assert [s.state for s in transfer.history] == [
        model_pb2.TRANSFER_STATE_PROPOSED,
        model_pb2.TRANSFER_STATE_REJECTED,
    ]
    assert "gold-standard" in transfer.failure_reason and "VCS" in transfer.failure_reason
    # Never locked, at the venue or at Verra behind it.
    assert {
        h.status for h in registries.ports["hkmo"].block_status(BlockStatusRequest(ORIGIN))
    } == {HoldingStatus.ACTIVE}
    assert {
        h.status for h in registries.ports["verra"].block_status(BlockStatusRequest(ORIGIN))
    } == {HoldingStatus.ACTIVE}
    gold_standard = registries.emulators["gold-standard"].calls.snapshot()
    assert gold_standard["AcceptReturn"] == gold_standard["AcceptReturnBatch"] == 0


def test_the_catalog_says_what_each_registry_takes_in_as_its_emulator_does() -> None:
    """The gateway refuses by the catalog; each registry's emulator decides by its credit
    mode: the two must agree, or a route would be refused that works, or taken that fails."""
    for registry_id, entry in REGISTRIES.items():
        mode = entry.emulator().credit_mode
        if mode is CreditMode.MIRROR:
            assert entry.credited_programs is None, registry_id
        else:
            assert entry.credited_programs == frozenset(entry.programs), registry_id
