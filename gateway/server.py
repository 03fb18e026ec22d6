"""The gateway process: gRPC server, health, reflection, storage, graceful shutdown.

This is the composition root: it builds the database engine, brings the schema up to
date, wires the registries named in the configuration once, and serves.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.engine import Engine

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.catalog import RegistryInfo
from gateway.config import GatewayConfig
from gateway.error_mapping import ErrorMappingInterceptor
from gateway.servicer import LinkageGatewayServicer
from registry_bridge import db

_logger = structlog.get_logger(__name__)

SERVICE_NAME: str = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"].full_name
_PROBE_TIMEOUT_SECONDS = 0.5


class RegistryProbe:
    """Asks a registry's standard health service whether it is up; one channel per target."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def __call__(self, info: RegistryInfo) -> bool:
        with self._lock:
            channel = self._channels.get(info.target)
            if channel is None:
                channel = grpc.insecure_channel(info.target)
                self._channels[info.target] = channel
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=_PROBE_TIMEOUT_SECONDS
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def wired_registries(config: GatewayConfig) -> list[RegistryInfo]:
    """The registries named in the configuration."""
    return [
        RegistryInfo(
            registry_id=endpoint.registry_id,
            display_name=endpoint.registry_id,
            programs=(),
            serial_format="",
            target=endpoint.target,
        )
        for endpoint in config.registries
    ]


class GatewayServer:
    """One gateway process."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.engine: Engine = db.create_engine(config.database_url)
        self._probe = RegistryProbe()
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self.port = 0

    def start(self) -> int:
        """Migrate the database, bind and start serving; returns the bound port.

        Raises:
            DatabaseError: The database cannot be reached or migrated.
            OSError: The listen address cannot be bound.
        """
        db.check_connection(self.engine)
        db.upgrade(self.engine)
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="rpc"
            ),
            interceptors=[ErrorMappingInterceptor()],
            options=[
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = LinkageGatewayServicer(wired_registries(self.config), self._probe)
        gateway_pb2_grpc.add_LinkageGatewayServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port: int = server.add_insecure_port(self.config.listen)
        if port == 0:
            raise OSError(f"cannot bind {self.config.listen}")
        server.start()
        self._server = server
        self.port = port
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        host = self.config.listen.rsplit(":", 1)[0]
        _logger.info(
            "gateway_started",
            listen=f"{host}:{port}",
            database=self.engine.url.render_as_string(hide_password=True),
        )
        return port

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop taking calls, let in-flight calls finish within the grace period, close."""
        if self._server is None:
            return
        self._health.enter_graceful_shutdown()
        grace = self.config.grace_period_seconds if grace_seconds is None else grace_seconds
        self._server.stop(grace).wait()
        self._server = None
        self._probe.close()
        self.engine.dispose()
        _logger.info("gateway_stopped")

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()
