"""What one party learns of another's units, over a real secure gateway: nothing.

Who holds which units, and where they went, is each holder's own business (as its
transfers and uses are, see ``policy``): a unit's history is read by the auditor and the
regulator, and a refusal tells a caller that it does not hold the units, never who does.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import parse_serial
from gateway.security.layout import TlsLayout
from tests.integration.security.conftest import (
    VERRA_SERIAL,
    SecureGateway,
    running_secure_gateway,
    venue_instruction,
)

SELLER = model_pb2.AccountRef(registry="hkmo", account="hk-seller")
BUYER = model_pb2.AccountRef(registry="shenzhen", account="sz-buyer")
STRANGER = model_pb2.AccountRef(registry="hkmo", account="hk-stranger")
STRANGERS_BUYER = model_pb2.AccountRef(registry="shenzhen", account="sz-other")


@pytest.fixture
def gateway(pki: TlsLayout, database_url: str) -> Iterator[SecureGateway]:
    with running_secure_gateway(pki, database_url) as gateway:
        yield gateway


def _operator(
    gateway: SecureGateway, account: model_pb2.AccountRef
) -> gateway_pb2_grpc.LinkageGatewayStub:
    token = gateway.token("exchange_operator", accounts=[f"{account.registry}:{account.account}"])
    return gateway.stub("exchange_operator", token)


def _submit(
    gateway: SecureGateway, instruction: model_pb2.TransferInstruction, request_id: str
) -> model_pb2.Transfer:
    request = gateway_pb2.SubmitTransferRequest(request_id=request_id, instruction=instruction)
    gateway.signer("exchange_operator").sign("SubmitTransfer", request)
    transfer: model_pb2.Transfer = _operator(gateway, instruction.source).SubmitTransfer(
        request, timeout=60
    )
    return transfer


def test_a_units_history_is_traced_by_the_auditor_and_the_regulator_only(
    gateway: SecureGateway,
) -> None:
    """A trace shows every holder of the units and every move between them: the
    transfers' parties, which ListTransfers keeps to each party, would be anyone's."""
    sold = _submit(gateway, venue_instruction(SELLER, BUYER, 0, 100), "sale-1")
    assert sold.state == model_pb2.TRANSFER_STATE_COMPLETED
    by_serial = gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL)
    mirror = model_pb2.BlockId(
        program="VCS", serial_series="shenzhen-mirror", serial_start=1, serial_end=100
    )
    by_block = gateway_pb2.TraceUnitsRequest(block=mirror)
    callers = {
        "seller": ("exchange_operator", ["hkmo:hk-seller"]),
        "buyer": ("covered_entity", ["shenzhen:sz-buyer"]),
        "another member": ("exchange_operator", ["hkmo:hk-stranger"]),
        "an issuer": ("issuer", ["verra:hk-seller"]),
        "a registry": ("registry", []),
        "the auditor": ("auditor", []),
        "the regulator": ("regulator", []),
    }
    traced: dict[str, bool] = {}
    for who, (role, accounts) in callers.items():
        stub = gateway.stub(role, gateway.token(role, accounts=accounts))
        answers = []
        for request in (by_serial, by_block):
            try:
                page = stub.TraceUnits(request, timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, (who, exc)
                assert "TraceUnits needs one of the roles auditor, regulator" in str(exc.details())
                answers.append(False)
            else:
                assert b"hk-seller" in b"".join(e.event.leaf_data for e in page.events)
                answers.append(True)
        assert answers[0] == answers[1], who
        traced[who] = answers[0]
    assert traced == {
        "seller": False,
        "buyer": False,
        "another member": False,
        "an issuer": False,
        "a registry": False,
        "the auditor": True,
        "the regulator": True,
    }


def test_a_refusal_says_the_units_are_not_the_callers_and_never_whose_they_are(
    gateway: SecureGateway,
) -> None:
    """Another member asking to move units it does not hold, or dry-running it, learns
    that it does not hold them: not which account does, nor where their mirror went."""
    sold = _submit(gateway, venue_instruction(SELLER, BUYER, 0, 100), "sale-1")
    assert sold.state == model_pb2.TRANSFER_STATE_COMPLETED
    stranger = _operator(gateway, STRANGER)
    answers: list[str] = []
    # The first hundred units now have a mirror at the buyer's; the next hundred are the
    # seller's still.
    for request_id, first in (("sold", 0), ("unsold", 100)):
        instruction = venue_instruction(STRANGER, STRANGERS_BUYER, first, 100)
        refused = _submit(gateway, instruction, request_id)
        assert refused.state == model_pb2.TRANSFER_STATE_REJECTED, refused
        assert [v.rule_id for v in refused.decision.violations] == ["CL-LEDGER-HOLDER"]
        answers.append(str(refused))
        dry_run = stranger.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=instruction),
            timeout=30,
        )
        assert not dry_run.decision.allowed
        assert [v.rule_id for v in dry_run.decision.violations] == ["CL-LEDGER-HOLDER"]
        answers.append(str(dry_run))
    seller_holds = parse_serial("verra", VERRA_SERIAL).id.serial_end
    for answer in answers:
        assert "hk-seller" not in answer and "sz-buyer" not in answer, answer
        # Nor how many units the holder has: only the units asked for are named.
        assert str(seller_holds) not in answer, answer
