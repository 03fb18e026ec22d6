"""An emulated Belt-and-Road Article 6.2 registry of ITMOs.

Besides the rules every emulated registry keeps, it keeps the Article 6.2 ones:

* an ITMO's authorization is the host Party's: issuance under a letter of another Party is
  refused, and so is a corresponding adjustment (pending or applied) without authorization;
* the first transfer of an ITMO is refused unless a host Party has authorized it
  (``ITMO_NOT_AUTHORIZED``), checked inside the reservation's transaction;
* the first transfer is recorded once per ITMO (transfer, acquiring registry, the action
  that recorded it) and the record stays with the units through every later action,
  split and return.

Units of other programs arriving here are held as mirror holdings in this registry's
mirror series; they are not ITMOs, and the first-transfer rules do not apply to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpc

from adapters._pb.registries.bri.v1 import bri_pb2 as pb
from adapters._pb.registries.bri.v1 import bri_pb2_grpc as pb_grpc
from adapters.bri.client import (
    REGISTRY_ID,
    itmos_from_native,
    itmos_to_native,
    range_from_native,
    range_to_native,
)
from adapters.client_core import from_rfc3339, to_rfc3339
from adapters.emulator_core import (
    RECORD_PREFIX,
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
from registry_bridge.model import CorrespondingAdjustment, Program, UnitBlock


class _Identified(Protocol):
    """A native batch item: it carries its operation id."""

    @property
    def action_id(self) -> str: ...


Item = TypeVar("Item", bound=_Identified)

_STATUS: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.ITMO_STATUS_HELD,
    UnitState.LOCKED: pb.ITMO_STATUS_RESERVED,
    UnitState.IMMOBILIZED: pb.ITMO_STATUS_HELD_FOR_LINKED_REGISTRY,
    UnitState.RETIRED: pb.ITMO_STATUS_USED,
    UnitState.CANCELLED: pb.ITMO_STATUS_CANCELLED,
    UnitState.SURRENDERED: pb.ITMO_STATUS_SURRENDERED,
    UnitState.EXPORTED: pb.ITMO_STATUS_TRANSFERRED,
}

# The permanent first-transfer record, kept in the store as write-once details.
FIRST_TRANSFER_ID = f"{RECORD_PREFIX}first_transfer.transfer_id"
FIRST_TRANSFER_TO = f"{RECORD_PREFIX}first_transfer.acquiring_registry"
FIRST_TRANSFER_ACTION = f"{RECORD_PREFIX}first_transfer.action_id"


def _check_issuance(block: UnitBlock) -> None:
    """Article 6.2 consistency of an issuance (a property of the request alone)."""
    auth = block.authorization
    if auth is not None and auth.host_country != block.country:
        raise Rejection(
            "AUTHORIZATION_HOST_MISMATCH",
            f"ITMOs hosted by {block.country} cannot carry {auth.host_country}'s authorization",
        )
    adjusted = block.corresponding_adjustment is not CorrespondingAdjustment.NOT_APPLICABLE
    if auth is None and adjusted:
        raise Rejection(
            "ADJUSTMENT_WITHOUT_AUTHORIZATION",
            "a corresponding adjustment applies only to authorized ITMOs",
        )


def first_transfer_guard(held: StoredHolding) -> None:
    """Refuse the first transfer of an ITMO no host Party has authorized.

    Raises:
        Rejection: ``ITMO_NOT_AUTHORIZED``.
    """
    if held.block.program is not Program.BRI_ITMO or held.detail(FIRST_TRANSFER_ID):
        return
    auth = held.block.authorization
    if auth is None or not auth.authorized_uses:
        raise Rejection(
            "ITMO_NOT_AUTHORIZED",
            "the first transfer of an ITMO needs the host Party's authorization "
            "(a letter of authorization with its authorized uses)",
        )


def _holding_of(result: pb.ItmoBatchResult) -> pb.ItmoHolding:
    return result.holding


def _operation_id(item: _Identified) -> str:
    return item.action_id


class BriServicer(pb_grpc.ItmoRegistryServicer):
    """The Article 6.2 registry's actions, translated to the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _holding(self, held: StoredHolding) -> pb.ItmoHolding:
        first = None
        if held.detail(FIRST_TRANSFER_ID):
            action = held.detail(FIRST_TRANSFER_ACTION)
            record = self._store.operation(action)
            first = pb.FirstTransferRecord(
                transfer_id=held.detail(FIRST_TRANSFER_ID),
                acquiring_registry=held.detail(FIRST_TRANSFER_TO),
                action_id=action,
                recorded_at="" if record is None else to_rfc3339(record.recorded_at),
            )
        return pb.ItmoHolding(
            itmos=itmos_to_native(held.block),
            holding_account=held.account,
            status=_STATUS[held.state],  # type: ignore[arg-type]
            # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
            reserved_until=to_rfc3339(held.lock_expires_at),
            transfer_id=held.lock_transfer or held.detail("transfer_id"),
            first_transfer=first,
            mirror_of=None if held.mirror_of is None else range_to_native(held.mirror_of),
            mirror_registry=held.mirror_registry if held.mirror_of is not None else "",
            using_entity=held.detail("using_entity"),
            statement=held.detail("statement") or held.detail("reason"),
        )

    def RecordIssuance(
        self, request: pb.RecordIssuanceRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Issue ITMOs into a holding account."""
        with native_rules(context):
            block = itmos_from_native(request.itmos)
            _check_issuance(block)
            held = self._store.issue(request.action_id, request.holding_account, block)
            return self._holding(held)

    def GetHoldings(
        self, request: pb.GetHoldingsRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHoldingList:
        """Holdings of an account, or overlapping a range, resumed by a token."""
        with native_rules(context):
            overlapping = (
                range_from_native(request.overlapping) if request.HasField("overlapping") else None
            )
            asked = PageAsked(
                request.max_entries,
                "max_entries",
                request.resumption_token,
                "resumption_token",
            )
            holdings, token = serve_page(
                self._store,
                asked,
                self._holding,
                account=request.holding_account,
                overlapping=overlapping,
            )
            return pb.ItmoHoldingList(holdings=holdings, resumption_token=token)

    def _reserve(self, request: pb.ReserveForTransferRequest) -> pb.ItmoHolding:
        until = required_moment(
            request.reserved_until, "reserved_until is required to reserve ITMOs"
        )
        held = self._store.lock(
            request.action_id,
            request.holding_account,
            range_from_native(request.range),
            until,
            request.transfer_id,
            guard=first_transfer_guard,
        )
        return self._holding(held)

    def ReserveForTransfer(
        self, request: pb.ReserveForTransferRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Reserve ITMOs for a transfer; an unauthorized first transfer is refused."""
        with native_rules(context):
            return self._reserve(request)

    def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Release a transfer's reservation."""
        with native_rules(context):
            held = self._store.unlock(
                request.action_id,
                request.holding_account,
                range_from_native(request.range),
                request.transfer_id,
            )
            return self._holding(held)

    def _record_transfer(self, request: pb.RecordTransferRequest) -> pb.ItmoHolding:
        if request.kind == pb.TRANSFER_KIND_UNSPECIFIED:
            raise ValueError("kind is required")
        block_id = range_from_native(request.range)
        details: tuple[tuple[str, str], ...] = (
            ("transfer_id", request.transfer_id),
            ("acquiring_registry", request.acquiring_registry),
        )
        if block_id.program is Program.BRI_ITMO:
            # Written once: on a later transfer the store keeps the first record.
            details += (
                (FIRST_TRANSFER_ID, request.transfer_id),
                (FIRST_TRANSFER_TO, request.acquiring_registry),
                (FIRST_TRANSFER_ACTION, request.action_id),
            )
        held = self._store.finalize(
            request.action_id,
            request.holding_account,
            block_id,
            request.transfer_id,
            export=request.kind == pb.TRANSFER_KIND_INTERNATIONAL,
            details=details,
        )
        return self._holding(held)

    def RecordTransfer(
        self, request: pb.RecordTransferRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Record a reserved transfer, and the ITMOs' first transfer if this is it."""
        with native_rules(context):
            return self._record_transfer(request)

    def _acquire(self, request: pb.RecordAcquisitionRequest) -> pb.ItmoHolding:
        held = self._store.credit(
            request.action_id,
            request.holding_account,
            itmos_from_native(request.itmos),
            request.transferring_registry,
            request.transfer_id,
            details=(("transfer_id", request.transfer_id),),
            deadline=from_rfc3339(request.acquire_by),
        )
        return self._holding(held)

    def RecordAcquisition(
        self, request: pb.RecordAcquisitionRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Acquire arriving units, before the ``acquire_by`` deadline."""
        with native_rules(context):
            return self._acquire(request)

    def _batch(
        self,
        context: grpc.ServicerContext,
        items: Sequence[Item],
        serve: Callable[[Item], pb.ItmoHolding],
    ) -> pb.ItmoBatchResponse:
        response = pb.ItmoBatchResponse()
        serve_batch_into(
            context, self._store, items, serve, response, _holding_of, pb.ItmoRefusal, _operation_id
        )
        return response

    def ReserveForTransferBatch(
        self, request: pb.ReserveForTransferBatchRequest, context: grpc.ServicerContext
    ) -> pb.ItmoBatchResponse:
        """Many reservations, each as ``ReserveForTransfer``, in one transaction."""
        return self._batch(context, request.requests, self._reserve)

    def RecordTransferBatch(
        self, request: pb.RecordTransferBatchRequest, context: grpc.ServicerContext
    ) -> pb.ItmoBatchResponse:
        """Many transfers recorded, each as ``RecordTransfer``, in one transaction."""
        return self._batch(context, request.requests, self._record_transfer)

    def RecordAcquisitionBatch(
        self, request: pb.RecordAcquisitionBatchRequest, context: grpc.ServicerContext
    ) -> pb.ItmoBatchResponse:
        """Many acquisitions, each as ``RecordAcquisition``, in one transaction."""
        return self._batch(context, request.requests, self._acquire)

    def RecordUse(
        self, request: pb.RecordUseRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Use ITMOs for a using entity (a retirement)."""
        with native_rules(context):
            held = self._store.retire(
                request.action_id,
                request.holding_account,
                range_from_native(request.range),
                (("using_entity", request.using_entity), ("statement", request.statement)),
            )
            return self._holding(held)

    def RecordCancellation(
        self, request: pb.RecordCancellationRequest, context: grpc.ServicerContext
    ) -> pb.ItmoHolding:
        """Cancel units."""
        with native_rules(context):
            held = self._store.cancel(
                request.action_id,
                request.holding_account,
                range_from_native(request.range),
                (("reason", request.reason),),
            )
            return self._holding(held)

    def ReportTotals(
        self, request: pb.ReportTotalsRequest, context: grpc.ServicerContext
    ) -> pb.ReportTotalsResponse:
        """Quantities per unit type and status."""
        with native_rules(context):
            return pb.ReportTotalsResponse(
                totals=[
                    pb.UnitTotal(
                        unit_type=program.value,
                        status=_STATUS[state],  # type: ignore[arg-type]
                        # NOTE(registry-adapters): enum NewType, as above.
                        quantity=quantity,
                    )
                    for program, state, quantity in self._store.totals()
                ]
            )


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_ItmoRegistryServicer_to_server(BriServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=frozenset({Program.BRI_ITMO}),
    credit_mode=CreditMode.MIRROR,
    add_servicer=_add_servicer,
)
"""The emulated Article 6.2 registry (see :func:`adapters.emulator_core.start_emulator`)."""
