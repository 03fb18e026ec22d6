"""An emulated Verra Registry: the Verra native API over an emulator store.

Verra issues only VCS units and accepts no foreign units: arriving units are only its own
immobilized VCUs coming back (``RestoreImmobilized``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from adapters._pb.registries.verra.v1 import verra_pb2 as pb
from adapters._pb.registries.verra.v1 import verra_pb2_grpc as pb_grpc
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
from adapters.verra.client import (
    REGISTRY_ID,
    block_from_native,
    block_into,
    range_from_native,
)
from registry_bridge.model import Program

Item = TypeVar("Item", bound=Identified)

_STATUS: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.VCU_STATUS_ACTIVE,
    UnitState.LOCKED: pb.VCU_STATUS_PENDING_IMMOBILIZATION,
    UnitState.IMMOBILIZED: pb.VCU_STATUS_IMMOBILIZED,
    UnitState.RETIRED: pb.VCU_STATUS_RETIRED,
    UnitState.CANCELLED: pb.VCU_STATUS_CANCELLED,
    UnitState.EXPORTED: pb.VCU_STATUS_TRANSFERRED_OUT,
}


def _holding(held: StoredHolding) -> pb.VcuHolding:
    details = dict(held.details)
    holding = pb.VcuHolding(
        account_id=held.account,
        status=_STATUS[held.state],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        hold_until=to_rfc3339(held.lock_expires_at),
        hold_reference=held.lock_transfer,
        retirement_beneficiary=details.get("beneficiary", ""),
        retirement_details=details.get("retirement_details", ""),
        cancellation_reason=details.get("reason", ""),
    )
    # Written in place: a block made apart would be copied in.
    block_into(holding.vcus, held.block)
    return holding


def _holding_of(result: pb.VcuBatchResult) -> pb.VcuHolding:
    return result.holding


class VerraServicer(pb_grpc.VerraRegistryServicer):
    """Verra's native operations, translated to the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def IssueVcus(
        self, request: pb.IssueVcusRequest, context: grpc.ServicerContext
    ) -> pb.VcuHolding:
        """Issue a VCU block into an account."""
        with native_rules(context):
            block = block_from_native(request.vcus)
            return _holding(self._store.issue(request.operation_id, request.account_id, block))

    def GetVcuBlock(
        self, request: pb.GetVcuBlockRequest, context: grpc.ServicerContext
    ) -> pb.VcuHoldingList:
        """A page of the holdings overlapping a block range."""
        with native_rules(context):
            asked = PageAsked(request.page_size, "page_size", request.page_token, "page_token")
            holdings, token = serve_page(
                self._store, asked, _holding, overlapping=range_from_native(request.range)
            )
            return pb.VcuHoldingList(holdings=holdings, next_page_token=token)

    def _immobilize(self, request: pb.ImmobilizeRequest) -> pb.VcuHolding:
        until = required_moment(request.hold_until, "hold_until is required")
        held = self._store.lock(
            request.operation_id,
            request.account_id,
            range_from_native(request.range),
            until,
            request.hold_reference,
        )
        return _holding(held)

    def Immobilize(
        self, request: pb.ImmobilizeRequest, context: grpc.ServicerContext
    ) -> pb.VcuHolding:
        """Place VCUs on hold pending immobilization."""
        with native_rules(context):
            return self._immobilize(request)

    def ReleaseImmobilization(
        self, request: pb.ReleaseImmobilizationRequest, context: grpc.ServicerContext
    ) -> pb.VcuHolding:
        """Release a pending immobilization."""
        with native_rules(context):
            held = self._store.unlock(
                request.operation_id,
                request.account_id,
                range_from_native(request.range),
                request.hold_reference,
            )
            return _holding(held)

    def _confirm(self, request: pb.ConfirmImmobilizationRequest) -> pb.VcuHolding:
        if request.kind == pb.CONFIRMATION_KIND_UNSPECIFIED:
            raise ValueError("kind is required")
        held = self._store.finalize(
            request.operation_id,
            request.account_id,
            range_from_native(request.range),
            request.hold_reference,
            export=request.kind == pb.CONFIRMATION_KIND_TRANSFER_OUT,
            details=(("destination_registry", request.destination_registry),),
        )
        return _holding(held)

    def ConfirmImmobilization(
        self, request: pb.ConfirmImmobilizationRequest, context: grpc.ServicerContext
    ) -> pb.VcuHolding:
        """Immobilize held VCUs, or transfer them out."""
        with native_rules(context):
            return self._confirm(request)

    def _restore(self, request: pb.RestoreImmobilizedRequest) -> pb.VcuHolding:
        held = self._store.reactivate(
            request.operation_id,
            request.account_id,
            range_from_native(request.range),
            request.reference,
            deadline=from_rfc3339(request.restore_by),
        )
        return _holding(held)

    def RestoreImmobilized(
        self, request: pb.RestoreImmobilizedRequest, context: grpc.ServicerContext
    ) -> pb.VcuHolding:
        """Restore immobilized VCUs to an account."""
        with native_rules(context):
            return self._restore(request)

    def _batch(
        self,
        context: grpc.ServicerContext,
        items: Sequence[Item],
        serve: Callable[[Item], pb.VcuHolding],
    ) -> pb.VcuBatchResponse:
        response = pb.VcuBatchResponse()
        serve_batch_into(
            context,
            self._store,
            items,
            serve,
            response,
            _holding_of,
            pb.VcuRefusal,
            operation_id_of,
        )
        return response

    def ImmobilizeBatch(
        self, request: pb.ImmobilizeBatchRequest, context: grpc.ServicerContext
    ) -> pb.VcuBatchResponse:
        """Many holds, each as ``Immobilize``, in one transaction."""
        return self._batch(context, request.requests, self._immobilize)

    def ConfirmImmobilizationBatch(
        self, request: pb.ConfirmImmobilizationBatchRequest, context: grpc.ServicerContext
    ) -> pb.VcuBatchResponse:
        """Many confirmations, each as ``ConfirmImmobilization``, in one transaction."""
        return self._batch(context, request.requests, self._confirm)

    def RestoreImmobilizedBatch(
        self, request: pb.RestoreImmobilizedBatchRequest, context: grpc.ServicerContext
    ) -> pb.VcuBatchResponse:
        """Many restorations, each as ``RestoreImmobilized``, in one transaction."""
        return self._batch(context, request.requests, self._restore)

    def Retire(self, request: pb.RetireRequest, context: grpc.ServicerContext) -> pb.VcuHolding:
        """Retire VCUs for a beneficiary."""
        with native_rules(context):
            held = self._store.retire(
                request.operation_id,
                request.account_id,
                range_from_native(request.range),
                (
                    ("beneficiary", request.beneficiary),
                    ("retirement_details", request.retirement_details),
                ),
            )
            return _holding(held)

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.VcuHolding:
        """Cancel VCUs."""
        with native_rules(context):
            held = self._store.cancel(
                request.operation_id,
                request.account_id,
                range_from_native(request.range),
                (("reason", request.reason),),
            )
            return _holding(held)

    def ListAccountHoldings(
        self, request: pb.ListAccountHoldingsRequest, context: grpc.ServicerContext
    ) -> pb.ListAccountHoldingsResponse:
        """A page of the holdings of one account, or of all."""
        with native_rules(context):
            asked = PageAsked(request.page_size, "page_size", request.page_token, "page_token")
            holdings, token = serve_page(self._store, asked, _holding, account=request.account_id)
            return pb.ListAccountHoldingsResponse(holdings=holdings, next_page_token=token)

    def GetRegistryTotals(
        self, request: pb.GetRegistryTotalsRequest, context: grpc.ServicerContext
    ) -> pb.RegistryTotals:
        """VCU quantities per status."""
        with native_rules(context):
            totals = [
                pb.VcuTotal(status=_STATUS[state], quantity=quantity)  # type: ignore[arg-type]
                # NOTE(registry-adapters): enum NewType, as above.
                for program, state, quantity in self._store.totals()
                if program is Program.VCS
            ]
            return pb.RegistryTotals(totals=totals)


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_VerraRegistryServicer_to_server(VerraServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=frozenset({Program.VCS}),
    credit_mode=CreditMode.RETURN_ONLY,
    add_servicer=_add_servicer,
)
"""The emulated Verra Registry (see :func:`adapters.emulator_core.start_emulator`)."""
