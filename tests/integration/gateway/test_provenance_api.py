"""The provenance log over gRPC: checkpoints, consistency, traces, offline audits, tampering."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import date
from typing import cast

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.audit_client import bundle_from_response
from gateway.convert import block_id_to_pb
from registry_bridge import invariants, merkle
from registry_bridge.audit import AuditFailure, bundle_from_json, verify_bundle
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.schema import LedgerEvent, MerkleHead, MerkleNode
from registry_bridge.signed_note import open_checkpoint, parse_verifier_key
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    hold_calls,
    live_rows_over,
)

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
SOLD = 300
RETIRED = 120
BENEFICIARY = "Shenzhen Example Manufacturing Co."


def _selector(block: BlockId) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(block=block_id_to_pb(block))


@dataclass
class Moved:
    """A gateway after the exchange journey: a sale to Shenzhen, then a partial retirement."""

    gateway: LiveGateway
    registries: LinkedRegistries
    mirror: BlockId
    earlier: model_pb2.Checkpoint
    """A checkpoint taken after the sale, before the retirement."""


@pytest.fixture
def moved(live_gateway: LiveGateway, registries: LinkedRegistries) -> Iterator[Moved]:
    stub = live_gateway.stub
    transfer = stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="trade-prov",
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                units=[_selector(BlockId(Program.VCS, "", START, START + SOLD - 1))],
            ),
        ),
        timeout=30,
    )
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED, transfer.failure_reason
    credited = transfer.credited_blocks[0].id
    mirror = BlockId(
        Program(credited.program),
        credited.serial_series,
        credited.serial_start,
        credited.serial_end,
    )
    earlier = stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=10)
    retired = BlockId(
        mirror.program, mirror.serial_series, mirror.serial_start, mirror.serial_start + RETIRED - 1
    )
    use = stub.Retire(
        gateway_pb2.RetireRequest(
            request_id="retire-prov",
            account=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
            units=[_selector(retired)],
            beneficiary=BENEFICIARY,
            claim_text="2025 scope 2",
        ),
        timeout=30,
    )
    assert use.decision.allowed, use.decision
    yield Moved(live_gateway, registries, mirror, earlier)


def _trace(moved: Moved, request: gateway_pb2.TraceUnitsRequest) -> gateway_pb2.TraceUnitsResponse:
    response: gateway_pb2.TraceUnitsResponse = moved.gateway.stub.TraceUnits(request, timeout=30)
    return response


def _bundle_json(response: gateway_pb2.TraceUnitsResponse, query: BlockId) -> dict[str, object]:
    return bundle_from_response(response, "verra", VERRA_SERIAL, query).to_json()


def test_checkpoints_are_signed_and_consistent(moved: Moved) -> None:
    stub = moved.gateway.stub
    later = stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=10)
    verifier = parse_verifier_key(later.verifier_key)
    opened = open_checkpoint(later.signed_note, verifier)
    assert (opened.size, opened.root) == (later.tree_size, later.root_hash)
    assert later.signed_note.startswith(f"{later.origin}\n{later.tree_size}\n")
    assert later.tree_size > moved.earlier.tree_size
    proof = stub.GetConsistencyProof(
        gateway_pb2.GetConsistencyProofRequest(
            first_size=moved.earlier.tree_size, second_size=later.tree_size
        ),
        timeout=10,
    )
    merkle.verify_consistency(
        moved.earlier.tree_size,
        later.tree_size,
        list(proof.hashes),
        moved.earlier.root_hash,
        later.root_hash,
    )
    # Every intermediate size, too: the stored tree answers for any pair.
    for first in range(1, later.tree_size + 1, 7):
        proof = stub.GetConsistencyProof(
            gateway_pb2.GetConsistencyProofRequest(first_size=first, second_size=later.tree_size),
            timeout=10,
        )
        assert proof.first_size == first and proof.second_size == later.tree_size
        assert len(proof.hashes) <= 2 * later.tree_size.bit_length()


@pytest.mark.parametrize(
    ("first", "second"),
    [(0, 1), (5, 3), (1, 10_000), (-1, 2)],
    ids=["zero", "shrinks", "beyond", "negative"],
)
def test_bad_consistency_sizes_are_invalid_arguments(moved: Moved, first: int, second: int) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        moved.gateway.stub.GetConsistencyProof(
            gateway_pb2.GetConsistencyProofRequest(first_size=first, second_size=second),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_trace_from_the_origin_serial_and_from_the_mirror_agree(moved: Moved) -> None:
    by_serial = _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL))
    mirror_part = BlockId(
        moved.mirror.program,
        moved.mirror.serial_series,
        moved.mirror.serial_start + 10,
        moved.mirror.serial_start + 20,
    )
    by_mirror = _trace(
        moved,
        gateway_pb2.TraceUnitsRequest(
            block=model_pb2.BlockId(
                program=mirror_part.program.value,
                serial_series=mirror_part.serial_series,
                serial_start=mirror_part.serial_start,
                serial_end=mirror_part.serial_end,
            )
        ),
    )
    kinds = [e.event.kind for e in by_mirror.events]
    assert kinds[0] == "issuance"
    assert {"split", "lock", "credit", "finalize", "retire"} <= set(kinds)
    # The mirror's units are a subset of the origin block: every event of theirs is in
    # the origin's trace too.
    assert {e.event.index for e in by_mirror.events} <= {e.event.index for e in by_serial.events}
    retirements = [
        json.loads(e.event.leaf_data) for e in by_mirror.events if e.event.kind == "retire"
    ]
    assert {r["beneficiary"] for r in retirements} == {BENEFICIARY}
    # Each proof verifies against the response's one checkpoint.
    checkpoint = by_mirror.checkpoint
    for traced in by_mirror.events:
        assert traced.proof.tree_size == checkpoint.tree_size
        merkle.verify_inclusion(
            traced.event.index,
            checkpoint.tree_size,
            _leaf(traced.event.leaf_data),
            list(traced.proof.hashes),
            checkpoint.root_hash,
        )
    report = verify_bundle(
        bundle_from_json(_bundle_json(by_mirror, mirror_part)),
        parse_verifier_key(checkpoint.verifier_key),
    )
    assert [(b.quantity, who) for b, who in report.retirements] == [(RETIRED, BENEFICIARY)] * 2
    finals = {(status, registry) for _, registry, _, status in report.final}
    assert ("retired", "shenzhen") in finals


def test_a_trace_with_events_left_out_is_refused(moved: Moved) -> None:
    response = _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL))
    trusted = parse_verifier_key(response.checkpoint.verifier_key)
    honest = _bundle_json(response, ORIGIN)
    verify_bundle(bundle_from_json(honest), trusted)
    events = cast(list[dict[str, object]], honest["events"])
    kinds = [json.loads(base64.b64decode(cast(str, e["leaf_data"])))["kind"] for e in events]
    # Without its retirements, the history would read as units still spendable.
    cut = [e for e, kind in zip(events, kinds, strict=True) if kind != "retire"]
    assert len(cut) < len(events)
    with pytest.raises(AuditFailure, match=r"leaves out events .* the history is incomplete"):
        verify_bundle(bundle_from_json({**honest, "events": cut}), trusted)
    with pytest.raises(AuditFailure, match="leaves out events"):
        verify_bundle(bundle_from_json({**honest, "events": events[:-1]}), trusted)


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def test_unknown_units_and_bad_queries(moved: Moved) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _trace(
            moved,
            gateway_pb2.TraceUnitsRequest(
                block=model_pb2.BlockId(program="VCS", serial_start=1, serial_end=5)
            ),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # As every message names a block (BlockId.label): "VCS/- 1-5" read as a series "-".
    assert caught.value.details() == "units VCS 1-5 not found"
    # Partly issued: the history of only the issued part would pass for the whole.
    issued = parse_serial("verra", VERRA_SERIAL).id
    for start, end, gap in [
        (issued.serial_start - 314, issued.serial_start, (-314, -1)),
        (issued.serial_end - 10, issued.serial_end + 90, (1, 90)),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            _trace(
                moved,
                gateway_pb2.TraceUnitsRequest(
                    block=model_pb2.BlockId(program="VCS", serial_start=start, serial_end=end)
                ),
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        edge = issued.serial_start if gap[0] < 0 else issued.serial_end
        assert f"units VCS {edge + gap[0]}-{edge + gap[1]} (part of the queried" in (
            caught.value.details() or ""
        )
    # The right serial numbers under another project, vintage and issuance.
    wrong = "9999-115597313-115597400-VCS-VCU-261-VER-US-14-7777-01012015-31122015-0"
    with pytest.raises(grpc.RpcError) as caught:
        _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=wrong))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "does not describe the units it numbers" in details
    for claim in ("project_id 7777 (issued as 1060)", "vintage_start 2015-01-01", "issuance_id"):
        assert claim in details
    right = "9660-115597313-115597400-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
    assert _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=right)).events
    with pytest.raises(grpc.RpcError) as caught:
        _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial="not-a-serial"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_payload_changed_behind_the_gateway_is_detected(moved: Moved) -> None:
    response = _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL))
    trusted = parse_verifier_key(response.checkpoint.verifier_key)
    honest = _bundle_json(response, ORIGIN)
    verify_bundle(bundle_from_json(honest), trusted)
    retire = next(e.event for e in response.events if e.event.kind == "retire")

    # A forger rewrites the beneficiary of a retirement, leaf hash and all.
    forged = retire.leaf_data.replace(BENEFICIARY.encode(), b"Someone Else Ltd.")
    assert forged != retire.leaf_data
    engine = moved.gateway.server.engine
    with engine.begin() as connection:
        connection.execute(
            sa.update(LedgerEvent)
            .where(LedgerEvent.idx == retire.index)
            .values(payload=forged, leaf_hash=_leaf(forged))
        )

    # The gateway still proves from the nodes it stored, so the forged event no longer
    # leads to the signed root: the offline audit refuses the bundle.
    tampered = _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL))
    with pytest.raises(AuditFailure, match="not in the log") as refused:
        verify_bundle(bundle_from_json(_bundle_json(tampered, ORIGIN)), trusted)
    # The first event checked whose proof holds the forged leaf: the forged event, or its
    # sibling leaf checked before it (the sibling's proof starts from the forged hash).
    assert str(refused.value).startswith((f"event {retire.index}:", f"event {retire.index ^ 1}:"))

    # A forger who also rebuilds the node cache gets bundles that verify on their own,
    # but the new checkpoint is not consistent with any checkpoint taken before.
    with engine.begin() as connection:
        connection.execute(sa.delete(MerkleNode))
        connection.execute(sa.update(MerkleHead).values(size=0))
    rebuilt = _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL))
    verify_bundle(bundle_from_json(_bundle_json(rebuilt, ORIGIN)), trusted)
    proof = moved.gateway.stub.GetConsistencyProof(
        gateway_pb2.GetConsistencyProofRequest(
            first_size=moved.earlier.tree_size, second_size=rebuilt.checkpoint.tree_size
        ),
        timeout=10,
    )
    # The retirement came after the earlier checkpoint: the old prefix is intact, so the
    # earlier checkpoint stays consistent, while the honest later one is not.
    merkle.verify_consistency(
        moved.earlier.tree_size,
        rebuilt.checkpoint.tree_size,
        list(proof.hashes),
        moved.earlier.root_hash,
        rebuilt.checkpoint.root_hash,
    )
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(
            response.checkpoint.tree_size,
            rebuilt.checkpoint.tree_size,
            list(
                moved.gateway.stub.GetConsistencyProof(
                    gateway_pb2.GetConsistencyProofRequest(
                        first_size=response.checkpoint.tree_size,
                        second_size=rebuilt.checkpoint.tree_size,
                    ),
                    timeout=10,
                ).hashes
            ),
            response.checkpoint.root_hash,
            rebuilt.checkpoint.root_hash,
        )


def test_an_early_event_changed_breaks_consistency_with_an_earlier_checkpoint(
    moved: Moved,
) -> None:
    engine = moved.gateway.server.engine
    with engine.begin() as connection:
        payload = connection.execute(
            sa.select(LedgerEvent.payload).where(LedgerEvent.idx == 0)
        ).scalar_one()
        forged = bytes(payload).replace(b'"active"', b'"retired"')
        assert forged != bytes(payload)
        connection.execute(
            sa.update(LedgerEvent)
            .where(LedgerEvent.idx == 0)
            .values(payload=forged, leaf_hash=_leaf(forged))
        )
        connection.execute(sa.delete(MerkleNode))
        connection.execute(sa.update(MerkleHead).values(size=0))
    later = moved.gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=10)
    proof = moved.gateway.stub.GetConsistencyProof(
        gateway_pb2.GetConsistencyProofRequest(
            first_size=moved.earlier.tree_size, second_size=later.tree_size
        ),
        timeout=10,
    )
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(
            moved.earlier.tree_size,
            later.tree_size,
            list(proof.hashes),
            moved.earlier.root_hash,
            later.root_hash,
        )


def test_a_holding_changed_at_a_registry_is_reported_by_reconcile(moved: Moved) -> None:
    stub = moved.gateway.stub
    clean = stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
    assert clean.consistent and clean.phase == "completed" and not clean.discrepancies

    # Shenzhen retires some active mirror units without the gateway knowing.
    store = moved.registries.emulators["shenzhen"].store
    victim = BlockId(
        moved.mirror.program,
        moved.mirror.serial_series,
        moved.mirror.serial_end - 9,
        moved.mirror.serial_end,
    )
    store.retire("behind-the-back", "sz-buyer", victim, (("beneficiary", "nobody"),))

    report = stub.Reconcile(gateway_pb2.ReconcileRequest(registries=["shenzhen"]), timeout=60)
    assert not report.consistent
    assert report.phase == "trail"
    phases = {d.phase for d in report.discrepancies}
    assert phases == {"totals", "unit_blocks", "trail"}
    totals = {
        (d.status, d.gateway_quantity, d.registry_quantity)
        for d in report.discrepancies
        if d.phase == "totals"
    }
    active = SOLD - RETIRED
    assert (model_pb2.HOLDING_STATUS_ACTIVE, active, active - 10) in totals
    assert (model_pb2.HOLDING_STATUS_RETIRED, RETIRED, RETIRED + 10) in totals
    blocks = [d for d in report.discrepancies if d.phase == "unit_blocks"]
    # Seen from both sides: the ledger's active block is not all active at Shenzhen, and
    # the ten retired units Shenzhen lists are none the ledger placed there retired.
    assert len(blocks) == 2
    assert all(d.block.serial_series == moved.mirror.serial_series for d in blocks)
    unknown = [d for d in blocks if d.gateway_quantity == 0]
    assert len(unknown) == 1 and unknown[0].registry_quantity == 10
    assert (unknown[0].block.serial_start, unknown[0].block.serial_end) == (
        victim.serial_start,
        victim.serial_end,
    )
    assert "the ledger has no such units there" in unknown[0].detail
    trail = [d for d in report.discrepancies if d.phase == "trail"]
    assert "credit" in trail[0].detail
    # Units made at a registry behind the gateway's back are named, block and account.
    phantom_block = UnitBlock(
        BlockId(Program.SZA, "", 900_000_000, 900_000_099),
        project_id="",
        country="CN",
        vintage_start=date(2024, 1, 1),
        vintage_end=date(2024, 12, 31),
    )
    store.issue("phantom", "sz-thief", phantom_block)
    report = stub.Reconcile(gateway_pb2.ReconcileRequest(registries=["shenzhen"]), timeout=60)
    phantom = [d for d in report.discrepancies if "sz-thief" in d.detail]
    assert [(d.phase, d.registry_quantity, d.block.serial_start) for d in phantom] == [
        ("unit_blocks", 100, 900_000_000)
    ]
    # Verra is untouched and still reconciles.
    assert stub.Reconcile(gateway_pb2.ReconcileRequest(registries=["verra"]), timeout=60).consistent
    with pytest.raises(grpc.RpcError) as caught:
        stub.Reconcile(gateway_pb2.ReconcileRequest(registries=["nowhere"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_replaying_the_traced_log_rebuilds_the_ledger(moved: Moved) -> None:
    response = _trace(moved, gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL))
    bodies = [(e.event.kind, json.loads(e.event.leaf_data)) for e in response.events]
    rebuilt, problems = invariants.replay(bodies)
    assert problems == []
    assert rebuilt == live_rows_over(moved.gateway, ORIGIN)
    assert any(state[2] == HoldingStatus.RETIRED.value for state in rebuilt.values())


def test_a_reconciliation_waiting_on_a_registry_holds_no_transfer_up(
    live_gateway: LiveGateway, registries: LinkedRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconciliation reads the ledger and then asks every registry, which takes long on
    a large ledger: the transfers meanwhile must not wait for it (on SQLite its
    transaction held the one write lock until it ended, and every write queued)."""
    asked, answer = hold_calls(monkeypatch, registries.emulators["verra"].store, "totals", 60)
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
        report = pool.submit(
            live_gateway.stub.Reconcile, gateway_pb2.ReconcileRequest(), timeout=90
        )
        try:
            assert asked.wait(timeout=30)
            transfer = live_gateway.stub.SubmitTransfer(
                gateway_pb2.SubmitTransferRequest(
                    request_id="during-reconcile",
                    instruction=model_pb2.TransferInstruction(
                        source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                        destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                        units=[_selector(BlockId(Program.VCS, "", START, START + 9))],
                    ),
                ),
                timeout=20,
            )
        finally:
            answer.set()
        assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED, transfer.failure_reason
        report.result(timeout=90)
    assert live_gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60).consistent
