"""Protobuf conversion of the provenance log's and reconciliation's domain objects.

Part of the gRPC edge, like ``gateway.convert``: generated types stop here.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway import convert, error_mapping
from registry_bridge.merkle_store import StoredProof
from registry_bridge.provenance import SignedCheckpoint, TracePage
from registry_bridge.reconcile import Discrepancy, ReconcileReport
from registry_bridge.reconciliations import Reconciliation


def checkpoint_to_pb(signed: SignedCheckpoint) -> model_pb2.Checkpoint:
    """A signed checkpoint as the API's Checkpoint."""
    return model_pb2.Checkpoint(
        origin=signed.checkpoint.origin,
        tree_size=signed.checkpoint.size,
        root_hash=signed.checkpoint.root,
        signed_note=signed.note,
        verifier_key=signed.verifier_key,
    )


def consistency_to_pb(first: int, proof: StoredProof) -> model_pb2.ConsistencyProof:
    """A consistency proof from ``first`` to ``proof.size`` leaves."""
    return model_pb2.ConsistencyProof(
        first_size=first, second_size=proof.size, hashes=list(proof.hashes)
    )


def trace_page_to_pb(page: TracePage) -> gateway_pb2.TraceUnitsResponse:
    """A page of a trace: its checkpoint, its events with their inclusion proofs, and its
    note (the next page's token is the servicer's)."""
    events = []
    for event in page.events:
        at = timestamp_pb2.Timestamp()
        at.FromDatetime(event.at)
        events.append(
            gateway_pb2.TracedEvent(
                event=model_pb2.ProvenanceEvent(
                    index=event.index,
                    kind=event.kind,
                    time=at,
                    blocks=[convert.block_id_to_pb(b) for b in event.blocks],
                    transfer=event.transfer_id,
                    leaf_data=event.leaf_data,
                ),
                proof=model_pb2.InclusionProof(
                    leaf_index=event.index,
                    tree_size=page.checkpoint.checkpoint.size,
                    hashes=list(event.proof),
                ),
            )
        )
    return gateway_pb2.TraceUnitsResponse(
        checkpoint=checkpoint_to_pb(page.checkpoint), events=events, trace_note=page.trace_note
    )


def report_to_pb(
    report: ReconcileReport, persistent: Sequence[Discrepancy] = (), reconciliation_id: int = 0
) -> gateway_pb2.ReconcileReport:
    """A reconciliation report (``persistent``: the differences to mark so); an unreadable
    registry's error is mapped as an RPC's is."""
    marked = set(persistent)
    return gateway_pb2.ReconcileReport(
        reconciliation_id=reconciliation_id,
        phase=report.phase,
        consistent=report.consistent,
        discrepancies=[
            gateway_pb2.Discrepancy(
                registry=d.registry,
                phase=d.phase,
                program=d.program.value if d.program is not None else "",
                status=(
                    convert.HOLDING_STATUS[d.status]
                    if d.status is not None
                    else model_pb2.HOLDING_STATUS_UNSPECIFIED
                ),
                gateway_quantity=d.gateway_quantity,
                registry_quantity=d.registry_quantity,
                block=convert.block_id_to_pb(d.block) if d.block is not None else None,
                detail=d.detail,
                persistent=d in marked,
                differing=[convert.block_id_to_pb(b) for b in d.differing],
            )
            for d in report.discrepancies
        ],
        unreadable_registries=[
            gateway_pb2.UnreadableRegistry(
                registry=u.registry, error=error_mapping.to_rpc_status(u.error)
            )
            for u in report.unreadable
        ],
    )


def reconciliation_to_pb(run: Reconciliation) -> gateway_pb2.Reconciliation:
    """A recorded reconciliation run."""
    return gateway_pb2.Reconciliation(
        id=run.id,
        trigger=run.trigger,
        requested_by=run.requested_by,
        runner=run.runner,
        registries=run.registries,
        state=run.state,
        started_at=convert.timestamp(run.started_at),
        ended_at=None if run.ended_at is None else convert.timestamp(run.ended_at),
        report=(
            None
            if run.report is None
            else report_to_pb(run.report, run.persistent, reconciliation_id=run.id)
        ),
        failure=run.failure,
    )
