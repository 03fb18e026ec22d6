"""An emulated Gold Standard Impact Registry: its native API over an emulator store.

Gold Standard issues only GS credits and accepts no foreign units: arriving units are only
its own immobilized credits coming back (``AcceptReturn``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from adapters._pb.registries.gold_standard.v1 import gold_standard_pb2 as pb
from adapters._pb.registries.gold_standard.v1 import gold_standard_pb2_grpc as pb_grpc
from adapters.client_core import from_rfc3339, to_rfc3339
from adapters.emulator_core import (
    CreditMode,
    EmulatorSpec,
    Identified,
    PageAsked,
    Store,
    StoredHolding,
    UnitState,
    native_rules,
    operation_id_of,
    required_moment,
    serve_batch_into,
    serve_page,
)
from adapters.gold_standard.client import (
    REGISTRY_ID,
    block_from_native,
    block_to_native,
    range_from_native,
)
from registry_bridge.model import Program

Item = TypeVar("Item", bound=Identified)

_STATUS: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.CREDIT_STATUS_ISSUED,
    UnitState.LOCKED: pb.CREDIT_STATUS_PENDING_TRANSFER,
    UnitState.IMMOBILIZED: pb.CREDIT_STATUS_IMMOBILIZED,
    UnitState.RETIRED: pb.CREDIT_STATUS_RETIRED,
    UnitState.CANCELLED: pb.CREDIT_STATUS_CANCELLED,
    UnitState.EXPORTED: pb.CREDIT_STATUS_TRANSFERRED,
}


def _holding(held: StoredHolding) -> pb.CreditHolding:
    return pb.CreditHolding(
        credits=block_to_native(held.block),
        account_id=held.account,
        status=_STATUS[held.state],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        pending_until=to_rfc3339(held.lock_expires_at),
        transfer_reference=held.lock_transfer,
        beneficiary=held.detail("beneficiary"),
        use_case=held.detail("use"),
        note=held.detail("note") or held.detail("reason"),
    )


def _holding_of(result: pb.CreditBatchResult) -> pb.CreditHolding:
    return result.holding


class GoldStandardServicer(pb_grpc.GoldStandardRegistryServicer):
    """Gold Standard's native operations, translated to the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def IssueCredits(
        self, request: pb.IssueCreditsRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Issue a credit block into an account."""
        with native_rules(context):
            block = block_from_native(request.credits)
            return _holding(self._store.issue(request.operation_id, request.account_id, block))

    def GetCreditBlock(
        self, request: pb.GetCreditBlockRequest, context: grpc.ServicerContext
    ) -> pb.CreditHoldingList:
        """The holdings overlapping a block range, after a cursor."""
        with native_rules(context):
            asked = PageAsked(request.limit, "limit", request.cursor, "cursor")
            holdings, cursor = serve_page(
                self._store, asked, _holding, overlapping=range_from_native(request.range)
            )
            return pb.CreditHoldingList(holdings=holdings, next_cursor=cursor)

    def _initiate(self, request: pb.InitiateTransferRequest) -> pb.CreditHolding:
        until = required_moment(request.pending_until, "hold_until is required")
        held = self._store.lock(
            request.operation_id,
            request.account_id,
            range_from_native(request.range),
            until,
            request.transfer_reference,
        )
        return _holding(held)

    def InitiateTransfer(
        self, request: pb.InitiateTransferRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Put credits in pending transfer."""
        with native_rules(context):
            return self._initiate(request)

    def WithdrawTransfer(
        self, request: pb.WithdrawTransferRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Withdraw a pending transfer."""
        with native_rules(context):
            held = self._store.unlock(
                request.operation_id,
                request.account_id,
                range_from_native(request.range),
                request.transfer_reference,
            )
            return _holding(held)

    def _complete(self, request: pb.CompleteTransferRequest) -> pb.CreditHolding:
        if request.completion == pb.COMPLETION_UNSPECIFIED:
            raise ValueError("kind is required")
        held = self._store.finalize(
            request.operation_id,
            request.account_id,
            range_from_native(request.range),
            request.transfer_reference,
            export=request.completion == pb.COMPLETION_TRANSFER_OUT,
            details=(("destination_registry", request.destination_registry),),
        )
        return _holding(held)

    def CompleteTransfer(
        self, request: pb.CompleteTransferRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Immobilize pending credits, or transfer them out."""
        with native_rules(context):
            return self._complete(request)

    def _accept_return(self, request: pb.AcceptReturnRequest) -> pb.CreditHolding:
        held = self._store.reactivate(
            request.operation_id,
            request.account_id,
            range_from_native(request.range),
            request.transfer_reference,
            deadline=from_rfc3339(request.accept_by),
        )
        return _holding(held)

    def AcceptReturn(
        self, request: pb.AcceptReturnRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Take back immobilized credits."""
        with native_rules(context):
            return self._accept_return(request)

    def _batch(
        self,
        context: grpc.ServicerContext,
        items: Sequence[Item],
        serve: Callable[[Item], pb.CreditHolding],
    ) -> pb.CreditBatchResponse:
        response = pb.CreditBatchResponse()
        serve_batch_into(
            context,
            self._store,
            items,
            serve,
            response,
            _holding_of,
            pb.CreditRefusal,
            operation_id_of,
        )
        return response

    def InitiateTransferBatch(
        self, request: pb.InitiateTransferBatchRequest, context: grpc.ServicerContext
    ) -> pb.CreditBatchResponse:
        """Many pending transfers, each as ``InitiateTransfer``, in one transaction."""
        return self._batch(context, request.requests, self._initiate)

    def CompleteTransferBatch(
        self, request: pb.CompleteTransferBatchRequest, context: grpc.ServicerContext
    ) -> pb.CreditBatchResponse:
        """Many completions, each as ``CompleteTransfer``, in one transaction."""
        return self._batch(context, request.requests, self._complete)

    def AcceptReturnBatch(
        self, request: pb.AcceptReturnBatchRequest, context: grpc.ServicerContext
    ) -> pb.CreditBatchResponse:
        """Many returns, each as ``AcceptReturn``, in one transaction."""
        return self._batch(context, request.requests, self._accept_return)

    def RetireCredits(
        self, request: pb.RetireCreditsRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Retire credits for a beneficiary and a use."""
        with native_rules(context):
            held = self._store.retire(
                request.operation_id,
                request.account_id,
                range_from_native(request.range),
                (
                    ("beneficiary", request.beneficiary),
                    ("use", request.use_case),
                    ("note", request.note),
                ),
            )
            return _holding(held)

    def CancelCredits(
        self, request: pb.CancelCreditsRequest, context: grpc.ServicerContext
    ) -> pb.CreditHolding:
        """Cancel credits."""
        with native_rules(context):
            held = self._store.cancel(
                request.operation_id,
                request.account_id,
                range_from_native(request.range),
                (("reason", request.reason),),
            )
            return _holding(held)

    def ListAccountCredits(
        self, request: pb.ListAccountCreditsRequest, context: grpc.ServicerContext
    ) -> pb.ListAccountCreditsResponse:
        """The holdings of one account, or of all, after a cursor."""
        with native_rules(context):
            asked = PageAsked(request.limit, "limit", request.cursor, "cursor")
            holdings, cursor = serve_page(self._store, asked, _holding, account=request.account_id)
            return pb.ListAccountCreditsResponse(holdings=holdings, next_cursor=cursor)

    def GetTotals(self, request: pb.GetTotalsRequest, context: grpc.ServicerContext) -> pb.Totals:
        """Credit quantities per status."""
        with native_rules(context):
            totals = [
                pb.StatusTotal(status=_STATUS[state], quantity=quantity)  # type: ignore[arg-type]
                # NOTE(registry-adapters): enum NewType, as above.
                for program, state, quantity in self._store.totals()
                if program is Program.GS
            ]
            return pb.Totals(totals=totals)


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_GoldStandardRegistryServicer_to_server(GoldStandardServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=frozenset({Program.GS}),
    credit_mode=CreditMode.RETURN_ONLY,
    add_servicer=_add_servicer,
)
"""The emulated Gold Standard registry (see :func:`adapters.emulator_core.start_emulator`)."""
