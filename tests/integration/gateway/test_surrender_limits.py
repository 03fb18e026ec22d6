"""A covered entity's offset limits across several surrenders of one year, over real gRPC.

The limits (a share of verified emissions, a local-origin share) count what the entity has
already surrendered for the year as well as what it asks now: these tests make the earlier
surrenders the hard kind, one still waiting on a registry that went down, one of offsets
whose registry names their province by its ISO 3166-2 code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.demo_migration import pilot_entity, record_entity, seed_registries
from registry_bridge.entities import DatabaseEntityRecords
from registry_bridge.model import BlockId, UnitBlock
from registry_bridge.port import IssueRequest
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


def _record_entity(
    gateway: LiveGateway,
    entity_id: str,
    sector: str,
    accounts: list[tuple[str, str]],
    year: tuple[str, int],
) -> None:
    """UpsertCoveredEntity: a CO2 entity with these accounts and one compliance year (its
    jurisdiction and year) of 100,000 t verified and due."""
    jurisdiction, compliance_year = year
    gateway.stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id=entity_id,
            entity=gateway_pb2.CoveredEntity(
                entity_id=entity_id,
                sector=sector,
                gases=["CO2"],
                accounts=[model_pb2.AccountRef(registry=r, account=a) for r, a in accounts],
                years=[
                    gateway_pb2.ComplianceYear(
                        jurisdiction=jurisdiction,
                        compliance_year=compliance_year,
                        verified_emissions=100_000,
                        allowances_due=100_000,
                    )
                ],
            ),
        ),
        timeout=30,
    )


def _ccer(start: int, quantity: int, province: str, project: str) -> UnitBlock:
    """National CCER of a forestry sink in ``province`` (its ISO 3166-2:CN code's suffix)."""
    block = parse_serial(
        "national",
        f"CN-CCER-{start}-{start + quantity - 1}-20220101-20221231-{province}-{project}",
    )
    return dataclasses.replace(block, project_type="forestry_sink")


GUANGDONG_2023 = ("gd-cement", 2023, "guangdong")


def test_earlier_local_offsets_count_toward_the_local_share(
    database_url: str, pilots: LinkedRegistries
) -> None:
    """Guangdong wants at least 70% of the CCER an entity uses for a year from Guangdong
    (CR-GD-0003). The national registry names a project's province by its ISO code
    (CN-GD): 700 Guangdong CCER surrendered first, then 300 from Gansu, make 70% local; one
    more from Gansu is one too many."""
    guangdong_ccer = _ccer(8_000_001, 700, "GD", "0701")
    gansu_ccer = _ccer(8_100_001, 301, "GS", "0702")
    for seed, block in [("gd", guangdong_ccer), ("gs", gansu_ccer)]:
        pilots.ports["national"].issue(IssueRequest(f"seed-{seed}", "cn-gd-cement", block))
    with running_gateway(database_url, pilots, **FAST_RETRIES) as gateway:
        gateway.server.import_registries()
        _record_entity(
            gateway,
            "gd-cement",
            "cement",
            [("guangdong", "gd-cement"), ("national", "cn-gd-cement")],
            ("guangdong", 2023),
        )
        # Guangdong excludes projects of other pilot regions, Shenzhen among them: its
        # project's lister says in which city the Guangdong one lies.
        listed = gateway.stub.ListProject(
            gateway_pb2.ListProjectRequest(
                request_id="list-0701",
                project=model_pb2.Project(
                    program="CCER",
                    project_id="0701",
                    country="CN",
                    region="Guangdong/Meizhou",
                    project_type="forestry_sink",
                    construction_start="2015-01-01",
                    crediting_period_start="2022-01-01",
                    crediting_period_end="2022-12-31",
                ),
                jurisdiction="guangdong",
            ),
            timeout=30,
        )
        assert listed.listed, [
            (v.rule_id, v.message) for e in listed.eligibility for v in e.decision.violations
        ]
        account = model_pb2.AccountRef(registry="guangdong", account="gd-cement")
        mirrors = []
        for block in (guangdong_ccer, gansu_ccer):
            moved = gateway.stub.SubmitTransfer(
                gateway_pb2.SubmitTransferRequest(
                    request_id=f"in-{block.id.serial_start}",
                    instruction=model_pb2.TransferInstruction(
                        source=model_pb2.AccountRef(registry="national", account="cn-gd-cement"),
                        destination=account,
                        units=[_selector(block.id, 0, block.quantity - 1)],
                    ),
                ),
                timeout=60,
            )
            assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
            mirrors.append(moved.credited_blocks[0].id)

        local = _surrender(
            gateway,
            "local",
            account,
            [_selector(mirrors[0], 0, 699)],
            "gd-cement",
            2023,
            "guangdong",
        )
        assert local.decision.allowed
        rest = _surrender(
            gateway,
            "rest",
            account,
            [_selector(mirrors[1], 0, 299)],
            "gd-cement",
            2023,
            "guangdong",
        )
        assert rest.decision.allowed
        with pytest.raises(grpc.RpcError) as over:
            _surrender(gateway, "over", account, [_selector(mirrors[1], 300, 300)], *GUANGDONG_2023)
        assert over.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CR-GD-0003" in (over.value.details() or "")
        assert "700 of 1001 offsets come from CN/Guangdong" in (over.value.details() or "")


def test_two_surrenders_at_once_cannot_both_take_the_last_of_the_limit(
    database_url: str, pilots: LinkedRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two surrenders of 3,000 CCER each, for a year whose limit is 5,000, asked at the same
    moment: whichever is decided second sees the first, and is refused. Each waits at its
    limit check (up to two seconds) for the other to arrive there too, so a gateway that
    decided them side by side would let both through."""
    power = pilot_entity("power-09", "power", 2019, 9_000_000)
    # Two holdings, so that neither surrender touches a row the other does.
    halves = [_ccer(9_000_001, 3_000, "HI", "0901"), _ccer(9_100_001, 3_000, "HI", "0902")]
    for half in halves:
        pilots.ports["national"].issue(
            IssueRequest(f"seed-{half.id.serial_start}", power.national_account, half)
        )
    both_checking = threading.Barrier(2)
    original = DatabaseEntityRecords.get

    def meeting(self: DatabaseEntityRecords, *args: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checking.wait(timeout=2)
        return original(self, *args)

    with running_gateway(database_url, pilots, **FAST_RETRIES) as gateway:
        gateway.server.import_registries()
        _record_entity(
            gateway, "power-09", "power", [("national", power.national_account)], ("national", 2019)
        )
        monkeypatch.setattr(DatabaseEntityRecords, "get", meeting)
        account = model_pb2.AccountRef(registry="national", account=power.national_account)

        def surrender(half: UnitBlock) -> grpc.StatusCode:
            try:
                _surrender(
                    gateway,
                    f"half-{half.id.serial_start}",
                    account,
                    [_selector(half.id, 0, half.quantity - 1)],
                    "power-09",
                    2019,
                    "national",
                )
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(2) as pool:
            codes = sorted(pool.map(surrender, halves), key=str)
    # 5% of 100,000 due: 5,000 CCER at most (CR-NAT-0002).
    assert codes == sorted([grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION], key=str)
