"""Bad input to a secure gateway: refused by its field, whatever its size, changing nothing."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway.security.layout import TlsLayout
from registry_bridge.schema import LedgerEvent, TransferRecord
from tests.integration.security.conftest import (
    SecureGateway,
    row_counts,
    running_secure_gateway,
    venue_instruction,
)


@pytest.fixture
def gateway(pki: TlsLayout, database_url: str) -> Iterator[SecureGateway]:
    with running_secure_gateway(pki, database_url) as gateway:
        yield gateway


def test_a_signed_instruction_with_a_huge_bad_value_is_refused_by_its_field(
    gateway: SecureGateway,
) -> None:
    """The refusal repeated the whole value: past gRPC's trailer limit the operator got
    RESOURCE_EXHAUSTED, naming no field."""
    instruction = venue_instruction(
        model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
        0,
        10,
    )
    instruction.units[0].block.program = "V" * 20_000
    request = gateway_pb2.SubmitTransferRequest(request_id="huge-program", instruction=instruction)
    gateway.signer("exchange_operator").sign("SubmitTransfer", request)
    operator = gateway.stub(
        "exchange_operator", gateway.token("exchange_operator", accounts=["hkmo:hk-seller"])
    )
    before = row_counts(gateway, LedgerEvent, TransferRecord)
    with pytest.raises(grpc.RpcError) as refused:
        operator.SubmitTransfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    status = rpc_status.from_call(refused.value)
    assert status is not None and len(status.details) == 1
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["instruction.units[0].block"]
    assert row_counts(gateway, LedgerEvent, TransferRecord) == before
