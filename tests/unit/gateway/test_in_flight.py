"""InFlightCalls counts unary and streaming calls on a real gRPC server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from gateway.in_flight import InFlightCalls
from tests.loopback import ANY_PORT, HOST

SERVICE = "test.Blocking"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"


def _serve(calls: InFlightCalls, release: threading.Event) -> tuple[grpc.Server, int]:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(10)
        return request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield request
        release.wait(10)
        yield request

    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[calls])
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port(ANY_PORT)
    server.start()
    return server, port


def test_counts_calls_until_their_handlers_end() -> None:
    calls = InFlightCalls()
    release = threading.Event()
    server, port = _serve(calls, release)
    try:
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            unary = channel.unary_unary(UNARY).future(b"u", timeout=10)
            stream = channel.unary_stream(STREAM)(b"s", timeout=10)
            assert next(stream) == b"s"  # the stream's handler has started
            # Both handlers wait on ``release``: the wait ends at its timeout, naming them.
            assert calls.wait_until_idle(0.2) == {UNARY: 1, STREAM: 1}
            assert calls.wait_until_idle(0) == {UNARY: 1, STREAM: 1}
            release.set()
            assert unary.result() == b"u"
            assert list(stream) == [b"s"]
            assert calls.wait_until_idle(5) == {}
            assert calls.wait_until_idle(0) == {}
    finally:
        release.set()
        server.stop(0)


def test_a_cancelled_stream_stops_counting_when_its_handler_ends() -> None:
    calls = InFlightCalls()
    release = threading.Event()
    server, port = _serve(calls, release)
    try:
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            stream = channel.unary_stream(STREAM)(b"s", timeout=10)
            assert next(stream) == b"s"
            stream.cancel()
            assert calls.wait_until_idle(0) == {STREAM: 1}  # its handler still waits
            release.set()
            assert calls.wait_until_idle(5) == {}
    finally:
        release.set()
        server.stop(0)
