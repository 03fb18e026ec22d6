"""An emulated Shenzhen pilot registry: SZA allowances, SZ-CI and CCER held in Shenzhen.

Shenzhen registers its own products and takes in units of other registries as mirror
lots with Shenzhen numbers (划入).  Besides the rules every emulated registry keeps, it
keeps its own: only SZA, SZ-CI and CCER count towards Shenzhen compliance (履约), which
names a covered entity and a compliance year; a voluntary cancellation (自愿注销) names
the beneficiary the use is claimed for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpc

from adapters._pb.registries.shenzhen.v1 import shenzhen_pb2 as pb
from adapters._pb.registries.shenzhen.v1 import shenzhen_pb2_grpc as pb_grpc
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
    serve_batch_into,
    serve_page,
)
from adapters.shenzhen.client import (
    REGISTRY_ID,
    info_from_native,
    info_into,
    numbers_from_native,
    numbers_into,
)
from registry_bridge.model import Program

PROGRAMS = frozenset({Program.SZA, Program.SZ_CI, Program.CCER})
"""What Shenzhen registers: its allowances, its carbon-inclusive units, and CCER."""

COMPLIANCE_PRODUCTS = PROGRAMS
"""What a Shenzhen covered entity may surrender (履约): a mirror of a foreign unit may not."""


class _Identified(Protocol):
    """A native batch item: it carries its operation id."""

    @property
    def business_serial_no(self) -> str: ...


Item = TypeVar("Item", bound=_Identified)

_STATE: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.LOT_STATE_AVAILABLE,
    UnitState.LOCKED: pb.LOT_STATE_FROZEN,
    UnitState.IMMOBILIZED: pb.LOT_STATE_IN_CUSTODY,
    UnitState.RETIRED: pb.LOT_STATE_VOLUNTARILY_CANCELLED,
    UnitState.CANCELLED: pb.LOT_STATE_CANCELLED,
    UnitState.SURRENDERED: pb.LOT_STATE_FULFILLED,
    UnitState.EXPORTED: pb.LOT_STATE_TRANSFERRED_OUT,
}


def _lot(held: StoredHolding) -> pb.Lot:
    details = dict(held.details)
    year = details.get("year", "")
    lot = pb.Lot(
        account_no=held.account,
        state=_STATE[held.state],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        frozen_until=to_rfc3339(held.lock_expires_at),
        transfer_order_no=held.lock_transfer or details.get("transfer_order_no", ""),
        entity_code=details.get("entity", ""),
        compliance_year=int(year) if year else 0,
        beneficiary=details.get("beneficiary", ""),
        statement=details.get("statement", ""),
    )
    # Written in place: messages made apart would be copied in.
    info_into(lot.info, held.block)
    if held.mirror_of is not None:
        numbers_into(lot.mirror_source.origin, held.mirror_of)
        lot.mirror_source.origin_registry = held.mirror_registry
    return lot


def _lot_of(result: pb.LotBatchResult) -> pb.Lot:
    return result.lot


def _operation_id(item: _Identified) -> str:
    return item.business_serial_no


class ShenzhenServicer(pb_grpc.ShenzhenRegistryServicer):
    """Shenzhen's native operations, translated to the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Lot:
        """登记: register units into an account."""
        with native_rules(context):
            held = self._store.issue(
                request.business_serial_no, request.account_no, info_from_native(request.info)
            )
            return _lot(held)

    def QueryLots(self, request: pb.QueryLotsRequest, context: grpc.ServicerContext) -> pb.LotList:
        """查询: lots of an account, or overlapping a number range, after a key."""
        with native_rules(context):
            overlapping = (
                numbers_from_native(request.overlapping)
                if request.HasField("overlapping")
                else None
            )
            asked = PageAsked(request.max_lots, "max_lots", request.after_key, "after_key")
            lots, after_key = serve_page(
                self._store,
                asked,
                _lot,
                account=request.account_no,
                overlapping=overlapping,
            )
            return pb.LotList(lots=lots, next_after_key=after_key)

    def _freeze(self, request: pb.FreezeRequest) -> pb.Lot:
        until = required_moment(request.frozen_until, "frozen_until is required to freeze units")
        held = self._store.lock(
            request.business_serial_no,
            request.account_no,
            numbers_from_native(request.numbers),
            until,
            request.transfer_order_no,
        )
        return _lot(held)

    def Freeze(self, request: pb.FreezeRequest, context: grpc.ServicerContext) -> pb.Lot:
        """冻结: freeze units against a transfer order."""
        with native_rules(context):
            return self._freeze(request)

    def Unfreeze(self, request: pb.UnfreezeRequest, context: grpc.ServicerContext) -> pb.Lot:
        """解冻: unfreeze a transfer order's units."""
        with native_rules(context):
            held = self._store.unlock(
                request.business_serial_no,
                request.account_no,
                numbers_from_native(request.numbers),
                request.transfer_order_no,
            )
            return _lot(held)

    def _settle(self, request: pb.SettleTransferOrderRequest) -> pb.Lot:
        if request.settlement == pb.SETTLEMENT_UNSPECIFIED:
            raise ValueError("settlement is required")
        held = self._store.finalize(
            request.business_serial_no,
            request.account_no,
            numbers_from_native(request.numbers),
            request.transfer_order_no,
            export=request.settlement == pb.SETTLEMENT_TRANSFER_OUT,
            details=(
                ("transfer_order_no", request.transfer_order_no),
                ("counterparty_registry", request.counterparty_registry),
            ),
        )
        return _lot(held)

    def SettleTransferOrder(
        self, request: pb.SettleTransferOrderRequest, context: grpc.ServicerContext
    ) -> pb.Lot:
        """划转结算: keep the frozen units in custody, or transfer them out."""
        with native_rules(context):
            return self._settle(request)

    def _transfer_in(self, request: pb.TransferInRequest) -> pb.Lot:
        held = self._store.credit(
            request.business_serial_no,
            request.account_no,
            info_from_native(request.info),
            request.source_registry,
            request.transfer_order_no,
            details=(("transfer_order_no", request.transfer_order_no),),
            deadline=from_rfc3339(request.latest_entry_time),
        )
        return _lot(held)

    def TransferIn(self, request: pb.TransferInRequest, context: grpc.ServicerContext) -> pb.Lot:
        """划入: units arriving from another registry, before the latest entry time."""
        with native_rules(context):
            return self._transfer_in(request)

    def _batch(
        self,
        context: grpc.ServicerContext,
        items: Sequence[Item],
        serve: Callable[[Item], pb.Lot],
    ) -> pb.LotBatchResponse:
        response = pb.LotBatchResponse()
        serve_batch_into(
            context, self._store, items, serve, response, _lot_of, pb.LotRefusal, _operation_id
        )
        return response

    def FreezeBatch(
        self, request: pb.FreezeBatchRequest, context: grpc.ServicerContext
    ) -> pb.LotBatchResponse:
        """批量冻结: many freezes, each as ``Freeze``, in one transaction."""
        return self._batch(context, request.requests, self._freeze)

    def SettleTransferOrderBatch(
        self, request: pb.SettleTransferOrderBatchRequest, context: grpc.ServicerContext
    ) -> pb.LotBatchResponse:
        """批量划转结算: many settlements, each as ``SettleTransferOrder``, in one transaction."""
        return self._batch(context, request.requests, self._settle)

    def TransferInBatch(
        self, request: pb.TransferInBatchRequest, context: grpc.ServicerContext
    ) -> pb.LotBatchResponse:
        """批量划入: many transfers-in, each as ``TransferIn``, in one transaction."""
        return self._batch(context, request.requests, self._transfer_in)

    def Fulfil(self, request: pb.FulfilRequest, context: grpc.ServicerContext) -> pb.Lot:
        """履约: surrender units for a covered entity's compliance year."""
        with native_rules(context):
            numbers = numbers_from_native(request.numbers)
            if not request.entity_code or request.compliance_year <= 0:
                raise ValueError("a compliance surrender names the entity and the year")
            if numbers.program not in COMPLIANCE_PRODUCTS:
                raise Rejection(
                    "NOT_ELIGIBLE_FOR_COMPLIANCE",
                    f"{numbers.program.value} units do not count towards Shenzhen compliance",
                )
            held = self._store.surrender(
                request.business_serial_no,
                request.account_no,
                numbers,
                (("entity", request.entity_code), ("year", str(request.compliance_year))),
            )
            return _lot(held)

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.Lot:
        """注销: voluntary cancellation for a claimed use, or administrative."""
        with native_rules(context):
            numbers = numbers_from_native(request.numbers)
            if request.kind == pb.CANCELLATION_KIND_VOLUNTARY:
                if not request.beneficiary:
                    raise Rejection(
                        "BENEFICIARY_REQUIRED", "a voluntary cancellation names its beneficiary"
                    )
                held = self._store.retire(
                    request.business_serial_no,
                    request.account_no,
                    numbers,
                    (("beneficiary", request.beneficiary), ("statement", request.statement)),
                )
            elif request.kind == pb.CANCELLATION_KIND_ADMINISTRATIVE:
                held = self._store.cancel(
                    request.business_serial_no,
                    request.account_no,
                    numbers,
                    (("statement", request.statement),),
                )
            else:
                raise ValueError("kind is required")
            return _lot(held)

    def Statistics(
        self, request: pb.StatisticsRequest, context: grpc.ServicerContext
    ) -> pb.StatisticsResponse:
        """统计: quantities per product and lot state."""
        with native_rules(context):
            return pb.StatisticsResponse(
                statistics=[
                    pb.ProductStatistic(
                        product=program.value,
                        state=_STATE[state],  # type: ignore[arg-type]
                        # NOTE(registry-adapters): enum NewType, as above.
                        quantity=quantity,
                    )
                    for program, state, quantity in self._store.totals()
                ]
            )


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_ShenzhenRegistryServicer_to_server(ShenzhenServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=PROGRAMS,
    credit_mode=CreditMode.MIRROR,
    add_servicer=_add_servicer,
)
"""The emulated Shenzhen registry (see :func:`adapters.emulator_core.start_emulator`)."""
