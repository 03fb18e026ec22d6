"""An emulated Hong Kong / Macau voluntary carbon venue.

The venue issues nothing: ``DepositUnits`` lists units of other programs into a client
account, and delivered units are held under their original serials.  A settlement without
a settlement currency is refused, and the currency is recorded with the position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from adapters._pb.registries.hkmo.v1 import hkmo_pb2 as pb
from adapters._pb.registries.hkmo.v1 import hkmo_pb2_grpc as pb_grpc
from adapters.client_core import from_rfc3339, to_rfc3339
from adapters.emulator_core import (
    CreditMode,
    EmulatorSpec,
    Identified,
    PageAsked,
    Rejection,
    Store,
    StoredHolding,
    UnitState,
    native_rules,
    operation_id_of,
    required_moment,
    serve_batch_into,
    serve_page,
)
from adapters.hkmo.client import REGISTRY_ID, range_from_native, units_from_native, units_into
from registry_bridge.model import Program

Item = TypeVar("Item", bound=Identified)

_STATE: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.AVAILABLE,
    UnitState.LOCKED: pb.EARMARKED,
    UnitState.IMMOBILIZED: pb.IN_CUSTODY,
    UnitState.RETIRED: pb.RETIRED,
    UnitState.CANCELLED: pb.CANCELLED,
    UnitState.SURRENDERED: pb.SURRENDERED,
    UnitState.EXPORTED: pb.DELIVERED_OUT,
}


def _currency(value: int) -> str:
    if value == pb.SETTLEMENT_CURRENCY_UNSPECIFIED:
        raise Rejection("SETTLEMENT_CURRENCY_REQUIRED", "a settlement records its currency")
    return pb.SettlementCurrency.Name(value)  # type: ignore[arg-type]
    # NOTE(registry-adapters): mypy-protobuf's Name() takes the enum NewType, not int.


def _position(held: StoredHolding) -> pb.Position:
    details = dict(held.details)
    currency = details.get("settlement_currency", "")
    position = pb.Position(
        client_account=held.account,
        state=_STATE[held.state],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        earmark_until=to_rfc3339(held.lock_expires_at),
        settlement_reference=held.lock_transfer or details.get("settlement_reference", ""),
        settlement_currency=pb.SettlementCurrency.Value(currency) if currency else 0,  # type: ignore[arg-type]
        origin_registry=held.mirror_registry,
        beneficiary=details.get("beneficiary", ""),
        note=details.get("claim", "") or details.get("reason", ""),
    )
    # Written in place: units made apart would be copied in.
    units_into(position.units, held.block)
    return position


def _deposit_programs() -> frozenset[Program]:
    return frozenset({Program.VCS, Program.GS, Program.CCER, Program.BRI_ITMO})


def _position_of(result: pb.PositionBatchResult) -> pb.Position:
    return result.position


class VenueServicer(pb_grpc.CarbonVenueServicer):
    """The venue's native operations, translated to the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def DepositUnits(
        self, request: pb.DepositUnitsRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """List units onto the venue into a client account."""
        with native_rules(context):
            held = self._store.issue(
                request.operation_id, request.client_account, units_from_native(request.units)
            )
            return _position(held)

    def QueryPositions(
        self, request: pb.QueryPositionsRequest, context: grpc.ServicerContext
    ) -> pb.PositionList:
        """Positions of a client account, or overlapping a serial range, after a token."""
        with native_rules(context):
            overlapping = (
                range_from_native(request.overlapping) if request.HasField("overlapping") else None
            )
            asked = PageAsked(request.max_results, "max_results", request.next_token, "next_token")
            positions, token = serve_page(
                self._store,
                asked,
                _position,
                account=request.client_account,
                overlapping=overlapping,
            )
            return pb.PositionList(positions=positions, next_token=token)

    def _earmark(self, request: pb.EarmarkForSettlementRequest) -> pb.Position:
        until = required_moment(request.earmark_until, "earmark_until is required")
        held = self._store.lock(
            request.operation_id,
            request.client_account,
            range_from_native(request.range),
            until,
            request.settlement_reference,
        )
        return _position(held)

    def EarmarkForSettlement(
        self, request: pb.EarmarkForSettlementRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """Earmark units for a pending settlement."""
        with native_rules(context):
            return self._earmark(request)

    def ReleaseEarmark(
        self, request: pb.ReleaseEarmarkRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """Release an earmark."""
        with native_rules(context):
            held = self._store.unlock(
                request.operation_id,
                request.client_account,
                range_from_native(request.range),
                request.settlement_reference,
            )
            return _position(held)

    def _settle(self, request: pb.SettleDeliveryRequest) -> pb.Position:
        if request.mode == pb.DELIVERY_MODE_UNSPECIFIED:
            raise ValueError("mode is required")
        held = self._store.finalize(
            request.operation_id,
            request.client_account,
            range_from_native(request.range),
            request.settlement_reference,
            export=request.mode == pb.DELIVER_OUT,
            details=(
                ("settlement_currency", _currency(request.settlement_currency)),
                ("settlement_reference", request.settlement_reference),
                ("counterparty_registry", request.counterparty_registry),
            ),
        )
        return _position(held)

    def SettleDelivery(
        self, request: pb.SettleDeliveryRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """Settle an earmarked delivery, recording the settlement currency."""
        with native_rules(context):
            return self._settle(request)

    def _receive(self, request: pb.ReceiveDeliveryRequest) -> pb.Position:
        held = self._store.credit(
            request.operation_id,
            request.client_account,
            units_from_native(request.units),
            request.origin_registry,
            request.settlement_reference,
            details=(
                ("settlement_currency", _currency(request.settlement_currency)),
                ("settlement_reference", request.settlement_reference),
            ),
            deadline=from_rfc3339(request.settle_by),
        )
        return _position(held)

    def ReceiveDelivery(
        self, request: pb.ReceiveDeliveryRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """Receive delivered units, recording the settlement currency."""
        with native_rules(context):
            return self._receive(request)

    def _batch(
        self,
        context: grpc.ServicerContext,
        items: Sequence[Item],
        serve: Callable[[Item], pb.Position],
    ) -> pb.PositionBatchResponse:
        response = pb.PositionBatchResponse()
        serve_batch_into(
            context,
            self._store,
            items,
            serve,
            response,
            _position_of,
            pb.PositionRefusal,
            operation_id_of,
        )
        return response

    def EarmarkForSettlementBatch(
        self, request: pb.EarmarkForSettlementBatchRequest, context: grpc.ServicerContext
    ) -> pb.PositionBatchResponse:
        """Many earmarks, each as ``EarmarkForSettlement``, in one transaction."""
        return self._batch(context, request.requests, self._earmark)

    def SettleDeliveryBatch(
        self, request: pb.SettleDeliveryBatchRequest, context: grpc.ServicerContext
    ) -> pb.PositionBatchResponse:
        """Many settlements, each as ``SettleDelivery``, in one transaction."""
        return self._batch(context, request.requests, self._settle)

    def ReceiveDeliveryBatch(
        self, request: pb.ReceiveDeliveryBatchRequest, context: grpc.ServicerContext
    ) -> pb.PositionBatchResponse:
        """Many deliveries, each as ``ReceiveDelivery``, in one transaction."""
        return self._batch(context, request.requests, self._receive)

    def RetireOnBehalf(
        self, request: pb.RetireOnBehalfRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """Retire units on behalf of a beneficiary."""
        with native_rules(context):
            held = self._store.retire(
                request.operation_id,
                request.client_account,
                range_from_native(request.range),
                (("beneficiary", request.beneficiary), ("claim", request.claim)),
            )
            return _position(held)

    def CancelUnits(
        self, request: pb.CancelUnitsRequest, context: grpc.ServicerContext
    ) -> pb.Position:
        """Cancel units."""
        with native_rules(context):
            held = self._store.cancel(
                request.operation_id,
                request.client_account,
                range_from_native(request.range),
                (("reason", request.reason),),
            )
            return _position(held)

    def VenueTotals(
        self, request: pb.VenueTotalsRequest, context: grpc.ServicerContext
    ) -> pb.VenueTotalsResponse:
        """Quantities per program and position state."""
        with native_rules(context):
            return pb.VenueTotalsResponse(
                totals=[
                    pb.VenueTotal(
                        program=program.value,
                        state=_STATE[state],  # type: ignore[arg-type]
                        # NOTE(registry-adapters): enum NewType, as above.
                        quantity=quantity,
                    )
                    for program, state, quantity in self._store.totals()
                ]
            )


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_CarbonVenueServicer_to_server(VenueServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=_deposit_programs(),
    credit_mode=CreditMode.HOLD,
    add_servicer=_add_servicer,
)
"""The emulated venue (see :func:`adapters.emulator_core.start_emulator`)."""
