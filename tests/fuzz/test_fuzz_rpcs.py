"""Every RPC fuzzed with generated messages: no INTERNAL, no crash, refusals change nothing.

Two gateways: one in development mode (``insecure``, on SQLite and on PostgreSQL), so
hostile messages reach the request validation of every RPC, and one with security on,
whose refusals must come from the security layer before any handler runs. After the run
the ledger invariants (``registry_bridge.invariants.check_ledger``) hold on both. Bounded
well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.security.layout import TlsLayout
from gateway.server import GatewayServer
from registry_bridge.invariants import check_ledger
from registry_bridge.schema import LedgerEvent
from tests.conftest import create_postgres_database, drop_postgres_database, require_postgres
from tests.fuzz.strategies import messages
from tests.integration.security.conftest import (  # noqa: F401 -- pki is a fixture
    SecureGateway,
    pki,
    running_secure_gateway,
)
from tests.loopback import ANY_PORT, HOST

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"]
METHODS = [m for m in SERVICE.methods]
# Codes a hostile request may get; INTERNAL and UNKNOWN are bugs.
_NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def _call(channel: grpc.Channel, method: str, request: Message, stream: bool) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method}"
    serializer = type(request).SerializeToString
    try:
        if stream:
            call = channel.unary_stream(path, request_serializer=serializer)
            for _ in call(request, timeout=5):
                pass
        else:
            channel.unary_unary(path, request_serializer=serializer)(request, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _events(server: GatewayServer) -> int:
    with server.engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(LedgerEvent)
        return int(connection.execute(count).scalar_one())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def dev_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayServer, str]]:
    # PostgreSQL too: it refuses text SQLite takes (a NUL), so a string that reaches a
    # query unchecked answers INTERNAL only there.
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'gateway.db'}"
    else:
        require_postgres()
        database_url = create_postgres_database()
    emulators = {
        r: start_emulator(REGISTRIES[r].emulator(), listen=ANY_PORT)
        for r in ("verra", "hkmo", "shenzhen")
    }
    server = GatewayServer(
        GatewayConfig(
            listen=ANY_PORT,
            database_url=database_url,
            registries=tuple(RegistryEndpoint(r, e.target) for r, e in emulators.items()),
            insecure=True,
            max_batch_size=3,
            recovery_interval_seconds=3600,
        )
    )
    port = server.start()
    try:
        yield server, f"{HOST}:{port}"
    finally:
        server.stop(grace_seconds=0)
        for emulator in emulators.values():
            emulator.stop()
        if request.param == "postgresql":
            drop_postgres_database(database_url)


def _check(server: GatewayServer, target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with Session(server.engine) as session:
        assert check_ledger(session) == []


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_rpc_survives_hostile_messages(
    dev_gateway: tuple[GatewayServer, str], method: MethodDescriptor
) -> None:
    server, target = dev_gateway
    stream = bool(method.server_streaming)
    name = method.name
    channel = grpc.insecure_channel(target)

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(request=messages(method.input_type))
    def fuzz(request: Message) -> None:
        before = _events(server)
        code = _call(channel, name, request, stream)
        assert code not in _NEVER, f"{name} answered {code.name} to {request}"
        if code != grpc.StatusCode.OK:
            assert _events(server) == before, f"{name} refused ({code.name}) yet changed state"

    try:
        fuzz()
    finally:
        channel.close()
    _check(server, target)


def test_the_secure_gateway_refuses_hostile_callers_before_any_handler(
    pki: TlsLayout,  # noqa: F811 -- the imported fixture
    tmp_path: Path,
) -> None:
    with running_secure_gateway(pki, f"sqlite:///{tmp_path}/gateway.db") as gateway:
        _fuzz_secure(gateway)


def _fuzz_secure(gateway: SecureGateway) -> None:
    tokens = st.one_of(
        st.none(),
        # Printable ASCII: the client library itself refuses other header bytes.
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=300),
        st.sampled_from(
            [gateway.token("auditor"), gateway.token("exchange_operator", accounts=["x:y"])]
        ),
    )
    before = _events(gateway.server)

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        method=st.sampled_from(METHODS),
        data=st.data(),
        token=tokens,
    )
    def fuzz(method: MethodDescriptor, data: st.DataObject, token: str | None) -> None:
        request = data.draw(messages(method.input_type, depth=2))
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        name = method.name
        path = f"/{SERVICE.full_name}/{name}"
        with gateway.channel("auditor", None) as channel:
            try:
                if method.server_streaming:
                    call = channel.unary_stream(
                        path, request_serializer=type(request).SerializeToString
                    )
                    for _ in call(request, timeout=5, metadata=metadata):
                        pass
                else:
                    channel.unary_unary(path, request_serializer=type(request).SerializeToString)(
                        request, timeout=10, metadata=metadata
                    )
            except grpc.RpcError as exc:
                assert exc.code() not in _NEVER, f"{name} answered {exc.code().name}"

    fuzz()
    # Nobody in the hostile set held a signing key, so nothing may have moved.
    assert _events(gateway.server) == before
    with Session(gateway.server.engine) as session:
        assert check_ledger(session) == []
