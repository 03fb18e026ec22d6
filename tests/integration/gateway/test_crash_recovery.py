"""Kill the gateway (SIGKILL) at each step of a transfer; the restarted gateway finishes it.

The gateway runs as its own process with the fault hook ``fault_crash_after_state``: it
kills itself the moment a transfer's state is committed.  A second gateway on the same
database then resumes: every transfer ends COMPLETED or ROLLED_BACK, the registries agree
with the ledger, and every invariant holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core import FaultConfig
from bench.stack import transfer_request
from registry_bridge import db
from registry_bridge.model import HoldingStatus
from registry_bridge.port import BlockStatusRequest
from registry_bridge.schema import TransferRecord
from tests.integration.gateway.conftest import (
    WIRED,
    LinkedRegistries,
    check_invariants,
    linked_registries,
)
from tests.integration.serving import wait_serving
from tests.loopback import HOST, free_port

FINAL = (model_pb2.TRANSFER_STATE_COMPLETED, model_pb2.TRANSFER_STATE_ROLLED_BACK)


@contextmanager
def _gateway(
    database_url: str, registries: LinkedRegistries, **settings: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    target = f"{HOST}:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")}
    env["CARBONLINK_REGISTRIES"] = ",".join(
        f"{e.registry_id}={e.target}" for e in registries.endpoints()
    )
    env["CARBONLINK_INSECURE"] = "true"
    env["CARBONLINK_RECOVERY_INTERVAL_SECONDS"] = "0.2"
    # A short lease lets the restarted gateway take over the dead one's transfer quickly.
    env["CARBONLINK_TRANSFER_LEASE_SECONDS"] = "1"
    env.update({f"CARBONLINK_{k.upper()}": v for k, v in settings.items()})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--listen",
            target,
            "--database-url",
            database_url,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_serving(target, timeout_s=30)
        yield process, target
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if process.stderr is not None:
            process.stderr.close()


def _submit(target: str, request_id: str, start: int, quantity: int) -> None:
    with grpc.insecure_channel(target) as channel:
        gateway_pb2_grpc.LinkageGatewayStub(channel).SubmitTransfer(
            transfer_request(request_id, start, start + quantity - 1), timeout=30
        )


def _wait_final(target: str, deadline_seconds: float = 60) -> model_pb2.Transfer:
    deadline = time.monotonic() + deadline_seconds
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        while True:
            listed = stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=10)
            assert len(listed.transfers) == 1
            transfer: model_pb2.Transfer = listed.transfers[0]
            if transfer.state in FINAL:
                return transfer
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"transfer stuck in {transfer.state}: {transfer.failure_reason}"
                )
            time.sleep(0.2)


def _until_its_lock_expired(database_url: str) -> None:
    """Wait until the one transfer's lock is past the expiry it was given."""
    engine = db.create_engine(database_url)
    try:
        with db.read_only(db.session_factory(engine)) as session:
            expires = session.execute(sa.select(TransferRecord.lock_expires_at)).scalar_one()
    finally:
        engine.dispose()
    assert expires is not None, "the transfer was never given a lock"
    # A little past it: the restarted gateway's clock must find it expired.
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)


@pytest.mark.parametrize(
    "crash_after",
    ["PROPOSED", "CHECKED", "SOURCE_LOCKED", "DESTINATION_CREDITED", "SOURCE_FINALIZED"],
)
def test_a_killed_gateway_finishes_the_transfer_after_restart(
    database_url: str, registries: LinkedRegistries, crash_after: str
) -> None:
    origin = registries.seed_venue()
    start, quantity = origin.id.serial_start, 700
    with _gateway(database_url, registries, fault_crash_after_state=crash_after) as (
        process,
        target,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            _submit(target, "crash-1", start, quantity)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=30) == -signal.SIGKILL
    with _gateway(database_url, registries) as (_, target):
        transfer = _wait_final(target)
    # The lock had not expired, so every crash point rolls forward.
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED, transfer.failure_reason
    verra = {
        (h.block.id.serial_start, h.block.id.serial_end): h.status
        for h in registries.ports["verra"].block_status(BlockStatusRequest(origin.id))
    }
    assert verra[(start, start + quantity - 1)] == HoldingStatus.BRIDGED
    check_invariants(database_url, registries.ports)


def test_an_expired_lock_rolls_back_after_a_crash(
    database_url: str, registries: LinkedRegistries
) -> None:
    origin = registries.seed_venue()
    start = origin.id.serial_start
    with _gateway(
        database_url, registries, fault_crash_after_state="CHECKED", lock_ttl_seconds="1"
    ) as (process, target):
        with pytest.raises(grpc.RpcError):
            _submit(target, "crash-2", start, 50)
        assert process.wait(timeout=30) == -signal.SIGKILL
    _until_its_lock_expired(database_url)
    with _gateway(database_url, registries) as (_, target):
        transfer = _wait_final(target)
    assert transfer.state == model_pb2.TRANSFER_STATE_ROLLED_BACK
    statuses = {
        h.status for h in registries.ports["verra"].block_status(BlockStatusRequest(origin.id))
    }
    assert statuses == {HoldingStatus.ACTIVE}
    statuses = {
        h.status for h in registries.ports["hkmo"].block_status(BlockStatusRequest(origin.id))
    }
    assert statuses == {HoldingStatus.ACTIVE}
    check_invariants(database_url, registries.ports)


@pytest.fixture
def faulty_registries() -> Iterator[LinkedRegistries]:
    """The registries again, now dropping, duplicating and delaying calls."""
    faults = FaultConfig(
        latency_ms=2,
        unavailable_fraction=0.2,
        crash_after_commit_fraction=0.1,
        duplicate_delivery_fraction=0.2,
        seed=7,
    )
    with linked_registries(dict.fromkeys(WIRED, faults)) as linked:
        yield linked


QUICK_RETRIES = {
    "registry_retry_initial_wait_seconds": "0.01",
    "registry_retry_max_wait_seconds": "0.05",
}
"""Short waits between a gateway's retries of a failed registry call (as many retries):
the retries are under test, not the waits, which came to seconds with the defaults."""


@pytest.mark.parametrize("crash_after", ["SOURCE_LOCKED", "DESTINATION_CREDITED"])
def test_crash_recovery_with_registry_faults(
    database_url: str, faulty_registries: LinkedRegistries, crash_after: str
) -> None:
    registries = faulty_registries
    origin = registries.seed_venue()
    start, quantity = origin.id.serial_start, 300
    with _gateway(
        database_url, registries, fault_crash_after_state=crash_after, **QUICK_RETRIES
    ) as (process, target):
        with pytest.raises(grpc.RpcError):
            _submit(target, "crash-faults", start, quantity)
        assert process.wait(timeout=30) == -signal.SIGKILL
    with _gateway(database_url, registries, **QUICK_RETRIES) as (_, target):
        transfer = _wait_final(target)
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED, transfer.failure_reason
    verra = {
        (h.block.id.serial_start, h.block.id.serial_end): h.status
        for h in registries.ports["verra"].block_status(BlockStatusRequest(origin.id))
    }
    assert verra[(start, start + quantity - 1)] == HoldingStatus.BRIDGED
    check_invariants(database_url, registries.ports)


# Before the credit (the group locked, transfers behind it queued) and after it (rolled
# forward).
@pytest.mark.parametrize("crash_after", ["SOURCE_LOCKED", "SOURCE_FINALIZED"])
def test_transfers_answered_at_acceptance_survive_a_killed_gateway(
    database_url: str, crash_after: str
) -> None:
    # The venue answers slowly, so the batch is answered CHECKED well before the settler
    # commits its first step and the gateway kills itself there: the client was told
    # "accepted" and nothing rests on that answer but the database.
    slow_venue = {"hkmo": FaultConfig(latency_ms=200)}
    with linked_registries(slow_venue) as registries:
        origin = registries.seed_venue()
        start = origin.id.serial_start
        batch = gateway_pb2.SubmitTransfersRequest(
            transfers=[
                transfer_request(f"accepted-{n}", start + 10 * n, start + 10 * n + 9)
                for n in range(5)
            ],
            reply_when=gateway_pb2.REPLY_WHEN_ACCEPTED,
        )
        with _gateway(database_url, registries, fault_crash_after_state=crash_after) as (
            process,
            target,
        ):
            with grpc.insecure_channel(target) as channel:
                reply = gateway_pb2_grpc.LinkageGatewayStub(channel).SubmitTransfers(
                    batch, timeout=30
                )
            assert [r.transfer.state for r in reply.results] == [
                model_pb2.TRANSFER_STATE_CHECKED
            ] * 5
            assert process.wait(timeout=30) == -signal.SIGKILL
        accepted = {r.transfer.name for r in reply.results}
        with _gateway(database_url, registries) as (_, target):
            settled = _wait_all_final(target, accepted)
        assert {name: t.state for name, t in settled.items()} == dict.fromkeys(
            accepted, model_pb2.TRANSFER_STATE_COMPLETED
        ), {name: t.failure_reason for name, t in settled.items()}
        check_invariants(database_url, registries.ports)


def _wait_all_final(
    target: str, names: set[str], deadline_seconds: float = 60
) -> dict[str, model_pb2.Transfer]:
    deadline = time.monotonic() + deadline_seconds
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        while True:
            found = {
                name: stub.GetTransfer(gateway_pb2.GetTransferRequest(name=name), timeout=10)
                for name in names
            }
            if all(t.state in FINAL for t in found.values()):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    "accepted transfers left unsettled: "
                    + ", ".join(f"{n} {t.state}" for n, t in found.items() if t.state not in FINAL)
                )
            time.sleep(0.2)
