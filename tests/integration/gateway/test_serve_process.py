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
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters._pb.carbonlink.v1 import gateway_pb2_grpc, model_pb2
from bench.stack import SERIAL_START, registries, transfer_request
from registry_bridge.schema import TransferRecord
from tests.integration.serving import quick_redial_channel
from tests.integration.signals import signal_another_thread
from tests.loopback import ANY_PORT, HOST, free_port

CARBONLINK = [sys.executable, "-m", "gateway.cli"]


def _wait_serving(target: str, deadline_seconds: float = 30) -> None:
    deadline = time.monotonic() + deadline_seconds
    with quick_redial_channel(target) as channel:
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
            time.sleep(0.05)


def _serve_then_stop(database_url: str, send_stop: Callable[[int], None]) -> list[dict[str, Any]]:
    """Run ``carbonlink serve`` until it serves, stop it with ``send_stop(pid)``, and
    return its log events once it has exited with 0."""
    target = f"{HOST}:{free_port()}"
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


def _state_of(engine: sa.Engine, request_id: str) -> str | None:
    with engine.connect() as connection:
        state: str | None = connection.execute(
            sa.select(TransferRecord.state).where(TransferRecord.request_id == request_id)
        ).scalar_one_or_none()
    return state


def test_serve_stops_within_its_grace_period_while_a_registry_hangs(database_url: str) -> None:
    """A call waiting on a registry that does not answer held ``serve`` until the call's
    registry deadlines passed (minutes, with retries). Now the stop ends a second after
    the grace period and names the call it left; a restarted gateway finishes it."""
    grace_seconds, registry_timeout_seconds = 0.5, 20.0
    with registries() as linked:
        target = f"{HOST}:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")}
        env.update(
            CARBONLINK_REGISTRIES=",".join(f"{r}={t}" for r, t in linked.targets.items()),
            CARBONLINK_GRACE_PERIOD_SECONDS=str(grace_seconds),
            CARBONLINK_REGISTRY_TIMEOUT_SECONDS=str(registry_timeout_seconds),
            CARBONLINK_RECOVERY_INTERVAL_SECONDS="0.2",
            CARBONLINK_TRANSFER_LEASE_SECONDS="1",
        )
        command = [*CARBONLINK, "serve", "--insecure", "--listen", target]
        command += ["--database-url", database_url]
        engine = sa.create_engine(database_url)
        channel = grpc.insecure_channel(target)
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        try:
            process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
            try:
                _wait_serving(target)
                first = stub.SubmitTransfer(transfer_request("first", SERIAL_START), timeout=30)
                assert first.state == model_pb2.TRANSFER_STATE_COMPLETED
                os.kill(linked.pid, signal.SIGSTOP)
                try:
                    waiting = stub.SubmitTransfer.future(
                        transfer_request("second", SERIAL_START + 1), timeout=60
                    )
                    # Recorded before its first registry call, which then waits.
                    deadline = time.monotonic() + 30
                    while _state_of(engine, "second") is None:
                        assert time.monotonic() < deadline, "the transfer never reached the ledger"
                        time.sleep(0.05)
                    stopping = time.monotonic()
                    process.send_signal(signal.SIGTERM)
                    _, stderr = process.communicate(timeout=registry_timeout_seconds * 3)
                    stopped_after = time.monotonic() - stopping
                finally:
                    os.kill(linked.pid, signal.SIGCONT)
                assert waiting.exception(timeout=10) is not None
            finally:
                if process.poll() is None:
                    process.kill()
            assert process.returncode == 0, stderr
            events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
            abandoned = [e for e in events if e["event"] == "calls_abandoned"]
            assert [e["calls"] for e in abandoned] == [
                {"/carbonlink.v1.LinkageGateway/SubmitTransfer": 1}
            ]
            assert events[-1]["event"] == "gateway_stopped"
            assert stopped_after < registry_timeout_seconds / 2, stopped_after

            # Nothing is lost: the restarted gateway settles what the stop left.
            process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
            try:
                _wait_serving(target)
                deadline = time.monotonic() + 60
                while _state_of(engine, "second") not in ("COMPLETED", "ROLLED_BACK"):
                    assert time.monotonic() < deadline, _state_of(engine, "second")
                    time.sleep(0.1)
                again = stub.SubmitTransfer(
                    transfer_request("second", SERIAL_START + 1), timeout=30
                )
                assert again.state in (
                    model_pb2.TRANSFER_STATE_COMPLETED,
                    model_pb2.TRANSFER_STATE_ROLLED_BACK,
                )
                process.send_signal(signal.SIGTERM)
                _, stderr = process.communicate(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
            assert process.returncode == 0, stderr
            assert "calls_abandoned" not in stderr
        finally:
            channel.close()
            engine.dispose()


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
            ANY_PORT,
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
