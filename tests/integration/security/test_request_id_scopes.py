"""Request ids are scoped per caller, over a real secure gateway (mutual TLS, tokens, signatures).

Two parties may both act on one account: an exchange operator settling for a member, and
the member itself (here a covered entity), each with its own token subject and signing
key. The same request id from each names two requests; a party replaying the other's id
and body gets its own answer, never the other's; a party repeating its own id is answered
as before (the first answer for the same body, ALREADY_EXISTS for another).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import parse_serial
from gateway.security.layout import TlsLayout
from registry_bridge.schema import TransferRecord
from tests.integration.gateway.test_listing_api import LANDFILL
from tests.integration.security.conftest import (
    VERRA_SERIAL,
    SecureGateway,
    running_secure_gateway,
    vcs_serial,
)

SELLER = "hkmo:hk-seller"
OPERATOR = "exchange_operator"
MEMBER = "covered_entity"
"""Both move units out of SELLER; each is a caller of its own (its token subject)."""


@pytest.fixture
def gateway(pki: TlsLayout, database_url: str) -> Iterator[SecureGateway]:
    with running_secure_gateway(pki, database_url) as gateway:
        yield gateway


def _party(gateway: SecureGateway, role: str) -> gateway_pb2_grpc.LinkageGatewayStub:
    return gateway.stub(role, gateway.token(role, accounts=[SELLER]))


def _units(first: int, count: int) -> model_pb2.UnitSelector:
    origin = parse_serial("verra", VERRA_SERIAL).id
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=origin.program.value,
            serial_start=origin.serial_start + first,
            serial_end=origin.serial_start + first + count - 1,
        )
    )


def _transfer(
    gateway: SecureGateway, role: str, request_id: str, first: int = 0
) -> gateway_pb2.SubmitTransferRequest:
    """A transfer of 10 units from SELLER, from the ``first``-th on, signed by ``role``."""
    request = gateway_pb2.SubmitTransferRequest(
        request_id=request_id,
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
            destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
            units=[_units(first, 10)],
        ),
    )
    gateway.signer(role).sign("SubmitTransfer", request)
    return request


def _retirement(
    gateway: SecureGateway, role: str, request_id: str, first: int
) -> gateway_pb2.RetireRequest:
    request = gateway_pb2.RetireRequest(
        request_id=request_id,
        account=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        units=[_units(first, 10)],
        beneficiary="Harbour Ferries Ltd",
    )
    gateway.signer(role).sign("Retire", request)
    return request


def _transfer_rows(gateway: SecureGateway) -> int:
    with gateway.server.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(TransferRecord)).scalar_one()
        )


def test_two_callers_use_the_same_request_id_for_two_transfers(gateway: SecureGateway) -> None:
    operator, member = _party(gateway, OPERATOR), _party(gateway, MEMBER)
    first = operator.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1", 0), timeout=60)
    second = member.SubmitTransfer(_transfer(gateway, MEMBER, "trade-1", 10), timeout=60)
    assert first.state == second.state == model_pb2.TRANSFER_STATE_COMPLETED
    assert first.name != second.name
    assert first.request_id == second.request_id == "trade-1"
    assert _transfer_rows(gateway) == 2


def test_a_replay_of_another_callers_request_id_and_body_gets_its_own_answer(
    gateway: SecureGateway,
) -> None:
    """Not the other caller's transfer: a request of its own, decided on its own, which the
    ledger refuses here since the units it names have already left the account."""
    operator, member = _party(gateway, OPERATOR), _party(gateway, MEMBER)
    theirs = operator.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1"), timeout=60)
    assert theirs.state == model_pb2.TRANSFER_STATE_COMPLETED
    mine = member.SubmitTransfer(_transfer(gateway, MEMBER, "trade-1"), timeout=60)
    assert mine.name != theirs.name
    assert mine.state == model_pb2.TRANSFER_STATE_REJECTED
    assert _transfer_rows(gateway) == 2
    # The member's refusal left the operator's transfer as it was.
    auditor = gateway.stub("auditor", gateway.token("auditor"))
    assert auditor.GetTransfer(gateway_pb2.GetTransferRequest(name=theirs.name)) == theirs


def test_a_caller_repeating_its_own_request_id_is_answered_as_before(
    gateway: SecureGateway,
) -> None:
    operator, member = _party(gateway, OPERATOR), _party(gateway, MEMBER)
    first = operator.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1"), timeout=60)
    member.SubmitTransfer(_transfer(gateway, MEMBER, "trade-1", 10), timeout=60)
    again = operator.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1"), timeout=60)
    assert again == first
    with pytest.raises(grpc.RpcError) as caught:
        operator.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1", 20), timeout=60)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'trade-1' was already used" in (caught.value.details() or "")
    assert _transfer_rows(gateway) == 2


def test_batch_items_are_scoped_to_the_batch_caller(gateway: SecureGateway) -> None:
    operator, member = _party(gateway, OPERATOR), _party(gateway, MEMBER)
    single = operator.SubmitTransfer(_transfer(gateway, OPERATOR, "item-1", 0), timeout=60)
    item = _transfer(gateway, MEMBER, "item-1", 10)
    item.ClearField("signature")
    batch = gateway_pb2.SubmitTransfersRequest(request_id="batch-1", transfers=[item])
    gateway.signer(MEMBER).sign("SubmitTransfers", batch)
    (result,) = member.SubmitTransfers(batch, timeout=60).results
    assert result.transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
    assert result.transfer.name != single.name


def test_two_callers_use_the_same_request_id_for_two_retirements(gateway: SecureGateway) -> None:
    operator, member = _party(gateway, OPERATOR), _party(gateway, MEMBER)
    first = operator.Retire(_retirement(gateway, OPERATOR, "retire-1", 0), timeout=60)
    second = member.Retire(_retirement(gateway, MEMBER, "retire-1", 10), timeout=60)
    assert first.name != second.name
    # The same caller again: its own first answer, or a refusal for another body.
    assert member.Retire(_retirement(gateway, MEMBER, "retire-1", 10), timeout=60) == second
    with pytest.raises(grpc.RpcError) as caught:
        member.Retire(_retirement(gateway, MEMBER, "retire-1", 20), timeout=60)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_an_issuer_replaying_another_issuers_listing_gets_its_own_answer(
    gateway: SecureGateway,
) -> None:
    """Answers kept by request id alone (listings, entity records) are scoped too."""
    listing = gateway_pb2.ListProjectRequest(
        request_id="listing-1", project=LANDFILL, jurisdiction="shenzhen", as_of="2026-11-26"
    )
    # Each desk lists a project whose units its Verra account holds.
    gateway.issue("verra", "verra-desk", vcs_serial(LANDFILL.project_id, 500_000_001))
    gateway.issue("verra", "other-desk", vcs_serial("5957", 600_000_001))
    verra = gateway.stub(
        "issuer", gateway.token("issuer", subject="verra-desk", accounts=["verra:verra-desk"])
    )
    other = gateway.stub(
        "issuer",
        gateway.token("issuer", subject="gold-standard-desk", accounts=["verra:other-desk"]),
    )
    theirs = verra.ListProject(listing, timeout=30)
    # Their own project (a project is re-listed only by whoever listed it), same request id.
    own = gateway_pb2.ListProjectRequest()
    own.CopyFrom(listing)
    own.project.project_id = "5957"
    mine = other.ListProject(own, timeout=30)
    assert theirs.listed and mine.listed
    assert mine.name != theirs.name
    assert other.ListProject(own, timeout=30) == mine
    changed = gateway_pb2.ListProjectRequest()
    changed.CopyFrom(own)
    changed.project.project_id = "5956"
    with pytest.raises(grpc.RpcError) as caught:
        other.ListProject(changed, timeout=30)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_the_caller_is_the_token_subject_not_the_role(pki: TlsLayout, tmp_path: Path) -> None:
    """Two tokens of one subject are one caller, whatever else they name."""
    with running_secure_gateway(pki, f"sqlite:///{tmp_path}/gateway.db") as gateway:
        narrow = gateway.stub(OPERATOR, gateway.token(OPERATOR, accounts=[SELLER]))
        wide = gateway.stub(
            OPERATOR, gateway.token(OPERATOR, accounts=[SELLER, "hkmo:someone-else"])
        )
        first = narrow.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1"), timeout=60)
        assert wide.SubmitTransfer(_transfer(gateway, OPERATOR, "trade-1"), timeout=60) == first


@pytest.mark.parametrize("subject", ["desk\x00two", "desk\ntwo"], ids=["nul", "newline"])
def test_a_subject_with_control_characters_is_refused_as_unauthenticated(
    gateway: SecureGateway, subject: str
) -> None:
    """The subject is the caller whose request ids are stored, and a log key: one with a
    NUL was refused by PostgreSQL's text columns (INTERNAL), one with a newline split a
    log line."""
    issuer = gateway.stub("issuer", gateway.token("issuer", subject=subject))
    listing = gateway_pb2.ListProjectRequest(
        request_id="listing-1", project=LANDFILL, jurisdiction="shenzhen", as_of="2026-11-26"
    )
    with pytest.raises(grpc.RpcError) as caught:
        issuer.ListProject(listing, timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "subject" in (caught.value.details() or "")
