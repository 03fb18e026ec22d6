"""Two gateway processes share one database; many clients race for the same units.

The gateways run exactly the deploy/ set-up: `carbonlink serve --config
deploy/gateway.example.yaml`, with address, database and registries overridden through the
environment as the systemd unit does.  Clients are threads and separate processes (the
`carbonlink transfer submit` CLI), spread over both gateways.  In every group of
overlapping instructions exactly one transfer completes; the ledger's invariants hold and
the registries agree with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import format_serial
from registry_bridge.model import UnitBlock
from tests.integration.gateway.conftest import LinkedRegistries, check_invariants
from tests.integration.serving import wait_serving
from tests.loopback import HOST, free_port

ROOT = Path(__file__).resolve().parents[3]
DEPLOY_CONFIG = ROOT / "deploy" / "gateway.example.yaml"
GROUPS = 4
THREAD_CLIENTS = 4
PROCESS_CLIENTS = 2
FINAL = {"TRANSFER_STATE_COMPLETED", "TRANSFER_STATE_REJECTED", "TRANSFER_STATE_ROLLED_BACK"}


@contextmanager
def _deployed_gateway(database_url: str, registries: LinkedRegistries) -> Iterator[str]:
    target = f"{HOST}:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")}
    env["CARBONLINK_INSECURE"] = "true"
    # The example's key file lives on a real host; here each gateway signs with its own.
    env["CARBONLINK_LOG_SIGNING_KEY_FILE"] = ""
    env["CARBONLINK_LISTEN"] = target
    env["CARBONLINK_DATABASE_URL"] = database_url
    env["CARBONLINK_REGISTRIES"] = ",".join(
        f"{e.registry_id}={e.target}" for e in registries.endpoints()
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(DEPLOY_CONFIG)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(target, timeout_s=60)
        yield target
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _ranges(origin: UnitBlock) -> list[list[tuple[int, int]]]:
    """Per group, instructions whose ranges all share one serial (so one must win)."""
    clients = THREAD_CLIENTS + PROCESS_CLIENTS
    groups = []
    for g in range(GROUPS):
        base = origin.id.serial_start + g * 1000
        groups.append([(base + i * 10, base + 50 + i * 10) for i in range(clients)])
    return groups


def _thread_client(
    target: str, request_id: str, serial: str, buyer: str, results: dict[str, str]
) -> None:
    with grpc.insecure_channel(target) as channel:
        transfer = gateway_pb2_grpc.LinkageGatewayStub(channel).SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id=request_id,
                instruction=model_pb2.TransferInstruction(
                    source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                    destination=model_pb2.AccountRef(registry="shenzhen", account=buyer),
                    units=[model_pb2.UnitSelector(serial=serial)],
                ),
            ),
            timeout=120,
        )
    results[request_id] = model_pb2.TransferState.Name(transfer.state)


def _process_client(target: str, request_id: str, serial: str, buyer: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "transfer",
            "submit",
            "--target",
            target,
            "--from",
            "hkmo:hk-seller",
            "--to",
            f"shenzhen:{buyer}",
            "--serial",
            serial,
            "--request-id",
            request_id,
            "--json",
            "--insecure",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_gateways_one_winner_per_conflict(
    database_url: str, registries: LinkedRegistries
) -> None:
    origin = registries.seed_venue()
    with ExitStack() as stack:
        targets = [
            stack.enter_context(_deployed_gateway(database_url, registries)) for _ in range(2)
        ]
        results: dict[str, str] = {}
        threads: list[threading.Thread] = []
        processes: dict[str, subprocess.Popen[str]] = {}
        groups = _ranges(origin)
        for g, ranges in enumerate(groups):
            for i, (start, end) in enumerate(ranges):
                request_id = f"g{g}-c{i}"
                serial = format_serial("verra", origin.with_range(start, end))
                target = targets[(g + i) % 2]
                if i < THREAD_CLIENTS:
                    threads.append(
                        threading.Thread(
                            target=_thread_client,
                            args=(target, request_id, serial, f"buyer-{i}", results),
                        )
                    )
                else:
                    processes[request_id] = _process_client(
                        target, request_id, serial, f"buyer-{i}"
                    )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        for request_id, process in processes.items():
            stdout, stderr = process.communicate(timeout=180)
            assert stdout, stderr
            results[request_id] = json.loads(stdout)["state"]
        assert set(results) == {f"g{g}-c{i}" for g in range(GROUPS) for i in range(len(groups[0]))}
        assert set(results.values()) <= FINAL, results
        for g in range(GROUPS):
            winners = [
                r
                for r, state in results.items()
                if r.startswith(f"g{g}-") and state == "TRANSFER_STATE_COMPLETED"
            ]
            assert len(winners) == 1, (g, results)
    check_invariants(database_url, registries.ports)
