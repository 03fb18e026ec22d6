"""A second gRPC implementation (Node.js grpc-js) discovers and calls the gateway.

It uses only server reflection and the .proto sources, not the Python stubs, which is
what any standard client of the gateway has.  Under ``CI=true`` a missing Node.js or
missing ``tests/interop/node_modules`` fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import google.rpc.status_pb2
import pytest

from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.server import GatewayServer
from tests.loopback import ANY_PORT, HOST

ROOT = Path(__file__).resolve().parents[3]
INTEROP = ROOT / "tests" / "interop"
GOOGLEAPIS = Path(google.rpc.status_pb2.__file__).resolve().parents[2]


def _require_node() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (INTEROP / "node_modules" / "@grpc" / "grpc-js").is_dir():
        problem = "run `npm ci` in tests/interop"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(problem)
        pytest.skip(problem)
    assert node is not None
    return node


@pytest.fixture
def gateway_target(tmp_path: Path) -> Iterator[str]:
    config = GatewayConfig(
        listen=ANY_PORT,
        database_url=f"sqlite:///{tmp_path}/gateway.db",
        registries=(RegistryEndpoint("verra", "127.0.0.1:1"),),
        # The start-up import retries Verra, which nothing answers, until its attempts are
        # spent: short waits keep that to a fraction of a second instead of 1.5 s.
        registry_retry_initial_wait_seconds=0.01,
        registry_retry_max_wait_seconds=0.02,
        insecure=True,
    )
    server = GatewayServer(config)
    port = server.start()
    yield f"{HOST}:{port}"
    server.stop(grace_seconds=0)


def test_grpc_js_sees_every_rpc_through_reflection(gateway_target: str) -> None:
    node = _require_node()
    result = subprocess.run(
        [node, "client.mjs", gateway_target, str(ROOT / "proto"), str(GOOGLEAPIS)],
        cwd=INTEROP,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert "carbonlink.v1.LinkageGateway" in found["services"]
    assert "grpc.health.v1.Health" in found["services"]
    from tests.integration.gateway.test_server import REQUIRED_RPCS

    assert set(found["methods"]) >= REQUIRED_RPCS
    assert found["registries"] == ["registries/verra"]
    assert found["get_checkpoint_status"] == "OK"
