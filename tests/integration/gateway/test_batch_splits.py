"""A batch of transfers from one held block splits it once per 32 of them, not once each,
and every serial's history still explains itself: traced, verified offline, replayed."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.audit_client import bundle_from_response
from gateway.convert import block_id_to_pb
from registry_bridge import db, invariants
from registry_bridge.audit import bundle_from_json, verify_bundle
from registry_bridge.model import BlockId, Program
from registry_bridge.schema import LedgerEvent
from registry_bridge.signed_note import parse_verifier_key
from tests.integration.gateway.conftest import VERRA_SERIAL, LiveGateway, live_rows_over

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
TRANSFERS = 70


def _one_unit(serial: int) -> gateway_pb2.SubmitTransferRequest:
    return gateway_pb2.SubmitTransferRequest(
        request_id=f"lot-{serial}",
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
            destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
            units=[
                model_pb2.UnitSelector(
                    block=block_id_to_pb(BlockId(Program.VCS, "", serial, serial))
                )
            ],
        ),
    )


def _submit_lots(gateway: LiveGateway, serials: list[int]) -> dict[int, str]:
    """Submit one-unit transfers of ``serials`` as one batch; their transfer ids by serial."""
    reply = gateway.stub.SubmitTransfers(
        gateway_pb2.SubmitTransfersRequest(
            request_id="lots", transfers=[_one_unit(s) for s in serials]
        ),
        timeout=60,
    )
    assert [r.transfer.state for r in reply.results] == [model_pb2.TRANSFER_STATE_COMPLETED] * len(
        serials
    ), [r.transfer.failure_reason for r in reply.results]
    return {
        s: r.transfer.name.removeprefix("transfers/")
        for s, r in zip(serials, reply.results, strict=True)
    }


def _splits(gateway: LiveGateway) -> list[dict[str, Any]]:
    with db.session_factory(gateway.server.engine)() as session:
        payloads = session.execute(
            sa.select(LedgerEvent.payload).where(LedgerEvent.kind == "split")
        ).scalars()
        return [json.loads(p) for p in payloads]


def test_a_batch_from_one_block_splits_it_once_per_32_transfers(
    live_gateway: LiveGateway,
) -> None:
    transferred = _submit_lots(live_gateway, [START + i for i in range(TRANSFERS)])

    splits = _splits(live_gateway)
    # 32, 32 and the last 6 lots, each split leaving one remainder (one split each before).
    assert [len(s["pieces"]) for s in splits] == [33, 33, 7]
    cut_for = {
        piece["serial_start"]: transfer
        for split in splits
        for piece, transfer in zip(split["pieces"], split["cut_for"], strict=True)
    }
    assert {s: cut_for[s] for s in transferred} == transferred
    assert cut_for[START + TRANSFERS] == ""  # the rest of the block, cut for no one
    with db.unit_of_work(db.session_factory(live_gateway.server.engine)) as session:
        assert invariants.check_ledger(session) == []


def test_every_lot_of_a_batch_is_traced_verified_and_replayed(live_gateway: LiveGateway) -> None:
    transferred = _submit_lots(live_gateway, [START + i for i in range(TRANSFERS)])
    lot = START + 40  # cut by the second split, for another transfer than the one cutting
    query = BlockId(Program.VCS, "", lot, lot)

    trace = live_gateway.stub.TraceUnits(
        gateway_pb2.TraceUnitsRequest(block=block_id_to_pb(query)), timeout=30
    )

    bodies = [json.loads(e.event.leaf_data) for e in trace.events]
    # The block's first split leaves the lot in its remainder; the second cuts it out.
    first, second = [b for b in bodies if b["kind"] == "split"]
    assert [p["serial_start"] for p in first["pieces"]][-1] == START + 32
    pieces = [p["serial_start"] for p in second["pieces"]]
    assert second["cut_for"][pieces.index(lot)] == transferred[lot]
    # The lot's lock, its next event, is its transfer's: cut for it, then locked by it.
    after = [e.event for e in trace.events if e.event.index > second["index"]]
    assert (after[0].kind, after[0].transfer) == ("lock", transferred[lot])
    verify_bundle(
        bundle_from_json(bundle_from_response(trace, "verra", VERRA_SERIAL, query).to_json()),
        parse_verifier_key(trace.checkpoint.verifier_key),
    )
    # The whole block's trace rebuilds its live rows.
    whole = [gateway_pb2.TraceUnitsResponse(next_page_token="")]
    while True:
        whole.append(
            live_gateway.stub.TraceUnits(
                gateway_pb2.TraceUnitsRequest(
                    registry="verra", serial=VERRA_SERIAL, page_token=whole[-1].next_page_token
                ),
                timeout=30,
            )
        )
        if not whole[-1].next_page_token:
            break
    rebuilt, problems = invariants.replay(
        [(e.event.kind, json.loads(e.event.leaf_data)) for page in whole for e in page.events]
    )
    assert problems == []
    assert rebuilt == live_rows_over(live_gateway, ORIGIN)
