"""Transfers, retirements and their refusals through the public gRPC API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core.admin import open_accounts
from adapters.serials import parse_serial
from gateway import paging
from registry_bridge.db import unit_of_work
from registry_bridge.model import HoldingStatus
from registry_bridge.port import BlockStatusRequest, ListHoldingsRequest
from registry_bridge.schema import TransferRecord
from registry_bridge.transfers import TransferState
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    check_invariants,
)

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start


def _block(start: int, end: int, program: str = "VCS", series: str = "") -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=program, serial_series=series, serial_start=start, serial_end=end
        )
    )


def _instruction(
    units: list[model_pb2.UnitSelector],
    source: tuple[str, str] = ("hkmo", "hk-seller"),
    destination: tuple[str, str] = ("shenzhen", "buyer"),
) -> model_pb2.TransferInstruction:
    return model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry=source[0], account=source[1]),
        destination=model_pb2.AccountRef(registry=destination[0], account=destination[1]),
        units=units,
    )


def _field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def test_submit_is_idempotent_on_request_id(live_gateway: LiveGateway) -> None:
    request = gateway_pb2.SubmitTransferRequest(
        request_id="trade-1", instruction=_instruction([_block(START, START + 99)])
    )
    first = live_gateway.stub.SubmitTransfer(request, timeout=30)
    assert first.state == model_pb2.TRANSFER_STATE_COMPLETED
    again = live_gateway.stub.SubmitTransfer(request, timeout=30)
    assert again.name == first.name
    assert again.state == first.state
    changed = gateway_pb2.SubmitTransferRequest(
        request_id="trade-1", instruction=_instruction([_block(START + 100, START + 199)])
    )
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.SubmitTransfer(changed, timeout=30)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "trade-1" in (caught.value.details() or "")


def test_a_native_serial_selects_units(
    live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    transfer = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="trade-serial",
            instruction=_instruction([model_pb2.UnitSelector(serial=VERRA_SERIAL)]),
        ),
        timeout=30,
    )
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED, transfer.failure_reason
    assert sum(b.quantity for b in transfer.credited_blocks) == 20745
    verra = registries.ports["verra"].block_status(BlockStatusRequest(ORIGIN))
    assert {h.status for h in verra} == {HoldingStatus.BRIDGED}


def test_bad_instruction_names_every_bad_field(live_gateway: LiveGateway) -> None:
    request = gateway_pb2.SubmitTransferRequest(
        request_id="bad-1",
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account=""),
            destination=model_pb2.AccountRef(registry="", account="x"),
            units=[model_pb2.UnitSelector(serial="not-a-serial")],
            intended_use="speculation",
        ),
    )
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.SubmitTransfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = _field_violations(caught.value)
    assert "instruction.source.account" in fields
    assert "instruction.destination.registry" in fields
    assert "instruction.units[0].serial" in fields
    assert "instruction.intended_use" in fields
    listed = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert list(listed.transfers) == []


def test_a_serial_past_the_largest_is_an_invalid_argument(live_gateway: LiveGateway) -> None:
    huge = "9660-1-99999999999999999999999-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    instruction = model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
        units=[model_pb2.UnitSelector(serial=huge)],
    )
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(request_id="huge-1", instruction=instruction),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "above the largest serial" in (caught.value.details() or "")
    assert _field_violations(caught.value) == ["instruction.units[0].serial"]


def test_a_serial_of_every_serial_is_an_invalid_argument(live_gateway: LiveGateway) -> None:
    # 0 to 2**63 - 1: each end fits, but the quantity, 2**63, fits no int64 of the reply.
    every = f"9660-0-{2**63 - 1}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.ParseSerial(
            gateway_pb2.ParseSerialRequest(registry="verra", serial=every), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more units than one block holds" in (caught.value.details() or "")


def test_missing_request_id_is_refused(live_gateway: LiveGateway) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(instruction=_instruction([_block(START, START)])),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field_violations(caught.value) == ["request_id"]


def test_a_page_token_forged_past_any_offset_is_an_invalid_argument(
    live_gateway: LiveGateway,
) -> None:
    # The same scope as the first page's token: only the offset is forged.
    first = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert first.next_page_token == ""
    forged = paging.encode_token(10**30, "transfers:0::*")
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.ListTransfers(
            gateway_pb2.ListTransfersRequest(page_token=forged), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field_violations(caught.value) == ["page_token"]


def test_units_not_held_end_rejected_and_change_nothing(
    live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    transfer = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="not-mine",
            instruction=_instruction([_block(START, START + 9)], source=("hkmo", "someone-else")),
        ),
        timeout=30,
    )
    assert transfer.state == model_pb2.TRANSFER_STATE_REJECTED
    # The units are not the source's: whose they are is their holder's business.
    assert "not held by hkmo/someone-else" in transfer.failure_reason
    assert "hk-seller" not in transfer.failure_reason
    assert not transfer.decision.allowed
    assert {v.rule_id for v in transfer.decision.violations} == {"CL-LEDGER-HOLDER"}
    states = {h.status for h in registries.ports["verra"].block_status(BlockStatusRequest(ORIGIN))}
    assert states == {HoldingStatus.ACTIVE}


def test_batch_settles_each_instruction_on_its_own(live_gateway: LiveGateway) -> None:
    reply = live_gateway.stub.SubmitTransfers(
        gateway_pb2.SubmitTransfersRequest(
            request_id="batch-1",
            transfers=[
                gateway_pb2.SubmitTransferRequest(
                    request_id="b-1", instruction=_instruction([_block(START, START + 9)])
                ),
                gateway_pb2.SubmitTransferRequest(
                    request_id="b-2", instruction=_instruction([_block(START, START + 9)])
                ),
                gateway_pb2.SubmitTransferRequest(
                    request_id="", instruction=_instruction([_block(START + 10, START + 19)])
                ),
                gateway_pb2.SubmitTransferRequest(
                    request_id="b-4", instruction=_instruction([_block(START + 20, START + 29)])
                ),
            ],
        ),
        timeout=60,
    )
    outcomes = [r.WhichOneof("outcome") for r in reply.results]
    assert outcomes == ["transfer", "transfer", "error", "transfer"]
    assert reply.results[0].transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
    # The second instruction asked for units the first had just moved.
    assert reply.results[1].transfer.state == model_pb2.TRANSFER_STATE_REJECTED
    assert reply.results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.results[3].transfer.state == model_pb2.TRANSFER_STATE_COMPLETED


def test_batch_results_follow_the_instructions_order(live_gateway: LiveGateway) -> None:
    # Request ids cannot match results to instructions here: two are missing and two
    # repeat, so the position must.
    good = _instruction([_block(START, START + 9)])
    bad = _instruction([_block(START + 9, START)])
    reply = live_gateway.stub.SubmitTransfers(
        gateway_pb2.SubmitTransfersRequest(
            request_id="batch-order",
            transfers=[
                gateway_pb2.SubmitTransferRequest(request_id="", instruction=good),
                gateway_pb2.SubmitTransferRequest(request_id="same", instruction=good),
                gateway_pb2.SubmitTransferRequest(request_id="", instruction=good),
                gateway_pb2.SubmitTransferRequest(request_id="same", instruction=bad),
            ],
        ),
        timeout=60,
    )
    outcomes = [(r.request_id, r.WhichOneof("outcome")) for r in reply.results]
    assert outcomes == [("", "error"), ("same", "transfer"), ("", "error"), ("same", "error")]
    assert reply.results[1].transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
    assert "transfers[3].instruction.units[0].block" in reply.results[3].error.message


def test_get_list_and_watch(live_gateway: LiveGateway) -> None:
    created = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="watch-me", instruction=_instruction([_block(START, START + 4)])
        ),
        timeout=30,
    )
    fetched = live_gateway.stub.GetTransfer(
        gateway_pb2.GetTransferRequest(name=created.name), timeout=30
    )
    assert fetched == created
    watched = list(
        live_gateway.stub.WatchTransfer(
            gateway_pb2.WatchTransferRequest(name=created.name), timeout=30
        )
    )
    assert watched[-1].state == model_pb2.TRANSFER_STATE_COMPLETED
    completed = live_gateway.stub.ListTransfers(
        gateway_pb2.ListTransfersRequest(state=model_pb2.TRANSFER_STATE_COMPLETED), timeout=30
    )
    assert [t.name for t in completed.transfers] == [created.name]
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.GetTransfer(
            gateway_pb2.GetTransferRequest(name="transfers/nope"), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_retire_mirror_retires_origin_and_is_idempotent(
    live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    transfer = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="to-retire", instruction=_instruction([_block(START, START + 49)])
        ),
        timeout=30,
    )
    mirror = transfer.credited_blocks[0].id
    request = gateway_pb2.RetireRequest(
        request_id="retire-1",
        account=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
        units=[
            _block(
                mirror.serial_start, mirror.serial_start + 9, mirror.program, mirror.serial_series
            )
        ],
        beneficiary="Acme Ltd",
        claim_text="2025 travel",
    )
    use = live_gateway.stub.Retire(request, timeout=30)
    assert use.beneficiary == "Acme Ltd"
    assert live_gateway.stub.Retire(request, timeout=30).name == use.name
    verra = {
        (h.block.id.serial_start, h.block.id.serial_end): h.status
        for h in registries.ports["verra"].block_status(BlockStatusRequest(ORIGIN))
    }
    assert verra[(START, START + 9)] == HoldingStatus.RETIRED
    assert verra[(START + 10, START + 49)] == HoldingStatus.BRIDGED
    # Double use: the same units cannot be retired twice.
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.Retire(
            gateway_pb2.RetireRequest(
                request_id="retire-2",
                account=request.account,
                units=request.units,
                beneficiary="Someone else",
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "retired" in (caught.value.details() or "")


def _page_through(
    gateway: LiveGateway,
    state: model_pb2.TransferState.ValueType,
    between_pages: Callable[[int], None],
) -> list[str]:
    """Every transfer name a client reads paging one at a time; ``between_pages(n)`` runs
    after the n-th page."""
    names: list[str] = []
    token = ""
    for n in range(1, 50):
        page = gateway.stub.ListTransfers(
            gateway_pb2.ListTransfersRequest(page_size=1, page_token=token, state=state),
            timeout=30,
        )
        names.extend(t.name for t in page.transfers)
        between_pages(n)
        token = page.next_page_token
        if not token:
            return names
    raise AssertionError("paging never ended")


def test_paging_neither_skips_nor_repeats_while_transfers_change(
    live_gateway: LiveGateway,
) -> None:
    # Offset paging skipped a transfer when one already read left the filtered state, and
    # repeated one when a transfer created earlier was committed after the client began.
    names = [
        live_gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id=f"paged-{i}",
                instruction=_instruction([_block(START + 10 * i, START + 10 * i + 4)]),
            ),
            timeout=30,
        ).name
        for i in range(5)
    ]
    ids = [n.removeprefix("transfers/") for n in names]
    sessions = live_gateway.server.bridge.sessions
    with unit_of_work(sessions) as session:
        # Two transfers created in the same microsecond: their ids order them.
        same = datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=UTC)
        for i, transfer_id in enumerate(ids):
            at = same if i >= 3 else same - timedelta(seconds=10 - i)
            session.execute(
                sa.update(TransferRecord)
                .where(TransferRecord.id == transfer_id)
                .values(created_at=at)
            )
    expected = names[:3] + sorted(names[3:], key=lambda n: n.removeprefix("transfers/"))

    def meanwhile(page: int) -> None:
        if page == 1:
            with unit_of_work(sessions) as session:
                # The first transfer read leaves the state listed (it stands for a
                # transfer in flight moving on; a final state keeps recovery away).
                session.execute(
                    sa.update(TransferRecord)
                    .where(TransferRecord.id == ids[0])
                    .values(state=TransferState.ROLLED_BACK.value)
                )
        if page != 3:
            return
        with unit_of_work(sessions) as session:
            # A transfer created before the first one but committed only now.
            late = session.get(TransferRecord, ids[1])
            assert late is not None
            session.add(
                TransferRecord(
                    **{
                        c.key: getattr(late, c.key)
                        for c in sa.inspect(TransferRecord).column_attrs
                        if c.key not in ("id", "request_id", "created_at")
                    },
                    id="0" * 32,
                    request_id="committed-late",
                    created_at=same - timedelta(seconds=60),
                )
            )

    completed = model_pb2.TRANSFER_STATE_COMPLETED
    assert _page_through(live_gateway, completed, meanwhile) == expected


def test_an_offset_page_token_of_an_earlier_server_is_refused_by_name(
    live_gateway: LiveGateway,
) -> None:
    for i in range(2):
        live_gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id=f"old-token-{i}",
                instruction=_instruction([_block(START + 10 * i, START + 10 * i + 4)]),
            ),
            timeout=30,
        )
    first = live_gateway.stub.ListTransfers(
        gateway_pb2.ListTransfersRequest(page_size=1), timeout=30
    )
    assert first.next_page_token
    old = paging.encode_token(1, "transfers:0::*")
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.ListTransfers(
            gateway_pb2.ListTransfersRequest(page_size=1, page_token=old), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field_violations(caught.value) == ["page_token"]
    assert "start the listing again" in (caught.value.details() or "")


def test_a_transfer_to_an_account_not_open_rolls_back_until_it_is_opened(
    database_url: str, live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    units = _instruction([_block(START, START + 9)], destination=("shenzhen", "buyre"))
    refused = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(request_id="typo", instruction=units), timeout=30
    )
    assert refused.state == model_pb2.TRANSFER_STATE_ROLLED_BACK
    said = "the destination account 'buyre' is not open at registry shenzhen"
    assert said in refused.failure_reason
    fetched = live_gateway.stub.GetTransfer(
        gateway_pb2.GetTransferRequest(name=refused.name), timeout=30
    )
    assert fetched.state == model_pb2.TRANSFER_STATE_ROLLED_BACK and said in fetched.failure_reason
    # The source's units are active again, at the venue and at their origin, and nothing
    # reached the destination.
    for registry in ("hkmo", "verra"):
        held = registries.ports[registry].block_status(BlockStatusRequest(ORIGIN))
        assert {h.status for h in held} == {HoldingStatus.ACTIVE}, registry
    assert not registries.ports["shenzhen"].list_holdings(ListHoldingsRequest("buyre"))
    check_invariants(database_url, registries.ports)

    # Once the registry opens the account, the same units go through.
    open_accounts(registries.emulators["shenzhen"].target, ["buyre"])
    done = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(request_id="typo-fixed", instruction=units), timeout=30
    )
    assert done.state == model_pb2.TRANSFER_STATE_COMPLETED, done.failure_reason
    assert [
        h.account for h in registries.ports["shenzhen"].list_holdings(ListHoldingsRequest("buyre"))
    ] == ["buyre"]
    check_invariants(database_url, registries.ports)
