"""The gateway over real gRPC sockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import gc
import io
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from adapters.retry import RetryingRegistry
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.logging_setup import configure_logging
from gateway.server import SERVICE_NAME, YOUNG_COLLECTION_THRESHOLD, GatewayServer
from registry_bridge import db
from tests.loopback import ANY_PORT, HOST

REQUIRED_RPCS = {
    "ListRegistries",
    "ParseSerial",
    "ListProject",
    "GetListing",
    "EvaluateTransfer",
    "SubmitTransfer",
    "SubmitTransfers",
    "GetTransfer",
    "ListTransfers",
    "WatchTransfer",
    "Retire",
    "Surrender",
    "GetUse",
    "ListUses",
    "ResolveUse",
    "PlanMigration",
    "ExecuteMigration",
    "AbandonMigration",
    "TraceUnits",
    "GetCheckpoint",
    "GetConsistencyProof",
    "Reconcile",
}


@pytest.fixture
def registry_with_health() -> Iterator[str]:
    """A real gRPC server answering the standard health service, standing in for a registry."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(ANY_PORT)
    server.start()
    yield f"{HOST}:{port}"
    server.stop(0)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    sink = io.StringIO()
    configure_logging("debug", "json", stream=sink)
    yield sink
    configure_logging("info", "json")


@pytest.fixture
def default_collector() -> Iterator[None]:
    """Python's default collector thresholds until the test ends, then the earlier ones."""
    earlier = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*earlier)


@pytest.fixture
def gateway(database_url: str, registry_with_health: str) -> Iterator[grpc.Channel]:
    config = GatewayConfig(
        listen=ANY_PORT,
        database_url=database_url,
        registries=(
            RegistryEndpoint("verra", registry_with_health),
            RegistryEndpoint("shenzhen", "127.0.0.1:1"),
        ),
        # The start-up import retries Shenzhen, which nothing answers, until its attempts
        # are spent: short waits keep that to a fraction of a second instead of 1.5 s.
        registry_retry_initial_wait_seconds=0.01,
        registry_retry_max_wait_seconds=0.02,
        insecure=True,
    )
    server = GatewayServer(config)
    port = server.start()
    channel = grpc.insecure_channel(f"{HOST}:{port}")
    yield channel
    channel.close()
    server.stop(grace_seconds=0)


def test_health_is_serving(gateway: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(gateway)
    for service in ("", SERVICE_NAME):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_started_gateway_runs_the_cycle_collector_less_often(
    default_collector: None, gateway: grpc.Channel
) -> None:
    # Default thresholds ran a full collection once or twice per batch of 1,000 transfers.
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, 10, 10)
    assert YOUNG_COLLECTION_THRESHOLD > 700


def test_migrations_ran(gateway: grpc.Channel, database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        assert db.current_revision(engine) is not None
    finally:
        engine.dispose()


def _reflect(
    channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))


def test_reflection_lists_the_gateway_and_its_rpcs(gateway: grpc.Channel) -> None:
    listed = _reflect(gateway, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    reply = _reflect(
        gateway, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    )
    methods: set[str] = set()
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for service in file.service:
            if f"{file.package}.{service.name}" == SERVICE_NAME:
                methods = {m.name for m in service.method}
    assert methods >= REQUIRED_RPCS


def test_list_registries_pages_and_probes(gateway: grpc.Channel) -> None:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway)
    first = stub.ListRegistries(gateway_pb2.ListRegistriesRequest(page_size=1), timeout=5)
    assert [r.name for r in first.registries] == ["registries/shenzhen"]
    assert first.registries[0].reachable is False
    assert first.next_page_token
    second = stub.ListRegistries(
        gateway_pb2.ListRegistriesRequest(page_size=1, page_token=first.next_page_token),
        timeout=5,
    )
    assert [r.name for r in second.registries] == ["registries/verra"]
    assert second.registries[0].reachable is True
    assert second.next_page_token == ""


def test_bad_argument_gets_field_violation(gateway: grpc.Channel) -> None:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListRegistries(gateway_pb2.ListRegistriesRequest(page_token="garbage!"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "page_token"


def test_the_provenance_log_answers_a_signed_checkpoint(gateway: grpc.Channel) -> None:
    from registry_bridge.signed_note import open_checkpoint, parse_verifier_key

    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway)
    checkpoint = stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=5)
    opened = open_checkpoint(checkpoint.signed_note, parse_verifier_key(checkpoint.verifier_key))
    assert (opened.size, opened.root) == (checkpoint.tree_size, checkpoint.root_hash)


def test_request_id_is_echoed_and_logged(gateway: grpc.Channel, log_lines: io.StringIO) -> None:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListRegistries(
            gateway_pb2.ListRegistriesRequest(page_token="bad"),
            metadata=(("x-request-id", "req-42"),),
            timeout=5,
        )
    assert ("x-request-id", "req-42") in tuple(caught.value.initial_metadata())
    events = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    failed = [e for e in events if e["event"] == "rpc_failed"]
    assert failed and failed[-1]["request_id"] == "req-42"
    assert failed[-1]["method"] == f"/{SERVICE_NAME}/ListRegistries"


def test_unexpected_error_becomes_internal_with_one_full_log_line(log_lines: io.StringIO) -> None:
    from gateway.error_mapping import INTERNAL_MESSAGE, ErrorMappingInterceptor

    def explode(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise KeyError("secret internal detail")

    handler = grpc.method_handlers_generic_handler(
        "test.Exploding", {"Boom": grpc.unary_unary_rpc_method_handler(explode)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1), interceptors=[ErrorMappingInterceptor()]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(ANY_PORT)
    server.start()
    try:
        with (
            grpc.insecure_channel(f"{HOST}:{port}") as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            channel.unary_unary("/test.Exploding/Boom")(b"", timeout=5)
    finally:
        server.stop(0)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == INTERNAL_MESSAGE
    assert "secret internal detail" not in (caught.value.details() or "")
    errors = [
        json.loads(line)
        for line in log_lines.getvalue().splitlines()
        if '"rpc_internal_error"' in line
    ]
    assert len(errors) == 1
    assert "secret internal detail" in errors[0]["exception"]


def test_parse_serial_over_grpc(gateway: grpc.Channel) -> None:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway)
    serial = "GS1-1-KE-GS7495-16-2025-30645-608-30350"
    reply = stub.ParseSerial(
        gateway_pb2.ParseSerialRequest(registry="gold-standard", serial=serial), timeout=5
    )
    assert reply.block.id.program == "GS"
    assert reply.block.id.serial_series == "30645"
    assert (reply.block.id.serial_start, reply.block.id.serial_end) == (608, 30350)
    assert reply.block.quantity == 29743
    assert reply.block.native_serial == serial


def test_parse_serial_names_the_bad_segment(gateway: grpc.Channel) -> None:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ParseSerial(
            gateway_pb2.ParseSerialRequest(
                registry="verra",
                serial="9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31132019-0",
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "vintage_end" in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert "vintage_end" in bad_request.field_violations[0].field
    with pytest.raises(grpc.RpcError) as caught:
        stub.ParseSerial(gateway_pb2.ParseSerialRequest(registry="nowhere", serial="x"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_registry_retry_policy_is_the_configured_one(tmp_path: Path) -> None:
    config = GatewayConfig(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        registries=(RegistryEndpoint("verra", "127.0.0.1:1"),),
        registry_retry_attempts=7,
        registry_retry_initial_wait_seconds=0.5,
        registry_retry_max_wait_seconds=4.0,
        insecure=True,
    )
    server = GatewayServer(config)
    try:
        adapter = server.adapters["verra"]
        assert isinstance(adapter, RetryingRegistry)
        policy = adapter.policy
        assert (policy.attempts, policy.initial_wait_s, policy.max_wait_s) == (7, 0.5, 4.0)
    finally:
        server.engine.dispose()


def test_a_stopped_gateway_can_be_waited_for_until_its_background_pass_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stop`` leaves a recovery pass under way running in its thread; ``wait_background``
    waits for it to end (a test drops its database only then)."""
    config = GatewayConfig(
        listen=ANY_PORT,
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        insecure=True,
        recovery_interval_seconds=3600,
    )
    server = GatewayServer(config)
    in_pass, release = threading.Event(), threading.Event()
    resume = server.bridge.resume_unfinished

    def held_pass() -> Any:
        in_pass.set()
        release.wait(timeout=60)
        return resume()

    monkeypatch.setattr(server.bridge, "resume_unfinished", held_pass)
    server.start()
    assert in_pass.wait(30)
    server.stop(grace_seconds=0)
    assert not server.wait_background(0.2)  # the pass is still under way
    release.set()
    assert server.wait_background(30)
