"""An emulated China national registry (CEA allowances, CCER credits), DES-style.

Proposals are checked and applied at once (this registry is its own transaction log):
an accepted proposal answers its final DES status, a refused one REJECTED 6 with the
response code and the offending unit blocks, after the Kyoto ITL.  Units arriving from
other registries get mirror blocks with serials of this registry's own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc

from adapters._pb.registries.national.v1 import national_pb2 as pb
from adapters._pb.registries.national.v1 import national_pb2_grpc as pb_grpc
from adapters.client_core import from_rfc3339, to_rfc3339
from adapters.emulator_core import (
    CreditMode,
    EmulatorSpec,
    PageAsked,
    Rejection,
    Store,
    StoredHolding,
    UnitState,
    native_rules,
    required_moment,
    serve_batch,
    serve_page,
)
from adapters.national.client import (
    REGISTRY_CODE,
    REGISTRY_ID,
    block_from_native,
    block_to_native,
    identifier_from_native,
    identifier_to_native,
)
from registry_bridge.model import BlockId, Program

_STATE: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.BLOCK_HELD,
    UnitState.LOCKED: pb.BLOCK_RESERVED,
    UnitState.IMMOBILIZED: pb.BLOCK_IMMOBILIZED,
    UnitState.RETIRED: pb.BLOCK_RETIRED,
    UnitState.CANCELLED: pb.BLOCK_CANCELLED,
    UnitState.SURRENDERED: pb.BLOCK_SURRENDERED,
    UnitState.EXPORTED: pb.BLOCK_EXPORTED,
}

# The DES status an accepted proposal ends in, per (type, supplementary type); the
# operation log's method name gives it back for GetTransactionStatus.
_ACCEPTED_STATUS: dict[str, int] = {
    "issue": pb.COMPLETED,
    "lock": pb.PROPOSED,
    "unlock": pb.TERMINATED,
    "finalize": pb.COMPLETED,
    "credit": pb.ACCEPTED,
    "reactivate": pb.ACCEPTED,
    "retire": pb.COMPLETED,
    "surrender": pb.COMPLETED,
    "cancel": pb.COMPLETED,
}


def _held(held: StoredHolding) -> pb.HeldUnitBlock:
    return pb.HeldUnitBlock(
        block=block_to_native(held.block),
        account_identifier=held.account,
        state=_STATE[held.state],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        reservation_expiry=to_rfc3339(held.lock_expires_at),
        notification_identifier=held.lock_transfer,
        mirror_of=None if held.mirror_of is None else identifier_to_native(held.mirror_of),
        mirror_origin_registry_code=held.mirror_registry if held.mirror_of else "",
    )


class NationalServicer(pb_grpc.NationalRegistryServicer):
    """The national registry's DES operations, translated to the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _only_block(self, tx: pb.ProposalTransaction) -> pb.TransactionUnitBlock:
        if len(tx.proposal_unit_blocks) != 1:
            raise Rejection(
                "INVALID_REQUEST",
                f"a proposal here carries one unit block, not {len(tx.proposal_unit_blocks)}",
            )
        return tx.proposal_unit_blocks[0]

    def _apply(self, tx: pb.ProposalTransaction) -> StoredHolding:
        store = self._store
        op = tx.transaction_identifier
        block = self._only_block(tx)

        def block_id() -> BlockId:
            return identifier_from_native(block.identifier)

        source = tx.transferring_account_identifier
        kind = (tx.transaction_type, tx.supp_transaction_type)
        handlers: dict[tuple[int, int], Callable[[], StoredHolding]] = {
            (pb.ISSUANCE, pb.SUPP_TRANSACTION_TYPE_UNSPECIFIED): lambda: store.issue(
                op, tx.acquiring_account_identifier, block_from_native(block)
            ),
            (pb.EXTERNAL_TRANSFER, pb.RESERVE): lambda: store.lock(
                op, source, block_id(), _expiry(tx), tx.notification_identifier
            ),
            (pb.EXTERNAL_TRANSFER, pb.TERMINATE): lambda: store.unlock(
                op, source, block_id(), tx.notification_identifier
            ),
            (pb.EXTERNAL_TRANSFER, pb.COMPLETE_IMMOBILIZE): lambda: store.finalize(
                op,
                source,
                block_id(),
                tx.notification_identifier,
                export=False,
                details=(("acquiring_registry", tx.acquiring_registry_code),),
            ),
            (pb.EXTERNAL_TRANSFER, pb.COMPLETE_EXPORT): lambda: store.finalize(
                op,
                source,
                block_id(),
                tx.notification_identifier,
                export=True,
                details=(("acquiring_registry", tx.acquiring_registry_code),),
            ),
            (pb.EXTERNAL_TRANSFER, pb.ACQUIRE): lambda: store.credit(
                op,
                tx.acquiring_account_identifier,
                block_from_native(block),
                tx.transferring_registry_code,
                tx.notification_identifier,
                deadline=from_rfc3339(tx.acquisition_deadline),
            ),
            (pb.RETIREMENT, pb.VOLUNTARY): lambda: store.retire(
                op,
                source,
                block_id(),
                (("beneficiary", tx.retirement_beneficiary), ("claim", tx.comment)),
            ),
            (pb.RETIREMENT, pb.COMPLIANCE): lambda: store.surrender(
                op,
                source,
                block_id(),
                (("entity", tx.entity_identifier), ("year", str(tx.compliance_year))),
            ),
            (pb.CANCELLATION, pb.SUPP_TRANSACTION_TYPE_UNSPECIFIED): lambda: store.cancel(
                op, source, block_id(), (("reason", tx.comment),)
            ),
        }
        handler = handlers.get(kind)
        if handler is None:
            raise Rejection(
                "UNSUPPORTED_TRANSACTION",
                f"transaction type {kind[0]} / supplementary {kind[1]} is not handled here",
            )
        return handler()

    def _accept(self, request: pb.ProposalRequest) -> pb.ProposalResponse:
        """One proposal's response; raises ``Rejection`` only for a misaddressed proposal."""
        tx = request.proposed_transaction
        if request.to != REGISTRY_CODE:
            raise Rejection("WRONG_REGISTRY", f"proposal is for {request.to!r}, not CN")
        try:
            held = self._apply(tx)
        except Rejection as rejection:
            return _rejected(request, rejection)
        except ValueError as exc:
            return _rejected(request, Rejection("INVALID_REQUEST", str(exc)))
        record = self._store.operation(tx.transaction_identifier)
        method = record.method if record is not None else "issue"
        return pb.ProposalResponse(
            transaction_identifier=tx.transaction_identifier,
            transaction_status=_ACCEPTED_STATUS[method],  # type: ignore[arg-type]
            # NOTE(registry-adapters): enum NewType, as above.
            resulting_block=_held(held),
        )

    def AcceptProposal(
        self, request: pb.ProposalRequest, context: grpc.ServicerContext
    ) -> pb.ProposalResponse:
        """Check and apply one proposal; a refusal is answered as REJECTED 6."""
        with native_rules(context):
            return self._accept(request)

    def AcceptProposals(
        self, request: pb.ProposalBatchRequest, context: grpc.ServicerContext
    ) -> pb.ProposalBatchResponse:
        """Check and apply many proposals, each as ``AcceptProposal``, in one transaction.

        A misaddressed proposal, which ``AcceptProposal`` refuses as a call, is answered
        here as REJECTED with the same code and message, so it does not sink the others.
        """
        with native_rules(context):
            responses = serve_batch(self._store, request.proposals, self._accept, _rejected)
            return pb.ProposalBatchResponse(responses=responses)

    def GetTransactionStatus(
        self, request: pb.TransactionStatusRequest, context: grpc.ServicerContext
    ) -> pb.TransactionStatusResponse:
        """The recorded status of a transaction (NOT_FOUND if it never reached us)."""
        with native_rules(context):
            record = self._store.operation(request.transaction_identifier)
            if record is None:
                raise Rejection(
                    "UNITS_NOT_FOUND", f"no transaction {request.transaction_identifier}"
                )
            if record.rejection is not None:
                return pb.TransactionStatusResponse(
                    transaction_identifier=record.operation_id,
                    transaction_status=pb.REJECTED,
                    transaction_status_date_time=record.recorded_at.isoformat(),
                    evaluation_results=[
                        pb.EvaluationResult(
                            response_code=record.rejection.code,
                            message=record.rejection.message,
                        )
                    ],
                )
            return pb.TransactionStatusResponse(
                transaction_identifier=record.operation_id,
                transaction_status=_ACCEPTED_STATUS[record.method],  # type: ignore[arg-type]
                # NOTE(registry-adapters): enum NewType, as above.
                transaction_status_date_time=record.recorded_at.isoformat(),
            )

    def ProvideTotals(
        self, request: pb.ProvideTotalsRequest, context: grpc.ServicerContext
    ) -> pb.ProvideTotalsResponse:
        """Quantities per originating program and block state (reconciliation phase 1)."""
        with native_rules(context):
            return pb.ProvideTotalsResponse(
                totals=[
                    pb.ProgramTotal(
                        originating_registry_code=program.value,
                        state=_STATE[state],  # type: ignore[arg-type]
                        # NOTE(registry-adapters): enum NewType, as above.
                        quantity=quantity,
                    )
                    for program, state, quantity in self._store.totals()
                ]
            )

    def ProvideUnitBlocks(
        self, request: pb.ProvideUnitBlocksRequest, context: grpc.ServicerContext
    ) -> pb.ProvideUnitBlocksResponse:
        """Blocks of an account, or overlapping a block (reconciliation phase 2), in parts."""
        with native_rules(context):
            overlapping = (
                identifier_from_native(request.overlapping)
                if request.HasField("overlapping")
                else None
            )
            asked = PageAsked(
                request.max_blocks,
                "max_blocks",
                request.continuation_token,
                "continuation_token",
            )
            blocks, token = serve_page(
                self._store,
                asked,
                _held,
                account=request.account_identifier,
                overlapping=overlapping,
            )
            return pb.ProvideUnitBlocksResponse(blocks=blocks, continuation_token=token)


def _rejected(request: pb.ProposalRequest, rejection: Rejection) -> pb.ProposalResponse:
    """A proposal answered REJECTED 6, pointing at its unit blocks."""
    tx = request.proposed_transaction
    return pb.ProposalResponse(
        transaction_identifier=tx.transaction_identifier,
        transaction_status=pb.REJECTED,
        evaluation_results=[
            pb.EvaluationResult(
                response_code=rejection.code,
                message=rejection.message,
                unit_block_identifiers=[b.identifier for b in tx.proposal_unit_blocks],
            )
        ],
    )


def _expiry(tx: pb.ProposalTransaction) -> datetime:
    return required_moment(
        tx.reservation_expiry, "reservation_expiry is required to reserve blocks"
    )


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_NationalRegistryServicer_to_server(NationalServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=frozenset({Program.CEA, Program.CCER}),
    credit_mode=CreditMode.MIRROR,
    add_servicer=_add_servicer,
)
"""The emulated national registry (see :func:`adapters.emulator_core.start_emulator`)."""
