"""Kill the gateway (SIGKILL) in the middle of a migration; a second execute completes it.

The gateway runs as its own process with ``fault_crash_after_migration_step``: it kills
itself as soon as a step of that kind reaches that state. A restarted gateway on the same
database (its recovery loop, then a second ExecuteMigration with the same request id)
finishes the migration without doing any step twice. The same holds for the retry of a
failed step: killed once the retry has read what it acts on (a transfer) or cancelled it in
the ledger (a cancel), a restarted gateway carries that attempt on, not a new one.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from gateway.demo_migration import (
    migration_request,
    pilot_entity,
    record_entity,
    seed_registries,
    settle_final_pilot_year,
    statuses,
)
from registry_bridge.model import HoldingStatus
from tests.integration.gateway.conftest import (
    COUNTED_CALLS_TIMEOUT_S,
    LinkedRegistries,
    check_invariants,
    linked_registries,
)
from tests.integration.gateway.test_crash_recovery import _gateway
from tests.integration.gateway.test_migration_holds import (
    SETTLE_FULFILS,
    _execute,
    _fail_a_use_once_recorded,
    _pilot,
    _seeded,
)


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
    check_invariants(database_url, pilot.ports)


def _killed(
    database_url: str,
    registries: LinkedRegistries,
    crash_after: str,
    execute: gateway_pb2.ExecuteMigrationRequest,
) -> None:
    """ExecuteMigration on a gateway that kills itself once a step reaches ``crash_after``."""
    with _gateway(database_url, registries, fault_crash_after_migration_step=crash_after) as (
        process,
        target,
    ):
        with grpc.insecure_channel(target) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ExecuteMigration(execute, timeout=60)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=30) == -signal.SIGKILL


def test_a_transfer_retry_killed_before_its_transfer_resumes_it_once(database_url: str) -> None:
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=1)
    with linked_registries(
        {"shenzhen": FaultConfig(refusals=(refusal,))}, wired=("shenzhen", "national")
    ) as pilot:
        steel = pilot_entity("steel-crash-t", "steel", 2023, 34_000_000)
        seed_registries(pilot.ports, steel)
        execute = gateway_pb2.ExecuteMigrationRequest(
            request_id="migrate-steel-crash-t",
            plan=migration_request(steel, acknowledged=["CL-MIGRATION-0014"]),
        )
        # Shenzhen's refusal is scripted by call number.
        timeout = str(COUNTED_CALLS_TIMEOUT_S)
        with (
            _gateway(database_url, pilot, registry_timeout_seconds=timeout) as (_, target),
            grpc.insecure_channel(target) as ch,
        ):
            stub = gateway_pb2_grpc.LinkageGatewayStub(ch)
            record_entity(stub, steel)
            mirror = settle_final_pilot_year(stub, steel)
            assert stub.ExecuteMigration(execute, timeout=60).state == "failed"
            # The entity retires some of the CCER the failed step was to take home.
            used = model_pb2.BlockId(
                program=mirror.program,
                serial_series=mirror.serial_series,
                serial_start=mirror.serial_start + 4_000,
                serial_end=mirror.serial_start + 4_099,
            )
            stub.Retire(
                gateway_pb2.RetireRequest(
                    request_id="retire-crash-t",
                    account=model_pb2.AccountRef(
                        registry="shenzhen", account=steel.shenzhen_account
                    ),
                    units=[model_pb2.UnitSelector(block=used)],
                    beneficiary=steel.entity_id,
                    claim_text="voluntary",
                ),
                timeout=60,
            )

        # Killed once the retry has recorded the units it moves, before it submits them.
        _killed(database_url, pilot, "transfer:pending", execute)

        with _gateway(database_url, pilot) as (_, target), grpc.insecure_channel(target) as ch:
            stub = gateway_pb2_grpc.LinkageGatewayStub(ch)
            migration = stub.ExecuteMigration(execute, timeout=60)
            again = stub.ExecuteMigration(execute, timeout=60)
            transfers = stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=10)
        assert migration.state == "completed", migration.failure_reason
        assert list(again.steps) == list(migration.steps)
        (step,) = [s for s in migration.steps if s.kind == "transfer"]
        assert [(a.attempt, a.state) for a in step.attempts] == [(0, "failed"), (1, "done")]
        assert [(b.serial_start, b.serial_end) for b in step.attempts[1].units] == [
            (used.serial_end + 1, mirror.serial_start + 4_999)
        ]
        # The CCER brought in, the refused attempt and the retry: the retry once.
        assert len(transfers.transfers) == 3
        ccer = steel.ccer.id
        national = statuses(pilot.ports["national"], ccer)
        assert national[(ccer.serial_start + 4_100, ccer.serial_end)] == HoldingStatus.ACTIVE
        check_invariants(database_url, pilot.ports)


def test_a_cancel_retry_killed_after_the_ledger_cancelled_resumes_it_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-crash-c", "steel", 2023, 35_000_000)
        _seeded(gateway, registries, steel)
        held, failed = _fail_a_use_once_recorded(gateway, steel, monkeypatch)
        assert _execute(gateway, steel, "migrate-crash-c").state == "failed"
        gateway.stub.ResolveUse(
            gateway_pb2.ResolveUseRequest(
                request_id="retry-crash-c",
                name=failed[0],
                action=model_pb2.USE_RESOLUTION_ACTION_RETRY,
            ),
            timeout=30,
        )
        execute = gateway_pb2.ExecuteMigrationRequest(
            request_id="migrate-crash-c",
            plan=migration_request(steel, acknowledged=["CL-MIGRATION-0014"]),
        )

        # Killed once the retry cancelled what is left in the ledger, before Shenzhen
        # was told (the same insecure caller asks in every gateway).
        _killed(database_url, registries, "cancel:applied", execute)
        with (
            _gateway(database_url, registries) as (_, target),
            grpc.insecure_channel(target) as ch,
        ):
            stub = gateway_pb2_grpc.LinkageGatewayStub(ch)
            migration = stub.ExecuteMigration(execute, timeout=60)
            again = stub.ExecuteMigration(execute, timeout=60)
        assert migration.state == "completed", migration.failure_reason
        assert list(again.steps) == list(migration.steps)
        (step,) = [s for s in migration.steps if s.kind == "cancel"]
        assert [(a.attempt, a.state) for a in step.attempts] == [(0, "failed"), (1, "done")]
        sza = steel.sza.id
        cut = sza.serial_start + 46_000
        assert statuses(registries.ports["shenzhen"], sza) == {
            (sza.serial_start, cut - 1): HoldingStatus.SURRENDERED,
            (cut, held.serial_start - 1): HoldingStatus.CANCELLED,
            (held.serial_start, held.serial_end): HoldingStatus.SURRENDERED,
            (held.serial_end + 1, sza.serial_end): HoldingStatus.CANCELLED,
        }
        check_invariants(database_url, registries.ports)
