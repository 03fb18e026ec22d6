"""The auditor's journey of ``carbonlink demo``: trace units, verify offline, reconcile.

The auditor trusts only the log key it was given out of band (here: derived from the
demo's key file, not asked of the gateway), traces the units the exchange journey moved
from their Verra serial, finds their Shenzhen mirror in that history, traces the mirror
too, writes each audit bundle to disk and verifies it with the offline verifier, reads
the exchange journey's retirement back (ListUses, GetUse) and checks it completed, then
checks that a later checkpoint is consistent with the first and that every registry
reconciles with the gateway.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import parse_serial
from gateway import convert
from gateway.audit_client import bundle_lines, trace_pages
from gateway.audit_offline import describe, write_atomically
from gateway.log_keys import write_new_key
from registry_bridge import merkle
from registry_bridge.audit import AuditFailure, AuditReport, verify_lines
from registry_bridge.model import BlockId
from registry_bridge.signed_note import NoteSigner, Verifier

LOG_ORIGIN = "carbonlink.local/provenance"


def demo_log_key(workdir: Path) -> Path:
    """The demo's log signing key file, created on first use."""
    path = workdir / "log-signing-key.pem"
    if not path.exists():
        write_new_key(path)
    return path


def _say(text: str = "") -> None:
    print(text, flush=True)


def _audit(
    gateway: gateway_pb2_grpc.LinkageGatewayStub,
    request: gateway_pb2.TraceUnitsRequest,
    query: BlockId,
    bundle_path: Path,
    trusted: Verifier,
    failure: type[Exception],
) -> tuple[gateway_pb2.TraceUnitsResponse, AuditReport]:
    pages = trace_pages(gateway, request, timeout=30)
    try:
        # Written a page at a time as the pages come, then read back from disk a line at
        # a time, as an auditor elsewhere would.
        first = next(pages)
        lines = bundle_lines(
            itertools.chain([first], pages), request.registry, request.serial, query
        )
        write_atomically(bundle_path, lines)
    except ValueError as exc:
        raise failure(f"tracing {describe(query)}: {exc}") from exc
    try:
        with bundle_path.open(encoding="utf-8") as written:
            report = verify_lines(written, trusted)
    except AuditFailure as exc:
        raise failure(f"audit of {bundle_path.name} failed: {exc}") from exc
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items()))
    _say(
        f"   {bundle_path.name}: {report.events} events, every proof verified offline "
        f"against checkpoint size {report.tree_size} ({kinds})"
    )
    for block, beneficiary in report.retirements:
        _say(f"     retired {block.quantity} units {describe(block)} for {beneficiary}")
    # Every page has the first's checkpoint: the caller reads it there.
    return first, report


def journey_auditor(
    channel: grpc.Channel,
    workdir: Path,
    verra_serial: str,
    failure: type[Exception],
) -> None:
    """Trace the exchange journey's units, verify the bundles offline, then reconcile.

    Args:
        channel: A channel to the gateway.
        workdir: Where the audit bundles are written (next to the demo's log key).
        verra_serial: The Verra serial the exchange journey sold from.
        failure: The exception to raise when the journey does not end as it must.
    """
    _say()
    _say("== auditor: trace units from any registry's serial and verify the answer offline")
    gateway = gateway_pb2_grpc.LinkageGatewayStub(channel)
    trusted = NoteSigner.from_pem(LOG_ORIGIN, demo_log_key(workdir).read_bytes()).verifier
    _say(f"   trusted log key (from the operator, out of band): {trusted.encode()[:48]}...")

    origin = parse_serial("verra", verra_serial).id
    first, report = _audit(
        gateway,
        gateway_pb2.TraceUnitsRequest(registry="verra", serial=verra_serial),
        origin,
        workdir / "audit-verra.jsonl",
        trusted,
        failure,
    )
    mirrors = sorted(
        block
        for block, registry, _, _ in report.final
        if registry == "shenzhen" and block.serial_series
    )
    if not mirrors:
        raise failure("the Verra units' history shows no Shenzhen mirror")
    mirror = mirrors[0]
    _say(f"   the history shows a Shenzhen mirror {describe(mirror)}; tracing it")
    _audit(
        gateway,
        gateway_pb2.TraceUnitsRequest(block=convert.block_id_to_pb(mirror)),
        mirror,
        workdir / "audit-shenzhen-mirror.jsonl",
        trusted,
        failure,
    )

    retirements = gateway.ListUses(gateway_pb2.ListUsesRequest(kind="retirement"), timeout=30).uses
    if not retirements:
        raise failure("ListUses shows no retirement, though the exchange journey made one")
    use = gateway.GetUse(gateway_pb2.GetUseRequest(name=retirements[0].name), timeout=30)
    state = model_pb2.UseState.Name(use.state).removeprefix("USE_STATE_").lower()
    if use.state != model_pb2.USE_STATE_COMPLETED:
        raise failure(f"{use.name} is {state}, not completed: {use.refusal_reason}")
    units = sum(b.quantity for b in use.blocks)
    _say(
        f"   GetUse {use.name}: {use.kind} of {units} units at "
        f"{use.account.registry}:{use.account.account} for {use.beneficiary}, {state}"
    )

    latest = gateway.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=10)
    proof = gateway.GetConsistencyProof(
        gateway_pb2.GetConsistencyProofRequest(
            first_size=first.checkpoint.tree_size, second_size=latest.tree_size
        ),
        timeout=10,
    )
    try:
        merkle.verify_consistency(
            first.checkpoint.tree_size,
            latest.tree_size,
            list(proof.hashes),
            first.checkpoint.root_hash,
            latest.root_hash,
        )
    except merkle.ProofError as exc:
        raise failure(f"the log is not consistent with its earlier checkpoint: {exc}") from exc
    if latest.tree_size == first.checkpoint.tree_size:
        _say(f"   the latest checkpoint is the traced one: size {latest.tree_size}, same root")
    else:
        _say(
            f"   checkpoint {latest.tree_size} is consistent with checkpoint "
            f"{first.checkpoint.tree_size} ({len(proof.hashes)}-hash proof)"
        )

    reconciled = gateway.Reconcile(gateway_pb2.ReconcileRequest(), timeout=120)
    consistent = str(reconciled.consistent).lower()
    _say(f"   Reconcile (totals, unit blocks, trail): consistent={consistent}")
    for unread in reconciled.unreadable_registries:
        _say(f"     [unreadable] {unread.registry}: {unread.error.message}")
    for item in reconciled.discrepancies:
        _say(f"     [{item.phase}] {item.registry}: {item.detail}")
    if not reconciled.consistent:
        raise failure("the registries do not reconcile with the gateway")
    (recorded,) = gateway.ListReconciliations(
        gateway_pb2.ListReconciliationsRequest(page_size=1), timeout=30
    ).reconciliations
    if recorded.id != reconciled.reconciliation_id or not recorded.requested_by:
        raise failure(f"reconciliation {reconciled.reconciliation_id} is not on record")
    _say(
        f"   on record: reconciliation {recorded.id}, asked for by {recorded.requested_by}, "
        f"run by gateway {recorded.runner}, {recorded.state}"
    )
