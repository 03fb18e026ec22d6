"""A covered entity's offset limits across several surrenders of one year, over real gRPC.

The limits (a share of verified emissions, a local-origin share) count what the entity has
already surrendered for the year as well as what it asks now: these tests make the earlier
surrenders the hard kind, one still waiting on a registry that went down, one of offsets
whose registry names their province by its ISO 3166-2 code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway.demo_migration import pilot_entity, record_entity, seed_registries
from registry_bridge.model import BlockId
from tests.integration.gateway.conftest import (
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)

FAST_RETRIES: dict[str, Any] = {
    # A registry that stays down is asked as often, only sooner: the waits are not under test.
    "registry_retry_initial_wait_seconds": 0.01,
    "registry_retry_max_wait_seconds": 0.02,
    # The test drives every use itself: the recovery loop must not finish one meanwhile.
    "recovery_interval_seconds": 3600,
}


@pytest.fixture
def pilots() -> Iterator[LinkedRegistries]:
    with linked_registries(wired=("shenzhen", "national", "guangdong")) as linked:
        yield linked


def _selector(block: BlockId | model_pb2.BlockId, first: int, last: int) -> model_pb2.UnitSelector:
    """Units ``first`` to ``last`` (counted from 0) of ``block``."""
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=str(getattr(block.program, "value", block.program)),
            serial_series=block.serial_series,
            serial_start=block.serial_start + first,
            serial_end=block.serial_start + last,
        )
    )


def _surrender(
    gateway: LiveGateway,
    request_id: str,
    account: model_pb2.AccountRef,
    units: list[model_pb2.UnitSelector],
    entity_id: str,
    year: int,
    jurisdiction: str,
) -> model_pb2.UnitUse:
    used: model_pb2.UnitUse = gateway.stub.Surrender(
        gateway_pb2.SurrenderRequest(
            request_id=request_id,
            account=account,
            units=units,
            entity_id=entity_id,
            compliance_year=year,
            jurisdiction=jurisdiction,
        ),
        timeout=60,
    )
    return used


def test_a_surrender_still_waiting_on_a_registry_counts_toward_the_offset_limit(
    database_url: str, pilots: LinkedRegistries
) -> None:
    """Shenzhen allows offsets up to 10% of verified emissions (CR-SZ-0006): 5,000 of the
    entity's 50,000. Its CCER come from the national registry; once that registry is down,
    a surrender of them is done at Shenzhen and waits to be retired at the origin. The
    offsets it used are spent all the same: a further one over the limit is refused."""
    steel = pilot_entity("steel-07", "steel", 2023, 7_000_000)
    seed_registries(pilots.ports, steel)
    with running_gateway(database_url, pilots, **FAST_RETRIES) as gateway:
        gateway.server.import_registries()
        record_entity(gateway.stub, steel)
        moved = gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id="ccer-in",
                instruction=model_pb2.TransferInstruction(
                    source=model_pb2.AccountRef(
                        registry="national", account=steel.national_account
                    ),
                    destination=model_pb2.AccountRef(
                        registry="shenzhen", account=steel.shenzhen_account
                    ),
                    units=[_selector(steel.ccer.id, 0, 4_999)],
                ),
            ),
            timeout=60,
        )
        assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
        mirror = moved.credited_blocks[0].id
        account = model_pb2.AccountRef(registry="shenzhen", account=steel.shenzhen_account)

        pilots.emulators["national"].stop()
        with pytest.raises(grpc.RpcError) as waiting:
            _surrender(
                gateway,
                "offsets-at-the-limit",
                account,
                [_selector(mirror, 0, 4_999)],
                "steel-07",
                2023,
                "shenzhen",
            )
        assert waiting.value.code() == grpc.StatusCode.UNAVAILABLE

        with pytest.raises(grpc.RpcError) as over:
            _surrender(
                gateway,
                "one-tonne-over",
                account,
                [_selector(steel.sz_ci.id, 0, 0)],
                "steel-07",
                2023,
                "shenzhen",
            )
        assert over.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = over.value.details() or ""
        assert "CR-SZ-0006" in details
        assert "5000 already used + 1 asked" in details
