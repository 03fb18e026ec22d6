"""What ListRegistries costs when registries drop traffic, over a real secure gateway.

Any token lists the registries, and each answer says whether each registry is reachable,
asking its health service with a bound of its own.  Asked one after another, registries
that silently drop traffic held the call (and a server worker) for that bound times their
number, at every call; asked all at once, and a recent answer reused, a call takes one
check's time at most.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from gateway import demo_security
from gateway.server import PROBE_TIMEOUT_SECONDS
from tests.integration.security.conftest import SecureGateway, running_secure_gateway

SILENT = ("bri", "gold-standard", "guangdong", "national")


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[SecureGateway]:
    pki = demo_security.layout(tmp_path)
    with running_secure_gateway(pki, database_url, also_wired=SILENT) as gateway:
        yield gateway


@contextlib.contextmanager
def _dropping_traffic(gateway: SecureGateway, registry_id: str) -> Iterator[None]:
    """The registry's emulator stopped and its address black-holed: a socket listening
    there that never accepts, so a connection is made but never answered (not refused)."""
    emulator = gateway.emulators[registry_id]
    host, port = emulator.target.rsplit(":", 1)
    emulator.server.stop(None).wait()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(64)
        yield


def _timed_listing(gateway: SecureGateway) -> tuple[float, dict[str, bool]]:
    stub = gateway_pb2_grpc.LinkageGatewayStub(gateway.channel("auditor", gateway.token("auditor")))
    started = time.monotonic()
    reply = stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=30)
    elapsed = time.monotonic() - started
    return elapsed, {r.registry_id: r.reachable for r in reply.registries}


def test_registries_that_drop_traffic_cost_a_listing_one_check_not_one_each(
    gateway: SecureGateway,
) -> None:
    with contextlib.ExitStack() as stack:
        for registry_id in SILENT:
            stack.enter_context(_dropping_traffic(gateway, registry_id))

        elapsed, reachable = _timed_listing(gateway)
        # One after another, the four silent registries took four checks' time.
        assert elapsed < 2 * PROBE_TIMEOUT_SECONDS, elapsed
        assert reachable == {
            "bri": False,
            "gold-standard": False,
            "guangdong": False,
            "hkmo": True,
            "national": False,
            "shenzhen": True,
            "verra": True,
        }

        # Asked again at once, the gateway answers with what it just learnt.
        again, reachable_again = _timed_listing(gateway)
        assert again < PROBE_TIMEOUT_SECONDS / 2, again
        assert reachable_again == reachable
