"""Which gateway deployment a signed instruction is for, over real secure gateways.

Each deployment keeps the nonces of its own database, so an instruction signed for one
would be carried out again by another deployment that trusts the same party's key, within
the timestamp window.  The party signs for the deployment its token is for, the gateway's
``jwt_audience`` (``InstructionSignature.audience``), and a gateway refuses an instruction
for another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import format_serial, parse_serial
from gateway.cli import main
from gateway.security.client import InstructionSigner
from gateway.security.layout import TlsLayout
from registry_bridge.schema import LedgerEvent, UnitUseRecord
from tests.integration.security.conftest import (
    VERRA_SERIAL,
    SecureGateway,
    row_counts,
    running_secure_gateway,
    venue_units,
)

SHENZHEN_DESK, HONG_KONG_DESK = "carbonlink-shenzhen", "carbonlink-hong-kong"
ACCOUNTS = ("hkmo:hk-seller",)


@pytest.fixture
def shenzhen_desk(pki: TlsLayout, tmp_path: Path) -> Iterator[SecureGateway]:
    """A deployment trusting the session PKI's keys, on a database of its own."""
    url = f"sqlite:///{tmp_path}/shenzhen.db"
    with running_secure_gateway(pki, url, jwt_audience=SHENZHEN_DESK) as gateway:
        yield gateway


@pytest.fixture
def hong_kong_desk(pki: TlsLayout, database_url: str) -> Iterator[SecureGateway]:
    """Another deployment trusting the same keys."""
    with running_secure_gateway(pki, database_url, jwt_audience=HONG_KONG_DESK) as gateway:
        yield gateway


def _retire_request() -> gateway_pb2.RetireRequest:
    """The venue seller's first ten Verra units, retired."""
    return gateway_pb2.RetireRequest(
        request_id="retire-1",
        account=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        units=venue_units(0, 10),
        beneficiary="Acme Ltd",
    )


def _operator(gateway: SecureGateway, audience: str) -> gateway_pb2_grpc.LinkageGatewayStub:
    token = gateway.token("exchange_operator", accounts=ACCOUNTS, audience=audience)
    return gateway.stub("exchange_operator", token)


def _signer(gateway: SecureGateway, audience: str) -> InstructionSigner:
    return InstructionSigner.from_file(gateway.pki.instruction_key("exchange_operator"), audience)


def test_an_instruction_carried_out_by_one_deployment_is_refused_by_another(
    shenzhen_desk: SecureGateway, hong_kong_desk: SecureGateway
) -> None:
    request = _retire_request()
    _signer(shenzhen_desk, SHENZHEN_DESK).sign("Retire", request)
    retired = _operator(shenzhen_desk, SHENZHEN_DESK).Retire(request, timeout=60)
    assert retired.state == model_pb2.USE_STATE_COMPLETED

    # The same signed request, replayed within the window to the other deployment.
    hong_kong = _operator(hong_kong_desk, HONG_KONG_DESK)
    before = row_counts(hong_kong_desk, UnitUseRecord, LedgerEvent)
    with pytest.raises(grpc.RpcError) as refused:
        hong_kong.Retire(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"for {SHENZHEN_DESK!r}" in str(refused.value.details())
    assert row_counts(hong_kong_desk, UnitUseRecord, LedgerEvent) == before

    # Signed for it, the other deployment carries it out.
    _signer(hong_kong_desk, HONG_KONG_DESK).sign("Retire", request)
    assert hong_kong.Retire(request, timeout=60).state == model_pb2.USE_STATE_COMPLETED


def test_an_instruction_naming_no_deployment_is_refused_by_its_field(
    hong_kong_desk: SecureGateway,
) -> None:
    request = _retire_request()
    _signer(hong_kong_desk, "").sign("Retire", request)
    before = row_counts(hong_kong_desk, UnitUseRecord, LedgerEvent)

    with pytest.raises(grpc.RpcError) as refused:
        _operator(hong_kong_desk, HONG_KONG_DESK).Retire(request, timeout=30)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature.audience" in str(refused.value.details())
    assert row_counts(hong_kong_desk, UnitUseRecord, LedgerEvent) == before


def test_the_cli_signs_for_the_deployment_its_token_is_for(
    hong_kong_desk: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token = hong_kong_desk.token("exchange_operator", accounts=ACCOUNTS, audience=HONG_KONG_DESK)
    token_file.write_text(token, encoding="utf-8")
    origin = parse_serial("verra", VERRA_SERIAL)
    serial = format_serial(
        "verra", origin.with_range(origin.id.serial_start, origin.id.serial_start + 9)
    )
    pki = hong_kong_desk.pki
    argv = ["transfer", "submit", "--from", "hkmo:hk-seller", "--to", "shenzhen:b"]
    argv += ["--serial", serial, "--target", hong_kong_desk.target, "--tls-dir", str(pki.root)]
    argv += ["--token-file", str(token_file)]
    argv += ["--signing-key", str(pki.instruction_key("exchange_operator"))]

    assert main(argv) == 0, capsys.readouterr().err
    assert " COMPLETED\n" in capsys.readouterr().out

    # A token that names no deployment leaves nothing to sign for.
    token_file.write_text("not-a-jwt", encoding="utf-8")
    assert main(argv) == 2
    assert "cannot tell the deployment to sign for" in capsys.readouterr().err
