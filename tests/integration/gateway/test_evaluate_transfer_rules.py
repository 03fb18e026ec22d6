"""EvaluateTransfer returns the rules' decision; a denied transfer ends REJECTED with it.

The live gateway wires Verra, the Hong Kong venue and Shenzhen: VCS units held at the venue
may be held in Shenzhen, but not moved there for compliance (Shenzhen accepts SZA, CCER and
its carbon-inclusive reductions). A transfer for compliance is not the surrender, so the
Shenzhen offset limit (which needs the entity's year) is left to the surrender.
"""

from __future__ import annotations

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from registry_bridge.model import HoldingStatus
from registry_bridge.port import BlockStatusRequest
from tests.integration.gateway.conftest import VERRA_SERIAL, LinkedRegistries, LiveGateway

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start


def _instruction(use: str) -> model_pb2.TransferInstruction:
    return model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
        units=[
            model_pb2.UnitSelector(
                block=model_pb2.BlockId(program="VCS", serial_start=START, serial_end=START + 9)
            )
        ],
        intended_use=use,
    )


def test_evaluate_returns_the_decision_with_rule_id_message_source_and_blocks(
    live_gateway: LiveGateway,
) -> None:
    allowed = live_gateway.stub.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(instruction=_instruction("holding")), timeout=30
    ).decision
    assert allowed.allowed, allowed.violations
    assert "shenzhen@2024-10-01" in allowed.pack_versions
    assert list(allowed.deferred_rules) == []  # a holding defers nothing

    denied = live_gateway.stub.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(instruction=_instruction("compliance")), timeout=30
    ).decision
    assert not denied.allowed
    # The offset limit needs the entity's compliance year: left to the surrender, said so.
    assert denied.deferred_rules and all(r.startswith("CR-SZ-") for r in denied.deferred_rules)
    (violation,) = denied.violations
    assert violation.rule_id == "CR-SZ-0001"
    assert "program VCS is not accepted for compliance" in violation.message
    assert violation.source.startswith("Shenzhen Govt Order No. 343")
    assert [(b.program, b.serial_start, b.serial_end) for b in violation.blocks] == [
        ("VCS", START, START + 9)
    ]


def test_a_denied_transfer_ends_rejected_with_the_same_decision_and_changes_nothing(
    live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    evaluated = live_gateway.stub.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(instruction=_instruction("compliance")), timeout=30
    ).decision
    transfer = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="vcs-for-compliance", instruction=_instruction("compliance")
        ),
        timeout=30,
    )
    assert transfer.state == model_pb2.TRANSFER_STATE_REJECTED
    assert {v.rule_id for v in transfer.decision.violations} == {"CR-SZ-0001"}
    assert transfer.decision == evaluated
    states = {h.status for h in registries.ports["verra"].block_status(BlockStatusRequest(ORIGIN))}
    assert states == {HoldingStatus.ACTIVE}
