"""Bearer tokens bound to a client certificate (RFC 8705 ``cnf.x5t#S256``).

Any certificate of the CA can carry any token: a token copied off one client works on
another's connection.  A bound token names its certificate's thumbprint, and the gateway
takes it only on a connection made with that certificate; a gateway may require it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2
from gateway.security.layout import TlsLayout
from gateway.security.tokens import certificate_thumbprint
from tests.integration.security.conftest import SecureGateway, running_secure_gateway

_LIST = gateway_pb2.ListRegistriesRequest()


def _thumbprint(pki: TlsLayout, role: str) -> str:
    return certificate_thumbprint(pki.client_cert(role).read_bytes())


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), str(caught.value.details())


@pytest.fixture
def gateway(pki: TlsLayout, tmp_path: Path) -> Iterator[SecureGateway]:
    with running_secure_gateway(pki, f"sqlite:///{tmp_path}/gateway.db") as gateway:
        yield gateway


def test_a_bound_token_works_on_its_own_certificates_connection(gateway: SecureGateway) -> None:
    token = gateway.token("auditor", certificate_thumbprint=_thumbprint(gateway.pki, "auditor"))
    assert gateway.stub("auditor", token).ListRegistries(_LIST, timeout=10).registries


def test_a_bound_token_on_another_certificates_connection_is_refused(
    gateway: SecureGateway,
) -> None:
    # The auditor's token, copied to a connection made with the issuer's certificate.
    token = gateway.token("auditor", certificate_thumbprint=_thumbprint(gateway.pki, "auditor"))
    code, details = _code(lambda: gateway.stub("issuer", token).ListRegistries(_LIST, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "bound to another client certificate" in details


def test_a_malformed_binding_is_refused_by_name(gateway: SecureGateway) -> None:
    token = gateway.token("auditor", certificate_thumbprint="not-a-thumbprint")
    code, details = _code(lambda: gateway.stub("auditor", token).ListRegistries(_LIST, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "x5t#S256" in details


def test_an_unbound_token_is_taken_unless_the_gateway_requires_binding(
    pki: TlsLayout, tmp_path: Path
) -> None:
    with running_secure_gateway(
        pki, f"sqlite:///{tmp_path}/bound.db", jwt_require_certificate_binding=True
    ) as gateway:
        unbound = gateway.token("auditor")
        code, details = _code(
            lambda: gateway.stub("auditor", unbound).ListRegistries(_LIST, timeout=10)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "requires" in details
        bound = gateway.token("auditor", certificate_thumbprint=_thumbprint(pki, "auditor"))
        assert gateway.stub("auditor", bound).ListRegistries(_LIST, timeout=10).registries
