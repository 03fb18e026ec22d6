"""Transport limit vs. the gateway: bare gRPC echo and SubmitTransfer end to end.

The echo server is built exactly as ``GatewayServer.start`` builds its server: the same
thread pool size, the same interceptors (error mapping, then the security interceptors
the configuration gives) and the same channel options; its one method parses a
``SubmitTransferRequest`` and sends it back.  SubmitTransfer goes through everything:
validation, rules, ledger, provenance and three registry emulators over gRPC.

Clients are closed loops: each sends its next call when the last one answered.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from bench import stack
from bench.common import (
    CpuMeter,
    CpuShares,
    Result,
    Sizes,
    median_shares,
    per_second,
    percentile,
    result,
)
from gateway.config import GatewayConfig
from gateway.error_mapping import ErrorMappingInterceptor
from gateway.security.settings import GatewaySecurity
from registry_bridge import db

ECHO_METHOD = "/carbonlink.bench.v1.Echo/Echo"


@contextmanager
def echo_server(config: GatewayConfig) -> Iterator[str]:
    """An echo server on the gateway's server stack; yields its target."""
    engine = db.create_engine("sqlite://")
    security = GatewaySecurity.from_config(config, db.session_factory(engine))

    def echo(request: gateway_pb2.SubmitTransferRequest, _: grpc.ServicerContext) -> Any:
        return request

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[ErrorMappingInterceptor(), *security.interceptors],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=gateway_pb2.SubmitTransferRequest.FromString,
        response_serializer=gateway_pb2.SubmitTransferRequest.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("carbonlink.bench.v1.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        engine.dispose()


Call = Callable[[int], None]
"""One client call; the argument numbers the call within its client."""


def closed_loop(
    make_client: Callable[[], tuple[grpc.Channel, Call]], clients: int, calls: int
) -> tuple[float, list[float], float]:
    """Run ``clients`` closed-loop clients making ``calls`` calls in all.

    Returns:
        Wall seconds for all of them, every call's latency in seconds, and the CPU seconds
        the clients' own threads used.
    """
    made = [make_client() for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    client_cpu = [0.0] * clients
    share = max(1, calls // clients)
    start = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def run(position: int) -> None:
        _, call = made[position]
        own = latencies[position]
        start.wait()
        cpu = time.thread_time()
        try:
            for i in range(share):
                began = time.perf_counter()
                call(i)
                own.append(time.perf_counter() - began)
        except BaseException as exc:  # reported after the join, not lost in the thread
            errors.append(exc)
        client_cpu[position] = time.thread_time() - cpu

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    for channel, _ in made:
        channel.close()
    if errors:
        raise RuntimeError(f"a benchmark client failed: {errors[0]!r}") from errors[0]
    return wall, [x for own in latencies for x in own], sum(client_cpu)


def _throughput(
    name: str,
    database: str,
    sizes: Sizes,
    clients: int,
    calls: int,
    make_client: Callable[[], tuple[grpc.Channel, Call]],
    registries_pid: int | None = None,
) -> Result:
    closed_loop(make_client, clients, max(clients, calls // 5))  # warm-up
    rates: list[float] = []
    latencies: list[float] = []
    shares: list[CpuShares] = []
    meter = CpuMeter(registries_pid)
    for _ in range(sizes.runs):
        meter.start()
        wall, own, client_cpu = closed_loop(make_client, clients, calls)
        shares.append(meter.shares(len(own), client_cpu))
        rates.append(per_second(len(own), wall))
        latencies.extend(own)
    return result(
        "transport",
        name,
        database,
        "ops/s",
        rates,
        clients=clients,
        calls_per_run=calls,
        p50_ms=percentile(latencies, 0.5) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        **median_shares(shares),
    )


def _echo_client(
    target: str, payload: gateway_pb2.SubmitTransferRequest
) -> Callable[[], tuple[grpc.Channel, Call]]:
    def make() -> tuple[grpc.Channel, Call]:
        channel = grpc.insecure_channel(target)
        method = channel.unary_unary(
            ECHO_METHOD,
            request_serializer=gateway_pb2.SubmitTransferRequest.SerializeToString,
            response_deserializer=gateway_pb2.SubmitTransferRequest.FromString,
        )

        def call(_: int) -> None:
            method(payload, timeout=30)

        return channel, call

    return make


def _transfer_client(target: str) -> Callable[[], tuple[grpc.Channel, Call]]:
    """Clients that each take units from a lane (a seeded block) of their own."""
    cursors = [stack.SerialCursor(lane) for lane in range(stack.LANES)]
    made = [0]

    def make() -> tuple[grpc.Channel, Call]:
        channel, gateway = stack.stub(target)
        cursor = cursors[made[0] % stack.LANES]
        made[0] += 1

        def call(_: int) -> None:
            reply = gateway.SubmitTransfer(
                stack.transfer_request(uuid.uuid4().hex, cursor.take()), timeout=60
            )
            if reply.state != model_pb2.TRANSFER_STATE_COMPLETED:
                raise RuntimeError(f"transfer ended {reply.state}: {reply.failure_reason}")

        return channel, call

    return make


def echo(sizes: Sizes) -> list[Result]:
    """Bare echo throughput with 1 and N clients."""
    config = stack.gateway_config("sqlite://", ())
    payload = stack.transfer_request(uuid.uuid4().hex, stack.SERIAL_START)
    with echo_server(config) as target:
        make = _echo_client(target, payload)
        return [
            _throughput("echo.clients_1", "-", sizes, 1, sizes.echo_calls, make),
            _throughput(
                f"echo.clients_{sizes.clients}", "-", sizes, sizes.clients, sizes.echo_calls, make
            ),
        ]


def submit_transfer(sizes: Sizes, database: str, echo_results: list[Result]) -> list[Result]:
    """SubmitTransfer end to end with 1 and N clients, with the ratio to echo."""
    out: list[Result] = []
    with stack.scratch_database(database) as url, stack.registries() as linked:
        config = stack.gateway_config(url, linked.endpoints())
        with stack.gateway(config) as running:
            make = _transfer_client(running.target)
            for clients, echo_result in zip((1, sizes.clients), echo_results, strict=True):
                figure = _throughput(
                    f"submit_transfer.clients_{clients}",
                    database,
                    sizes,
                    clients,
                    sizes.transfer_calls,
                    make,
                    linked.pid,
                )
                figure.extra["ratio_to_echo"] = figure.median / echo_result.median
                out.append(figure)
    return out
