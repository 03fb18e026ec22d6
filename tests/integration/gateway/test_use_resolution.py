"""A use done at one registry and refused at another: what GetUse shows of it, and the
hold on its units, over real gRPC on both databases.

The failed use is real: the Hong Kong venue's emulator refuses its ``RetireOnBehalf``
(FAILED_PRECONDITION, a final refusal) for as many calls as a test scripts, after Verra
has retired the origin units behind the venue's position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from adapters.serials import parse_serial
from registry_bridge.bridge import HELD_BY_FAILED_USE, venue_account
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import BlockStatusRequest
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.integration.gateway.test_metrics import scrape

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
UNITS = BlockId(Program.VCS, "", START, START + 9)
SELLER = model_pb2.AccountRef(registry="hkmo", account="hk-seller")
BUYER = model_pb2.AccountRef(registry="shenzhen", account="buyer")


def _selector(block: BlockId) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=block.program.value,
            serial_series=block.serial_series,
            serial_start=block.serial_start,
            serial_end=block.serial_end,
        )
    )


def _retirement(request_id: str, block: BlockId = UNITS) -> gateway_pb2.RetireRequest:
    return gateway_pb2.RetireRequest(
        request_id=request_id, account=SELLER, units=[_selector(block)], beneficiary="Acme Ltd"
    )


@contextmanager
def _venue_refusing(
    database_url: str, times: int
) -> Iterator[tuple[LiveGateway, LinkedRegistries]]:
    """A gateway whose Hong Kong venue refuses its first ``times`` retirements for good."""
    refusal = ScriptedRefusal("RetireOnBehalf", "FAILED_PRECONDITION", calls=times)
    with linked_registries({"hkmo": FaultConfig(refusals=(refusal,))}) as registries:
        registries.seed_venue()
        with running_gateway(
            database_url,
            registries,
            # The tests drive every use: no recovery loop settles one meanwhile.
            recovery_interval_seconds=3600,
            registry_retry_initial_wait_seconds=0.01,
            registry_retry_max_wait_seconds=0.02,
            metrics_listen="127.0.0.1:0",
        ) as gateway:
            yield gateway, registries


def _fail(gateway: LiveGateway, request_id: str = "retire-failing") -> str:
    """Retire ``UNITS`` at the venue, which refuses after Verra did its part; the use's name."""
    with pytest.raises(grpc.RpcError) as refused:
        gateway.stub.Retire(_retirement(request_id), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = gateway.stub.ListUses(
        gateway_pb2.ListUsesRequest(state=model_pb2.USE_STATE_FAILED), timeout=30
    )
    names = [str(u.name) for u in listed.uses if u.request_id == request_id]
    assert len(names) == 1, names
    return names[0]


def _refused(invoke: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        invoke()
    return caught.value.code(), caught.value.details() or ""


def _statuses(registries: LinkedRegistries, registry: str, block: BlockId) -> set[HoldingStatus]:
    return {h.status for h in registries.ports[registry].block_status(BlockStatusRequest(block))}


def _legs(use: model_pb2.UnitUse) -> list[tuple[str, bool, str]]:
    return [(leg.registry, leg.holder, model_pb2.UseLegState.Name(leg.state)) for leg in use.legs]


def test_a_failed_use_names_the_leg_done_and_the_leg_refused_and_why(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, registries):
        name = _fail(gateway)
        use = gateway.stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=30)
        assert use.state == model_pb2.USE_STATE_FAILED
        assert _legs(use) == [
            ("verra", False, "USE_LEG_STATE_DONE"),
            ("hkmo", True, "USE_LEG_STATE_REFUSED"),
        ]
        done, refused = use.legs
        assert done.account == venue_account("hkmo") and refused.account == "hk-seller"
        assert (refused.block.serial_start, refused.block.serial_end) == (START, START + 9)
        assert refused.refusal_code == "FAILED_PRECONDITION"
        assert "injected fault" in refused.refusal and done.refusal == ""
        assert "verra had already done its part" in use.refusal_reason
        # As the registries have it: retired at Verra, still held at the venue.
        assert _statuses(registries, "verra", UNITS) == {HoldingStatus.RETIRED}
        assert _statuses(registries, "hkmo", UNITS) == {HoldingStatus.ACTIVE}


def test_a_completed_use_names_every_leg_done(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, _):
        _fail(gateway, "spend-the-refusal")
        use = gateway.stub.Retire(
            _retirement("fine", BlockId(Program.VCS, "", START + 30, START + 39)), timeout=30
        )
        assert use.state == model_pb2.USE_STATE_COMPLETED
        assert _legs(use) == [
            ("verra", False, "USE_LEG_STATE_DONE"),
            ("hkmo", True, "USE_LEG_STATE_DONE"),
        ]
        assert [leg.refusal for leg in use.legs] == ["", ""]


def test_the_units_of_a_failed_use_are_refused_to_every_use_and_transfer(
    database_url: str,
) -> None:
    with _venue_refusing(database_url, 1) as (gateway, _):
        name = _fail(gateway)
        failed = ("carbonlink_uses_failed", (("kind", "retirement"),))
        assert scrape(gateway.server.metrics_port)[failed] == 1
        code, details = _refused(lambda: gateway.stub.Retire(_retirement("again"), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert HELD_BY_FAILED_USE in details and name in details
        # A part of them, in a transfer: rejected by the same rule, naming the use.
        part = BlockId(Program.VCS, "", START + 5, START + 14)
        moved = gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id="move-held",
                instruction=model_pb2.TransferInstruction(
                    source=SELLER, destination=BUYER, units=[_selector(part)]
                ),
            ),
            timeout=30,
        )
        assert moved.state == model_pb2.TRANSFER_STATE_REJECTED
        (violation,) = [v for v in moved.decision.violations if v.rule_id == HELD_BY_FAILED_USE]
        assert name in violation.message
        # The dry run says the same.
        decision = gateway.stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=moved.instruction), timeout=30
        ).decision
        assert HELD_BY_FAILED_USE in [v.rule_id for v in decision.violations]
        # Units the use did not touch move as before.
        other = gateway.stub.Retire(
            _retirement("other", BlockId(Program.VCS, "", START + 20, START + 29)), timeout=30
        )
        assert other.state == model_pb2.USE_STATE_COMPLETED
