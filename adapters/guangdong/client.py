"""The Guangdong pilot registry adapter: the canonical port over business applications.

Every canonical change is one application (业务申请) whose application number is the
operation id, answered by a receipt (回执): approved (通过) with the batch as now held, or
refused (不予通过) with a refusal code, which becomes :class:`RegistryRejected`.

=========  ===============================================================
canonical  application
=========  ===============================================================
issue      ``Issue`` (核发)
lock       ``Restrict`` (限制, i.e. 冻结) until a time
unlock     ``LiftRestriction`` (解除限制)
finalize   ``ConcludeTransferOut`` (转出办结): escrow (托管) or transfer out
credit     ``ReceiveTransferIn`` (转入), before its acceptance deadline
retire     ``CancelForNeutrality`` (碳中和注销)
surrender  ``ClearForCompliance`` (履约清缴)
cancel     ``Cancel`` (注销)
reads      ``ListBatches`` (持仓查询) and ``Summarize`` (汇总)
=========  ===============================================================

The batch translation lives here once; the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adapters._pb.registries.guangdong.v1 import guangdong_pb2 as pb
from adapters._pb.registries.guangdong.v1 import guangdong_pb2_grpc as pb_grpc
from adapters.client_core import (
    LISTING_PAGE_SIZE,
    HoldingsPage,
    NativeMethod,
    adjustment_from_native,
    authorization_from_native,
    authorization_to_native,
    canonical_status,
    from_iso_date,
    from_rfc3339,
    invoke,
    invoke_batch,
    list_all_holdings,
    program_totals,
    read_pages,
    to_rfc3339,
)
from registry_bridge.errors import RegistryRejected
from registry_bridge.model import (
    BlockId,
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

REGISTRY_ID = "guangdong"

STATUS_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.BATCH_STATUS_NORMAL: HoldingStatus.ACTIVE,
    pb.BATCH_STATUS_RESTRICTED: HoldingStatus.LOCKED,
    pb.BATCH_STATUS_ESCROWED: HoldingStatus.BRIDGED,
    pb.BATCH_STATUS_CLEARED: HoldingStatus.SURRENDERED,
    pb.BATCH_STATUS_NEUTRALITY_CANCELLED: HoldingStatus.RETIRED,
    pb.BATCH_STATUS_CANCELLED: HoldingStatus.CANCELLED,
    pb.BATCH_STATUS_TRANSFERRED_OUT: HoldingStatus.EXPORTED,
}


def range_to_native(block_id: BlockId) -> pb.BatchRange:
    """A canonical block id as a Guangdong batch range."""
    return pb.BatchRange(
        variety=block_id.program.value,
        number_segment=block_id.serial_series,
        start_no=block_id.serial_start,
        end_no=block_id.serial_end,
    )


def range_from_native(native: pb.BatchRange) -> BlockId:
    """The canonical id of a Guangdong batch range.

    Raises:
        ValueError: Unknown variety, or an empty or reversed range.
    """
    return BlockId(Program(native.variety), native.number_segment, native.start_no, native.end_no)


def batch_to_native(block: UnitBlock) -> pb.Batch:
    """A canonical block as a Guangdong batch (批次)."""
    return pb.Batch(
        range=range_to_native(block.id),
        project_code=block.project_id,
        country=block.country,
        region=block.region,
        certified_from=block.vintage_start.isoformat(),
        certified_to=block.vintage_end.isoformat(),
        project_category=block.project_type,
        methodology=block.methodology,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_code=block.issuance_id,
        labels=sorted(block.labels),
        authorization=authorization_to_native(pb.LetterOfAuthorization, block.authorization),
        corresponding_adjustment=block.corresponding_adjustment.value,
        attributes=[pb.Attribute(key=k, value=v) for k, v in block.native_attributes],
    )


def batch_from_native(native: pb.Batch) -> UnitBlock:
    """The canonical block of a Guangdong batch.

    Raises:
        ValueError: A field is malformed.
    """
    auth = None
    if native.HasField("authorization"):
        auth = authorization_from_native(native.authorization)
    return UnitBlock(
        id=range_from_native(native.range),
        project_id=native.project_code,
        country=native.country,
        vintage_start=from_iso_date(native.certified_from),
        vintage_end=from_iso_date(native.certified_to),
        region=native.region,
        project_type=native.project_category,
        methodology=native.methodology,
        gas=native.gas or "CO2",
        gwp_basis=native.gwp_basis,
        issuance_id=native.issuance_code,
        authorization=auth,
        corresponding_adjustment=adjustment_from_native(native.corresponding_adjustment),
        labels=frozenset(native.labels),
        native_attributes=tuple((a.key, a.value) for a in native.attributes),
    )


class GuangdongClient:
    """The Guangdong pilot registry behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to the registry's native API.
        timeout_s: Deadline of each call, in seconds.
    """

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pb_grpc.GuangdongRegistryStub(channel)
        self._timeout_s = timeout_s

    @property
    def registry_id(self) -> str:
        """``"guangdong"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.HeldBatch) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATUS_TO_CANONICAL, native.status)
        return RegistryHolding(
            block=batch_from_native(native.batch),
            account=native.holder_code,
            status=status,
            lock_expires_at=from_rfc3339(native.restricted_until),
            mirror_of=range_from_native(native.mirror_of) if native.HasField("mirror_of") else None,
            mirror_origin_registry=native.mirror_registry,
        )

    def _apply(self, method: NativeMethod[pb.Receipt], application: object) -> RegistryHolding:
        return self._receipt(invoke(REGISTRY_ID, method, application, self._timeout_s))

    def _receipt(self, receipt: pb.Receipt) -> RegistryHolding:
        if receipt.outcome != pb.OUTCOME_APPROVED:
            raise RegistryRejected(
                REGISTRY_ID,
                receipt.refusal_code or "REFUSED",
                receipt.refusal_reason or "application refused",
            )
        return self._holding(receipt.batch)

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """``Issue`` (核发) a batch to a holder."""
        return self._apply(
            self._stub.Issue,
            pb.IssueApplication(
                application_no=request.operation_id,
                holder_code=request.account,
                batch=batch_to_native(request.block),
            ),
        )

    @staticmethod
    def _restrict(request: LockRequest) -> pb.RestrictApplication:
        return pb.RestrictApplication(
            application_no=request.operation_id,
            holder_code=request.account,
            range=range_to_native(request.block),
            restricted_until=to_rfc3339(request.expires_at),
            transfer_no=request.transfer,
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """``Restrict`` (限制) units for the transfer until the expiry."""
        return self._apply(self._stub.Restrict, self._restrict(request))

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """``LiftRestriction`` (解除限制) of the transfer."""
        return self._apply(
            self._stub.LiftRestriction,
            pb.LiftRestrictionApplication(
                application_no=request.operation_id,
                holder_code=request.account,
                range=range_to_native(request.block),
                transfer_no=request.transfer,
            ),
        )

    @staticmethod
    def _conclude(request: FinalizeRequest) -> pb.ConcludeTransferOutApplication:
        conclusion = (
            pb.CONCLUSION_ESCROW
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.CONCLUSION_TRANSFER_OUT
        )
        return pb.ConcludeTransferOutApplication(
            application_no=request.operation_id,
            holder_code=request.account,
            range=range_to_native(request.block),
            transfer_no=request.transfer,
            conclusion=conclusion,
            receiving_registry=request.destination_registry,
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """``ConcludeTransferOut`` (转出办结): escrow, or transfer out."""
        return self._apply(self._stub.ConcludeTransferOut, self._conclude(request))

    @staticmethod
    def _receive(request: CreditRequest) -> pb.ReceiveTransferInApplication:
        return pb.ReceiveTransferInApplication(
            application_no=request.operation_id,
            holder_code=request.account,
            batch=batch_to_native(request.origin),
            sending_registry=request.origin_registry,
            transfer_no=request.transfer,
            accept_before=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """``ReceiveTransferIn`` (转入), refused by the registry after the deadline."""
        return self._apply(self._stub.ReceiveTransferIn, self._receive(request))

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """批量申请 of restrictions, one call per chunk (``RestrictBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._restrict,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.RestrictBatch,
                    pb.RestrictBatchApplication(applications=items),
                    timeout_s,
                ).receipts
            ),
            from_native=self._receipt,
            timeout_s=self._timeout_s,
        )

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """批量申请 of conclusions, one call per chunk (``ConcludeTransferOutBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._conclude,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.ConcludeTransferOutBatch,
                    pb.ConcludeTransferOutBatchApplication(applications=items),
                    timeout_s,
                ).receipts
            ),
            from_native=self._receipt,
            timeout_s=self._timeout_s,
        )

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """批量申请 of transfers-in, one call per chunk (``ReceiveTransferInBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._receive,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.ReceiveTransferInBatch,
                    pb.ReceiveTransferInBatchApplication(applications=items),
                    timeout_s,
                ).receipts
            ),
            from_native=self._receipt,
            timeout_s=self._timeout_s,
        )

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """``CancelForNeutrality`` (碳中和注销) for a beneficiary's claim."""
        return self._apply(
            self._stub.CancelForNeutrality,
            pb.CancelForNeutralityApplication(
                application_no=request.operation_id,
                holder_code=request.account,
                range=range_to_native(request.block),
                beneficiary=request.beneficiary,
                claim=request.claim_text,
            ),
        )

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """``ClearForCompliance`` (履约清缴) for an entity's compliance year."""
        return self._apply(
            self._stub.ClearForCompliance,
            pb.ClearForComplianceApplication(
                application_no=request.operation_id,
                holder_code=request.account,
                range=range_to_native(request.block),
                entity_code=request.entity_id,
                compliance_year=request.compliance_year,
            ),
        )

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """``Cancel`` (注销) with a reason."""
        return self._apply(
            self._stub.Cancel,
            pb.CancelApplication(
                application_no=request.operation_id,
                holder_code=request.account,
                range=range_to_native(request.block),
                reason=request.reason,
            ),
        )

    def _batches(
        self, query: pb.ListBatchesRequest, resume_key: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One page of ``query`` (分页查询), transferred-out batches omitted."""
        request = pb.ListBatchesRequest(rows_per_page=LISTING_PAGE_SIZE, resume_key=resume_key)
        request.MergeFrom(query)
        native = invoke(
            REGISTRY_ID, self._stub.ListBatches, request, self._timeout_s, still_wanted=still_wanted
        )
        return HoldingsPage(
            tuple(
                self._holding(b)
                for b in native.batches
                if b.status != pb.BATCH_STATUS_TRANSFERRED_OUT
            ),
            native.next_resume_key,
        )

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """Every page of ``ListBatches`` overlapping the block."""
        query = pb.ListBatchesRequest(overlapping=range_to_native(request.block))
        return read_pages(REGISTRY_ID, lambda resume_key: self._batches(query, resume_key))

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One page of ``ListBatches`` of one holder or all, ``page`` its resume key."""
        return self._batches(pb.ListBatchesRequest(holder_code=request.account), page, still_wanted)

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """Every page of ``ListBatches`` of one holder or all."""
        return list_all_holdings(self, request, still_wanted)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """``Summarize`` (汇总): quantities per variety and batch status."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Summarize,
            pb.SummarizeRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATUS_TO_CANONICAL, ((t.variety, t.status, t.quantity) for t in native.totals)
        )
