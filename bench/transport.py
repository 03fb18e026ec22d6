"""Transport limit vs. the gateway: bare gRPC echo and SubmitTransfer end to end.

The echo server is built exactly as ``GatewayServer.start`` builds its server: the same
thread pool size, the same interceptors (error mapping, then the security interceptors
the configuration gives) and the same channel options; its one method parses a
``SubmitTransferRequest`` and sends it back.  SubmitTransfer goes through everything:
validation, rules, ledger, provenance and three registry emulators over gRPC.

Clients are closed loops: each sends its next call when the last one answered.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from functools import partial
from typing import Any

import grpc
import sqlalchemy as sa

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
from gateway.server import GatewayServer
from registry_bridge import db
from registry_bridge.schema import TransferRecord
from registry_bridge.transfers import TransferState

ECHO_METHOD = "/carbonlink.bench.v1.Echo/Echo"


Behaviour = Callable[[gateway_pb2.SubmitTransferRequest], gateway_pb2.SubmitTransferRequest]
"""What a bench server's one method does with a request."""


@contextmanager
def _gateway_stack_server(config: GatewayConfig, behaviour: Behaviour) -> Iterator[str]:
    """A server built as ``GatewayServer.start`` builds its own, with one method that
    answers by ``behaviour``; yields its target."""
    engine = db.create_engine("sqlite://")
    security = GatewaySecurity.from_config(config, db.session_factory(engine))

    def method(request: gateway_pb2.SubmitTransferRequest, _: grpc.ServicerContext) -> Any:
        return behaviour(request)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[ErrorMappingInterceptor(), *security.interceptors],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    handler = grpc.unary_unary_rpc_method_handler(
        method,
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


def echo_server(config: GatewayConfig) -> contextlib.AbstractContextManager[str]:
    """An echo server on the gateway's server stack; yields its target."""
    return _gateway_stack_server(config, lambda request: request)


def echo_method(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """The echo method over ``channel``."""
    return channel.unary_unary(
        ECHO_METHOD,
        request_serializer=gateway_pb2.SubmitTransferRequest.SerializeToString,
        response_deserializer=gateway_pb2.SubmitTransferRequest.FromString,
    )


@contextmanager
def relay_server(config: GatewayConfig, downstream: str, waves: Sequence[int]) -> Iterator[str]:
    """A server on the gateway's stack whose method makes echo calls to the echo server
    at ``downstream`` over one shared channel, then answers: a gateway that does nothing
    but a transfer's registry round trips.

    ``waves``: how many calls go out together at each step, one step after another (a
    transfer's locks at two registries go out together, its credit after them).
    """
    channel = grpc.insecure_channel(downstream)
    echo = echo_method(channel)

    def relay(request: gateway_pb2.SubmitTransferRequest) -> gateway_pb2.SubmitTransferRequest:
        for calls in waves:
            if calls == 1:
                echo(request, timeout=30)
                continue
            for answer in [echo.future(request, timeout=30) for _ in range(calls)]:
                answer.result()
        return request

    try:
        with _gateway_stack_server(config, relay) as target:
            yield target
    finally:
        channel.close()


Call = Callable[[int], None]
"""One client call; the argument numbers the call within its client."""


def closed_loop(
    make_client: Callable[[], tuple[grpc.Channel, Call]],
    clients: int,
    calls: int,
    until_done: Callable[[], None] = lambda: None,
) -> tuple[float, list[float], float]:
    """Run ``clients`` closed-loop clients making ``calls`` calls in all.

    ``until_done`` is waited for after the last call answered, inside the wall time (the
    settlement of transfers the calls accepted).

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
    if not errors:
        until_done()
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
    until_done: Callable[[], None] = lambda: None,
) -> Result:
    closed_loop(make_client, clients, max(clients, calls // 5), until_done)  # warm-up
    rates: list[float] = []
    latencies: list[float] = []
    shares: list[CpuShares] = []
    meter = CpuMeter(registries_pid)
    for _ in range(sizes.runs):
        meter.start()
        wall, own, client_cpu = closed_loop(make_client, clients, calls, until_done)
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
        method = echo_method(channel)

        def call(_: int) -> None:
            method(payload, timeout=30)

        return channel, call

    return make


class _Lanes:
    """The seeded lanes' cursors, handed to clients in turn (each client its own lane)."""

    def __init__(self) -> None:
        self._cursors = [stack.SerialCursor(lane) for lane in range(stack.LANES)]
        self._handed = 0

    def next(self) -> stack.SerialCursor:
        cursor = self._cursors[self._handed % stack.LANES]
        self._handed += 1
        return cursor


def _transfer_client(
    target: str,
    lanes: _Lanes,
    reply_when: gateway_pb2.ReplyWhen.ValueType = gateway_pb2.REPLY_WHEN_SETTLED,
) -> Callable[[], tuple[grpc.Channel, Call]]:
    """Clients that each take units from a lane (a seeded block) of their own.

    With ``REPLY_WHEN_ACCEPTED`` each call must be answered CHECKED (settled later)."""
    expected = (
        model_pb2.TRANSFER_STATE_CHECKED
        if reply_when == gateway_pb2.REPLY_WHEN_ACCEPTED
        else model_pb2.TRANSFER_STATE_COMPLETED
    )

    def make() -> tuple[grpc.Channel, Call]:
        channel, gateway = stack.stub(target)
        cursor = lanes.next()

        def call(_: int) -> None:
            request = stack.transfer_request(uuid.uuid4().hex, cursor.take())
            request.reply_when = reply_when
            reply = gateway.SubmitTransfer(request, timeout=60)
            if reply.state != expected:
                raise RuntimeError(f"transfer answered {reply.state}: {reply.failure_reason}")

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


FLOOR_WAVES = {3: (1, 1, 1), 5: (2, 1, 2)}
"""A transfer's registry round trips, by their count: 3 between an origin registry and
another (lock, credit, immobilize, one after another); 5 for the benchmark's transfer
out of a venue (the locks at the venue and at the origin registry together, the credit
at the destination, then both finalizes together)."""
TRANSFER_REGISTRY_CALLS = 5


def transport_floor(sizes: Sizes, echo_results: list[Result]) -> list[Result]:
    """The most a transfer could reach with no work but its gRPC calls, with 1 and N
    clients: a relay on the gateway's stack that makes a transfer's registry round trips
    to an echo server in another process (where the registries run) and answers.

    Its ratio to echo bounds SubmitTransfer's from above, whatever the gateway does
    besides.  Each run makes as many client calls as echo's divided by the calls each
    costs, so the figure takes about as long as echo's.
    """
    config = stack.gateway_config("sqlite://", ())
    payload = stack.transfer_request(uuid.uuid4().hex, stack.SERIAL_START)
    out: list[Result] = []
    with stack.serving_process((stack.ECHO,)) as downstream:
        for registry_calls, waves in FLOOR_WAVES.items():
            target_of_echo = downstream.targets[stack.ECHO]
            with relay_server(config, target_of_echo, waves) as target:
                make = _echo_client(target, payload)
                calls = sizes.echo_calls // (registry_calls + 1)
                for clients, echo_result in zip((1, sizes.clients), echo_results, strict=True):
                    figure = _throughput(
                        f"floor_{registry_calls}_calls.clients_{clients}",
                        "-",
                        sizes,
                        clients,
                        max(clients, calls),
                        make,
                        downstream.pid,
                    )
                    figure.extra["ratio_to_echo"] = figure.median / echo_result.median
                    out.append(figure)
    return out


def submit_transfer(
    sizes: Sizes, database: str, echo_results: list[Result], floor_results: list[Result]
) -> list[Result]:
    """SubmitTransfer end to end with 1 and N clients, with the ratios to echo and to the
    transport floor of a transfer's registry calls."""
    floors = {
        r.extra["clients"]: r
        for r in floor_results
        if r.name.startswith(f"floor_{TRANSFER_REGISTRY_CALLS}_calls.")
    }
    out: list[Result] = []
    with stack.scratch_database(database) as url, stack.registries() as linked:
        config = stack.gateway_config(url, linked.endpoints())
        with stack.gateway(config) as running:
            lanes = _Lanes()
            # Answered once settled, then answered once accepted and counted once settled.
            modes: list[tuple[str, Callable[[], tuple[grpc.Channel, Call]], Callable[[], None]]] = [
                ("submit_transfer", _transfer_client(running.target, lanes), lambda: None),
                (
                    "submit_accepted",
                    _transfer_client(running.target, lanes, gateway_pb2.REPLY_WHEN_ACCEPTED),
                    partial(_settled, running.server),
                ),
            ]
            for mode, make, until_done in modes:
                for clients, echo_result in zip((1, sizes.clients), echo_results, strict=True):
                    figure = _throughput(
                        f"{mode}.clients_{clients}",
                        database,
                        sizes,
                        clients,
                        sizes.transfer_calls,
                        make,
                        linked.pid,
                        until_done,
                    )
                    figure.extra["ratio_to_echo"] = figure.median / echo_result.median
                    # The floor is of calls made one transfer at a time: the accepted
                    # transfers' registry calls go out for a group at once.
                    if mode == "submit_transfer" and clients in floors:
                        figure.extra["ratio_to_floor"] = figure.median / floors[clients].median
                    out.append(figure)
    return out


_SETTLED_POLL_SECONDS = 0.002


def _settled(server: GatewayServer) -> None:
    """Wait until every transfer the gateway accepted is settled; each must be COMPLETED.

    The accepted figures count a call only once its transfer is settled: their wall time
    runs to the end of the last settlement, not the last answer.

    Raises:
        RuntimeError: A transfer ended otherwise, or was left unfinished (a registry did
            not answer), which the figure must not count.
    """
    while server.bridge.accepted_pending:
        time.sleep(_SETTLED_POLL_SECONDS)
    with server.engine.connect() as connection:
        unfinished = connection.execute(
            sa.select(sa.func.count())
            .select_from(TransferRecord)
            .where(TransferRecord.state != TransferState.COMPLETED.value)
        ).scalar_one()
    if unfinished:
        raise RuntimeError(f"{unfinished} accepted transfers did not complete")
