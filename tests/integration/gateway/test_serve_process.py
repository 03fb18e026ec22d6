"""``carbonlink serve`` as its own process: start, answer, log JSON, stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.gateway.conftest import free_port
from tests.integration.signals import signal_another_thread

CARBONLINK = [sys.executable, "-m", "gateway.cli"]


def _wait_serving(target: str, deadline_seconds: float = 30) -> None:
    deadline = time.monotonic() + deadline_seconds
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway at {target} never became SERVING")
            time.sleep(0.1)


def _serve_then_stop(database_url: str, send_stop: Callable[[int], None]) -> list[dict[str, Any]]:
    """Run ``carbonlink serve`` until it serves, stop it with ``send_stop(pid)``, and
    return its log events once it has exited with 0."""
    target = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [*CARBONLINK, "serve", "--insecure", "--listen", target, "--database-url", database_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")},
    )
    try:
        _wait_serving(target)
        send_stop(process.pid)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_serve_answers_then_stops_gracefully_on_sigterm(database_url: str) -> None:
    events = _serve_then_stop(database_url, lambda pid: os.kill(pid, signal.SIGTERM))
    names = [e["event"] for e in events]
    assert "gateway_started" in names
    assert names[-1] == "gateway_stopped"
    assert any(e["event"] == "shutdown_requested" and e["signal"] == "SIGTERM" for e in events)


def test_serve_stops_on_a_sigterm_taken_by_another_thread(database_url: str) -> None:
    """The kernel may give the SIGTERM to any of the gateway's threads (see
    tests.integration.signals); it stops all the same."""
    events = _serve_then_stop(database_url, lambda pid: signal_another_thread(pid, signal.SIGTERM))
    names = [e["event"] for e in events]
    assert "shutdown_requested" in names
    assert names[-1] == "gateway_stopped"


def test_serve_refuses_a_bad_setting_and_names_it() -> None:
    result = subprocess.run(
        [*CARBONLINK, "serve", "--listen", "not-an-address"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")},
    )
    assert result.returncode == 2
    assert "listen: 'not-an-address' is not HOST:PORT (flag --listen)" in result.stderr


def test_serve_refuses_an_unreachable_database() -> None:
    result = subprocess.run(
        [
            *CARBONLINK,
            "serve",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")},
    )
    assert result.returncode == 1
    assert "cannot connect to the database" in result.stderr
    # ...and why, in the driver's words: here nothing listens on the port.
    assert 'connection to server at "127.0.0.1", port 1 failed' in result.stderr
