"""The Belt-and-Road Article 6.2 registry adapter: the canonical port over ITMO actions.

Canonical -> Article 6.2 registry:

=========  =============================================================================
canonical  native action
=========  =============================================================================
issue      ``RecordIssuance`` into a holding account, with the host Party's authorization
lock       ``ReserveForTransfer`` (refused for the first transfer of an unauthorized ITMO)
unlock     ``ReleaseReservation``
finalize   ``RecordTransfer``: held for the linked registry, or transferred internationally
credit     ``RecordAcquisition``, refused after its ``acquire_by`` deadline
retire     ``RecordUse`` for a using entity
cancel     ``RecordCancellation``
surrender  none: compliance surrender is not an action of this registry
reads      ``GetHoldings`` and ``ReportTotals``
=========  =============================================================================

Every action carries the operation id as its action id.  The authorization and the
corresponding-adjustment status travel with the units; the first-transfer record is the
registry's own and is not part of the canonical block.  The translation lives here once;
the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import grpc

from adapters._pb.registries.bri.v1 import bri_pb2 as pb
from adapters._pb.registries.bri.v1 import bri_pb2_grpc as pb_grpc
from adapters.client_core import (
    LISTING_PAGE_SIZE,
    HoldingsPage,
    canonical_status,
    from_iso_date,
    from_rfc3339,
    invoke,
    invoke_batch,
    item_refused,
    list_all_holdings,
    not_supported,
    program_totals,
    read_pages,
    to_rfc3339,
)
from registry_bridge.errors import RegistryRejected
from registry_bridge.model import (
    Authorization,
    BlockId,
    CorrespondingAdjustment,
    HoldingStatus,
    Program,
    UnitBlock,
)
from registry_bridge.port import (
    BlockStatusRequest,
    CancelRequest,
    CreditRequest,
    FinalizeDisposition,
    FinalizeRequest,
    IssueRequest,
    ListHoldingsRequest,
    LockRequest,
    ProgramTotal,
    RegistryHolding,
    RetireRequest,
    StillWanted,
    SurrenderRequest,
    UnlockRequest,
)

REGISTRY_ID = "bri"

STATUS_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.ITMO_STATUS_HELD: HoldingStatus.ACTIVE,
    pb.ITMO_STATUS_RESERVED: HoldingStatus.LOCKED,
    pb.ITMO_STATUS_HELD_FOR_LINKED_REGISTRY: HoldingStatus.BRIDGED,
    pb.ITMO_STATUS_USED: HoldingStatus.RETIRED,
    pb.ITMO_STATUS_CANCELLED: HoldingStatus.CANCELLED,
    pb.ITMO_STATUS_SURRENDERED: HoldingStatus.SURRENDERED,
    pb.ITMO_STATUS_TRANSFERRED: HoldingStatus.EXPORTED,
}

CA_TO_NATIVE: dict[CorrespondingAdjustment, int] = {
    CorrespondingAdjustment.NOT_APPLICABLE: pb.CORRESPONDING_ADJUSTMENT_STATUS_NOT_APPLICABLE,
    CorrespondingAdjustment.PENDING: pb.CORRESPONDING_ADJUSTMENT_STATUS_PENDING,
    CorrespondingAdjustment.APPLIED: pb.CORRESPONDING_ADJUSTMENT_STATUS_APPLIED,
}
CA_FROM_NATIVE: dict[int, CorrespondingAdjustment] = {v: k for k, v in CA_TO_NATIVE.items()}


def range_to_native(block_id: BlockId) -> pb.UnitRange:
    """A canonical block id as a unit range."""
    return pb.UnitRange(
        unit_type=block_id.program.value,
        series=block_id.serial_series,
        first=block_id.serial_start,
        last=block_id.serial_end,
    )


def range_from_native(native: pb.UnitRange) -> BlockId:
    """The canonical id of a unit range.

    Raises:
        ValueError: Unknown unit type, or an empty or reversed range.
    """
    return BlockId(Program(native.unit_type), native.series, native.first, native.last)


def itmos_to_native(block: UnitBlock) -> pb.Itmos:
    """A canonical block as the registry's ITMO description."""
    auth = block.authorization
    return pb.Itmos(
        range=range_to_native(block.id),
        activity_id=block.project_id,
        host_party=block.country,
        region=block.region,
        vintage_start=block.vintage_start.isoformat(),
        vintage_end=block.vintage_end.isoformat(),
        activity_type=block.project_type,
        methodology=block.methodology,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_id=block.issuance_id,
        labels=sorted(block.labels),
        authorization=None
        if auth is None
        else pb.HostAuthorization(
            letter_id=auth.letter_id,
            host_party=auth.host_country,
            authorized_uses=sorted(auth.authorized_uses),
            authorized_on=auth.issued_on.isoformat(),
        ),
        corresponding_adjustment=CA_TO_NATIVE[block.corresponding_adjustment],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        serial_attributes=[pb.NativeAttribute(key=k, value=v) for k, v in block.native_attributes],
    )


def itmos_from_native(native: pb.Itmos) -> UnitBlock:
    """The canonical block of the registry's ITMO description.

    Raises:
        ValueError: A field is malformed, or the corresponding-adjustment status is unset.
    """
    auth = None
    if native.HasField("authorization"):
        auth = Authorization(
            letter_id=native.authorization.letter_id,
            host_country=native.authorization.host_party,
            authorized_uses=frozenset(native.authorization.authorized_uses),
            issued_on=date.fromisoformat(native.authorization.authorized_on),
        )
    adjustment = CA_FROM_NATIVE.get(native.corresponding_adjustment)
    if adjustment is None:
        raise ValueError("corresponding_adjustment status is required")
    return UnitBlock(
        id=range_from_native(native.range),
        project_id=native.activity_id,
        country=native.host_party,
        vintage_start=from_iso_date(native.vintage_start),
        vintage_end=from_iso_date(native.vintage_end),
        region=native.region,
        project_type=native.activity_type,
        methodology=native.methodology,
        gas=native.gas or "CO2",
        gwp_basis=native.gwp_basis,
        issuance_id=native.issuance_id,
        authorization=auth,
        corresponding_adjustment=adjustment,
        labels=frozenset(native.labels),
        native_attributes=tuple((a.key, a.value) for a in native.serial_attributes),
    )


class BriClient:
    """A Belt-and-Road Article 6.2 registry behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to the registry's native API.
        timeout_s: Deadline of each call, in seconds.
    """

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pb_grpc.ItmoRegistryStub(channel)
        self._timeout_s = timeout_s

    @property
    def registry_id(self) -> str:
        """``"bri"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.ItmoHolding) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATUS_TO_CANONICAL, native.status)
        return RegistryHolding(
            block=itmos_from_native(native.itmos),
            account=native.holding_account,
            status=status,
            lock_expires_at=from_rfc3339(native.reserved_until),
            mirror_of=range_from_native(native.mirror_of) if native.HasField("mirror_of") else None,
            mirror_origin_registry=native.mirror_registry,
        )

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """``RecordIssuance`` into a holding account."""
        native = invoke(
            REGISTRY_ID,
            self._stub.RecordIssuance,
            pb.RecordIssuanceRequest(
                action_id=request.operation_id,
                holding_account=request.account,
                itmos=itmos_to_native(request.block),
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _holdings(
        self, query: pb.GetHoldingsRequest, resumption: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One list of ``query``, transferred holdings omitted."""
        request = pb.GetHoldingsRequest(max_entries=LISTING_PAGE_SIZE, resumption_token=resumption)
        request.MergeFrom(query)
        native = invoke(
            REGISTRY_ID, self._stub.GetHoldings, request, self._timeout_s, still_wanted=still_wanted
        )
        return HoldingsPage(
            tuple(
                self._holding(h) for h in native.holdings if h.status != pb.ITMO_STATUS_TRANSFERRED
            ),
            native.resumption_token,
        )

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """``GetHoldings`` overlapping the block, resumed until complete."""
        query = pb.GetHoldingsRequest(overlapping=range_to_native(request.block))
        return read_pages(REGISTRY_ID, lambda resumption: self._holdings(query, resumption))

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One list of ``GetHoldings`` of one holding account or all, ``page`` its
        resumption token."""
        return self._holdings(
            pb.GetHoldingsRequest(holding_account=request.account), page, still_wanted
        )

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """``GetHoldings`` of one holding account or all, resumed until complete."""
        return list_all_holdings(self, request, still_wanted)

    def _reserve(self, request: LockRequest) -> pb.ReserveForTransferRequest:
        return pb.ReserveForTransferRequest(
            action_id=request.operation_id,
            holding_account=request.account,
            range=range_to_native(request.block),
            reserved_until=to_rfc3339(request.expires_at),
            transfer_id=request.transfer,
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """``ReserveForTransfer`` until the expiry."""
        native = invoke(
            REGISTRY_ID, self._stub.ReserveForTransfer, self._reserve(request), self._timeout_s
        )
        return self._holding(native)

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """``ReleaseReservation`` of the transfer."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ReleaseReservation,
            pb.ReleaseReservationRequest(
                action_id=request.operation_id,
                holding_account=request.account,
                range=range_to_native(request.block),
                transfer_id=request.transfer,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _record_transfer(self, request: FinalizeRequest) -> pb.RecordTransferRequest:
        kind = (
            pb.TRANSFER_KIND_HOLD_FOR_LINKED_REGISTRY
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.TRANSFER_KIND_INTERNATIONAL
        )
        return pb.RecordTransferRequest(
            action_id=request.operation_id,
            holding_account=request.account,
            range=range_to_native(request.block),
            transfer_id=request.transfer,
            kind=kind,
            acquiring_registry=request.destination_registry,
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """``RecordTransfer``: held for the linked registry, or international."""
        native = invoke(
            REGISTRY_ID, self._stub.RecordTransfer, self._record_transfer(request), self._timeout_s
        )
        return self._holding(native)

    def _acquire(self, request: CreditRequest) -> pb.RecordAcquisitionRequest:
        return pb.RecordAcquisitionRequest(
            action_id=request.operation_id,
            holding_account=request.account,
            itmos=itmos_to_native(request.origin),
            transferring_registry=request.origin_registry,
            transfer_id=request.transfer,
            acquire_by=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """``RecordAcquisition``, refused by the registry after the deadline."""
        native = invoke(
            REGISTRY_ID, self._stub.RecordAcquisition, self._acquire(request), self._timeout_s
        )
        return self._holding(native)

    def _result(self, native: pb.ItmoBatchResult) -> RegistryHolding:
        if native.HasField("refusal"):
            raise item_refused(REGISTRY_ID, native.refusal)
        return self._holding(native.holding)

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many reservations in one call per chunk (``ReserveForTransferBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._reserve,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.ReserveForTransferBatch,
                    pb.ReserveForTransferBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many transfers recorded in one call per chunk (``RecordTransferBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._record_transfer,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.RecordTransferBatch,
                    pb.RecordTransferBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many acquisitions in one call per chunk (``RecordAcquisitionBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._acquire,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.RecordAcquisitionBatch,
                    pb.RecordAcquisitionBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """``RecordUse`` for the beneficiary as using entity."""
        native = invoke(
            REGISTRY_ID,
            self._stub.RecordUse,
            pb.RecordUseRequest(
                action_id=request.operation_id,
                holding_account=request.account,
                range=range_to_native(request.block),
                using_entity=request.beneficiary,
                statement=request.claim_text,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """An Article 6.2 registry has no compliance surrender.

        Raises:
            RegistryRejected: Always, with code ``NOT_SUPPORTED``.
        """
        raise not_supported(REGISTRY_ID, "compliance surrender")

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """``RecordCancellation`` with a reason."""
        native = invoke(
            REGISTRY_ID,
            self._stub.RecordCancellation,
            pb.RecordCancellationRequest(
                action_id=request.operation_id,
                holding_account=request.account,
                range=range_to_native(request.block),
                reason=request.reason,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """``ReportTotals``: quantities per unit type and status."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ReportTotals,
            pb.ReportTotalsRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATUS_TO_CANONICAL, ((t.unit_type, t.status, t.quantity) for t in native.totals)
        )
