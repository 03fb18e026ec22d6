"""``carbonlink demo``: the gateway's user journeys, end to end, on the embedded database.

Everything here goes over real gRPC sockets on the loopback interface; nothing is
called in-process behind the API's back.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.config import GatewayConfig
from gateway.logging_setup import configure_logging
from gateway.server import SERVICE_NAME, GatewayServer


def _say(text: str = "") -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run every journey; returns the process exit code."""
    log_sink = io.StringIO()
    configure_logging("info", "json", stream=log_sink)
    with tempfile.TemporaryDirectory(prefix="carbonlink-demo-") as scratch:
        workdir: Path = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        config = GatewayConfig(
            listen="127.0.0.1:0",
            database_url=f"sqlite:///{workdir / 'gateway.db'}",
        )
        server = GatewayServer(config)
        port = server.start()
        target = f"127.0.0.1:{port}"
        try:
            with grpc.insecure_channel(target) as channel:
                _journey_gateway_up(channel, target)
        finally:
            server.stop(grace_seconds=1)
    _say()
    _say("demo finished: every journey ran over real gRPC.")
    return 0


def _journey_gateway_up(channel: grpc.Channel, target: str) -> None:
    _say(f"== gateway on {target} (embedded SQLite)")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        _say(f"   health {service or '(server)'}: {status}")
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise SystemExit(f"gateway health for {service!r} is {status}")
    gateway = gateway_pb2_grpc.LinkageGatewayStub(channel)
    listed = gateway.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=5)
    _say(f"   ListRegistries: {len(listed.registries)} registries wired")
    for registry in listed.registries:
        state = "reachable" if registry.reachable else "unreachable"
        _say(f"     {registry.name:28} {registry.display_name} [{state}]")


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(workdir=None)))
