"""Kill the gateway (SIGKILL) in the middle of a migration; a second execute completes it.

The gateway runs as its own process with ``fault_crash_after_migration_step``: it kills
itself as soon as a step of that kind reaches that state. A restarted gateway on the same
database (its recovery loop, then a second ExecuteMigration with the same request id)
finishes the migration without doing any step twice.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.demo_migration import (
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
    statuses,
)
from registry_bridge import db, invariants
from registry_bridge.model import HoldingStatus
from tests.integration.gateway.conftest import LinkedRegistries, linked_registries
from tests.integration.gateway.test_crash_recovery import _gateway


@pytest.fixture
def pilot(database_url: str) -> Iterator[LinkedRegistries]:
    with linked_registries(wired=("shenzhen", "national")) as linked:
        yield linked


@pytest.mark.parametrize("crash_after", ["cancel:applied", "transfer:done"])
def test_a_killed_migration_completes_on_a_second_execute(
    database_url: str, pilot: LinkedRegistries, crash_after: str
) -> None:
    aviation = pilot_entity("air-crash", "civil_aviation", 2024, 5_000_000)
    seed_registries(pilot.ports, aviation)
    execute = gateway_pb2.ExecuteMigrationRequest(
        request_id="migrate-air-crash",
        plan=migration_request(aviation, acknowledged=["CL-MIGRATION-0014"]),
    )
    with _gateway(database_url, pilot, fault_crash_after_migration_step=crash_after) as (
        process,
        target,
    ):
        with grpc.insecure_channel(target) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            record_entity(stub, aviation)
            settle_final_pilot_year(stub, aviation)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ExecuteMigration(execute, timeout=60)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=30) == -signal.SIGKILL

    with _gateway(database_url, pilot) as (_, target), grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        migration = stub.ExecuteMigration(execute, timeout=60)
        again = stub.ExecuteMigration(execute, timeout=60)
        transfers = stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=10)
    assert migration.state == "completed", migration.failure_reason
    assert all(s.state == "done" for s in migration.steps)
    assert list(again.steps) == list(migration.steps)
    # One transfer brought the CCER in, one took the unused rest home: none twice.
    assert len(transfers.transfers) == 2

    sza, ccer = aviation.sza.id, aviation.ccer.id
    cut = sza.serial_start + 46_000
    assert statuses(pilot.ports["shenzhen"], sza) == {
        (sza.serial_start, cut - 1): HoldingStatus.SURRENDERED,
        (cut, sza.serial_end): HoldingStatus.CANCELLED,
    }
    national = statuses(pilot.ports["national"], ccer)
    assert national[(ccer.serial_start + 4_000, ccer.serial_end)] == HoldingStatus.ACTIVE
    engine = db.create_engine(database_url)
    try:
        with db.session_factory(engine)() as session:
            assert invariants.check_all(session, pilot.ports) == []
    finally:
        engine.dispose()
