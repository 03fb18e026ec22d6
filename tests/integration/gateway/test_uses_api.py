"""Retirements and surrenders through the public gRPC API: what the reply tells the holder."""

from __future__ import annotations

import json

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from registry_bridge.db import unit_of_work
from registry_bridge.schema import UnitUseRecord
from tests.integration.gateway.conftest import VERRA_SERIAL, LiveGateway

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
BUYER = model_pb2.AccountRef(registry="shenzhen", account="buyer")
SELLER = model_pb2.AccountRef(registry="hkmo", account="hk-seller")


def _selector(program: str, series: str, start: int, end: int) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=program, serial_series=series, serial_start=start, serial_end=end
        )
    )


def _bridge_to_shenzhen(
    gateway: LiveGateway, request_id: str, quantity: int
) -> model_pb2.UnitBlock:
    """Moves the first ``quantity`` Verra units from the venue to a Shenzhen buyer; the mirror."""
    moved = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id=request_id,
            instruction=model_pb2.TransferInstruction(
                source=SELLER,
                destination=BUYER,
                units=[_selector("VCS", "", START, START + quantity - 1)],
            ),
        ),
        timeout=30,
    )
    assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
    mirror: model_pb2.UnitBlock = moved.credited_blocks[0]
    return mirror


def test_a_retirement_names_the_holders_blocks_it_took_with_their_attributes(
    live_gateway: LiveGateway,
) -> None:
    mirror = _bridge_to_shenzhen(live_gateway, "to-retire", 50)
    m = mirror.id
    request = gateway_pb2.RetireRequest(
        request_id="retire-blocks",
        account=BUYER,
        units=[
            _selector(m.program, m.serial_series, m.serial_start, m.serial_start + 9),
            _selector(m.program, m.serial_series, m.serial_start + 20, m.serial_start + 24),
        ],
        beneficiary="Acme Ltd",
    )
    use = live_gateway.stub.Retire(request, timeout=30)
    # The holder's (Shenzhen mirror) serials, not the Verra origin behind them.
    assert [
        (b.id.program, b.id.serial_series, b.id.serial_start, b.id.serial_end) for b in use.blocks
    ] == [
        (m.program, m.serial_series, m.serial_start, m.serial_start + 9),
        (m.program, m.serial_series, m.serial_start + 20, m.serial_start + 24),
    ]
    assert [b.quantity for b in use.blocks] == [10, 5]
    for block in use.blocks:
        assert block.project_id == mirror.project_id != ""
        assert block.vintage_start == mirror.vintage_start
        assert block.unit_kind == mirror.unit_kind == model_pb2.UNIT_KIND_OFFSET_CREDIT
        assert block.methodology == mirror.methodology
    # The same request answered again names the same blocks.
    assert list(live_gateway.stub.Retire(request, timeout=30).blocks) == list(use.blocks)


def test_a_retirement_at_a_custody_venue_names_the_origin_serials_the_venue_holds(
    live_gateway: LiveGateway,
) -> None:
    use = live_gateway.stub.Retire(
        gateway_pb2.RetireRequest(
            request_id="retire-at-venue",
            account=SELLER,
            units=[_selector("VCS", "", START + 100, START + 119)],
            beneficiary="Acme Ltd",
        ),
        timeout=30,
    )
    assert [(b.id.program, b.id.serial_start, b.id.serial_end, b.quantity) for b in use.blocks] == [
        ("VCS", START + 100, START + 119, 20)
    ]
    assert use.blocks[0].country == "US"


def test_a_use_recorded_before_its_legs_kept_their_blocks_still_names_them(
    live_gateway: LiveGateway,
) -> None:
    mirror = _bridge_to_shenzhen(live_gateway, "to-retire-old", 30)
    m = mirror.id
    request = gateway_pb2.RetireRequest(
        request_id="retire-old",
        account=BUYER,
        units=[_selector(m.program, m.serial_series, m.serial_start + 5, m.serial_start + 14)],
        beneficiary="Acme Ltd",
    )
    first = live_gateway.stub.Retire(request, timeout=30)
    # As an older gateway recorded it: legs naming block ids only.
    with unit_of_work(live_gateway.server.bridge.sessions) as session:
        record = session.get(UnitUseRecord, first.name.removeprefix("uses/"))
        assert record is not None
        detail = json.loads(record.detail)
        for leg in detail["legs"]:
            leg.pop("unit", None)
        record.detail = json.dumps(detail, sort_keys=True)
    again = live_gateway.stub.Retire(request, timeout=30)
    assert list(again.blocks) == list(first.blocks)
    assert again.blocks[0].quantity == 10
    assert again.blocks[0].project_id == mirror.project_id
