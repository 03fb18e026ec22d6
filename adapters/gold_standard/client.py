"""The Gold Standard adapter: the canonical port over the GS Impact Registry's native API.

Canonical -> Gold Standard: lock is ``InitiateTransfer`` (the "pending transfer" state,
with an expiry), unlock ``WithdrawTransfer``, finalize ``CompleteTransfer`` (immobilize,
or transfer out), credit ``AcceptReturn`` (GS accepts only its own immobilized credits
back), retire ``RetireCredits`` (beneficiary and use), cancel ``CancelCredits``; GS has no
compliance surrender.  Blocks travel as GS serial numbers, written and read with the Gold
Standard serial codec; a part of a block is named by issuance batch and credit numbers.

The block translation lives here once; the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adapters._pb.registries.gold_standard.v1 import gold_standard_pb2 as pb
from adapters._pb.registries.gold_standard.v1 import gold_standard_pb2_grpc as pb_grpc
from adapters.client_core import (
    LISTING_PAGE_SIZE,
    HoldingsPage,
    adjustment_from_native,
    authorization_from_native,
    authorization_to_native,
    canonical_status,
    from_rfc3339,
    invoke,
    invoke_batch,
    item_refused,
    list_all_holdings,
    not_supported,
    program_totals,
    read_pages,
    read_serial,
    spell_serial,
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

REGISTRY_ID = "gold-standard"

STATUS_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.CREDIT_STATUS_ISSUED: HoldingStatus.ACTIVE,
    pb.CREDIT_STATUS_PENDING_TRANSFER: HoldingStatus.LOCKED,
    pb.CREDIT_STATUS_IMMOBILIZED: HoldingStatus.BRIDGED,
    pb.CREDIT_STATUS_RETIRED: HoldingStatus.RETIRED,
    pb.CREDIT_STATUS_CANCELLED: HoldingStatus.CANCELLED,
    pb.CREDIT_STATUS_TRANSFERRED: HoldingStatus.EXPORTED,
}


def block_to_native(block: UnitBlock) -> pb.CreditBlock:
    """A canonical GS block as a Gold Standard credit block (serial written by the codec).

    Raises:
        SerialEncodeError: The block cannot be spelled as a GS serial.
    """
    return pb.CreditBlock(
        serial_number=spell_serial(REGISTRY_ID, block),
        project_type=block.project_type,
        methodology=block.methodology,
        region=block.region,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        labels=sorted(block.labels),
        article_six_authorization=authorization_to_native(
            pb.ArticleSixAuthorization, block.authorization
        ),
        corresponding_adjustment=block.corresponding_adjustment.value,
        monitoring_period_start=block.vintage_start.isoformat(),
        monitoring_period_end=block.vintage_end.isoformat(),
        number_of_credits=block.quantity,
    )


def block_from_native(credits: pb.CreditBlock) -> UnitBlock:
    """The canonical block of a Gold Standard credit block.

    Raises:
        SerialFormatError: The serial number is malformed.
        ValueError: Another field is malformed.
    """
    parsed = read_serial(REGISTRY_ID, credits.serial_number)
    auth = None
    if credits.HasField("article_six_authorization"):
        auth = authorization_from_native(credits.article_six_authorization)
    return UnitBlock(
        id=parsed.id,
        project_id=parsed.project_id,
        country=parsed.country,
        vintage_start=parsed.vintage_start,
        vintage_end=parsed.vintage_end,
        region=credits.region,
        project_type=credits.project_type,
        methodology=credits.methodology,
        gas=credits.gas or "CO2",
        gwp_basis=credits.gwp_basis,
        issuance_id=parsed.issuance_id,
        authorization=auth,
        corresponding_adjustment=adjustment_from_native(credits.corresponding_adjustment),
        labels=frozenset(credits.labels),
        native_attributes=parsed.native_attributes,
    )


def range_to_native(block_id: BlockId) -> pb.CreditRange:
    """A GS block id as a credit range (batch, first, last).

    Raises:
        ValueError: The block is not a GS block of a batch.
    """
    if block_id.program is not Program.GS or not block_id.serial_series:
        raise ValueError(f"Gold Standard holds only GS units of a batch, not {block_id}")
    return pb.CreditRange(
        issuance_batch=block_id.serial_series,
        first_credit=block_id.serial_start,
        last_credit=block_id.serial_end,
    )


def range_from_native(credit_range: pb.CreditRange) -> BlockId:
    """The canonical id of a credit range.

    Raises:
        ValueError: The range is empty or reversed.
    """
    return BlockId(
        Program.GS, credit_range.issuance_batch, credit_range.first_credit, credit_range.last_credit
    )


class GoldStandardClient:
    """The Gold Standard registry behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to a Gold Standard native API.
        timeout_s: Deadline of each call, in seconds.
    """

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pb_grpc.GoldStandardRegistryStub(channel)
        self._timeout_s = timeout_s

    @property
    def registry_id(self) -> str:
        """``"gold-standard"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.CreditHolding) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATUS_TO_CANONICAL, native.status)
        return RegistryHolding(
            block=block_from_native(native.credits),
            account=native.account_id,
            status=status,
            lock_expires_at=from_rfc3339(native.pending_until),
        )

    def _range(self, block_id: BlockId) -> pb.CreditRange:
        try:
            return range_to_native(block_id)
        except ValueError as exc:
            raise not_supported(REGISTRY_ID, f"operation on {block_id}") from exc

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """Issue credits (``IssueCredits``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.IssueCredits,
            pb.IssueCreditsRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                credits=block_to_native(request.block),
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """Holdings overlapping the block (``GetCreditBlock``, every answer), transferred-out
        ones omitted."""
        if request.block.program is not Program.GS:
            return ()
        credits = self._range(request.block)

        def answer(cursor: str) -> HoldingsPage:
            native = invoke(
                REGISTRY_ID,
                self._stub.GetCreditBlock,
                pb.GetCreditBlockRequest(range=credits, limit=LISTING_PAGE_SIZE, cursor=cursor),
                self._timeout_s,
            )
            return self._page(native)

        return read_pages(REGISTRY_ID, answer)

    def _initiate(self, request: LockRequest) -> pb.InitiateTransferRequest:
        return pb.InitiateTransferRequest(
            operation_id=request.operation_id,
            account_id=request.account,
            range=self._range(request.block),
            pending_until=to_rfc3339(request.expires_at),
            transfer_reference=request.transfer,
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """Put credits in pending transfer (``InitiateTransfer``)."""
        native = invoke(
            REGISTRY_ID, self._stub.InitiateTransfer, self._initiate(request), self._timeout_s
        )
        return self._holding(native)

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """Withdraw the pending transfer (``WithdrawTransfer``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.WithdrawTransfer,
            pb.WithdrawTransferRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                range=self._range(request.block),
                transfer_reference=request.transfer,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _complete(self, request: FinalizeRequest) -> pb.CompleteTransferRequest:
        kind = (
            pb.COMPLETION_IMMOBILIZE
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.COMPLETION_TRANSFER_OUT
        )
        return pb.CompleteTransferRequest(
            operation_id=request.operation_id,
            account_id=request.account,
            range=self._range(request.block),
            transfer_reference=request.transfer,
            completion=kind,
            destination_registry=request.destination_registry,
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """Complete the transfer: immobilize, or transfer out (``CompleteTransfer``)."""
        native = invoke(
            REGISTRY_ID, self._stub.CompleteTransfer, self._complete(request), self._timeout_s
        )
        return self._holding(native)

    def _accept_return(self, request: CreditRequest) -> pb.AcceptReturnRequest:
        if request.origin.program is not Program.GS:
            raise RegistryRejected(
                REGISTRY_ID,
                "FOREIGN_UNITS_NOT_ACCEPTED",
                f"Gold Standard holds only GS units, not {request.origin.program.value}",
            )
        return pb.AcceptReturnRequest(
            operation_id=request.operation_id,
            account_id=request.account,
            range=self._range(request.origin.id),
            transfer_reference=request.transfer,
            accept_by=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """Take back immobilized credits (``AcceptReturn``); foreign units are refused.

        Raises:
            RegistryRejected: ``FOREIGN_UNITS_NOT_ACCEPTED`` for units of another program,
                which the GS API cannot even name; otherwise as the registry answers.
        """
        native = invoke(
            REGISTRY_ID, self._stub.AcceptReturn, self._accept_return(request), self._timeout_s
        )
        return self._holding(native)

    def _result(self, native: pb.CreditBatchResult) -> RegistryHolding:
        if native.HasField("refusal"):
            raise item_refused(REGISTRY_ID, native.refusal)
        return self._holding(native.holding)

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many pending transfers in one call per chunk (``InitiateTransferBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._initiate,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.InitiateTransferBatch,
                    pb.InitiateTransferBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many completions in one call per chunk (``CompleteTransferBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._complete,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.CompleteTransferBatch,
                    pb.CompleteTransferBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many returns in one call per chunk (``AcceptReturnBatch``).

        Foreign units get their ``FOREIGN_UNITS_NOT_ACCEPTED`` refusal without being sent.
        """
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._accept_return,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.AcceptReturnBatch,
                    pb.AcceptReturnBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """Retire credits for a beneficiary and a use (``RetireCredits``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.RetireCredits,
            pb.RetireCreditsRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                range=self._range(request.block),
                beneficiary=request.beneficiary,
                use_case="voluntary",
                note=request.claim_text,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """Gold Standard has no compliance surrender.

        Raises:
            RegistryRejected: Always, with code ``NOT_SUPPORTED``.
        """
        raise not_supported(REGISTRY_ID, "compliance surrender")

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """Cancel credits (``CancelCredits``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.CancelCredits,
            pb.CancelCreditsRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                range=self._range(request.block),
                reason=request.reason,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _page(self, native: pb.CreditHoldingList | pb.ListAccountCreditsResponse) -> HoldingsPage:
        """Holdings as the registry listed them, its transferred-out ones omitted (they
        are held elsewhere now)."""
        return HoldingsPage(
            tuple(
                self._holding(h)
                for h in native.holdings
                if h.status != pb.CREDIT_STATUS_TRANSFERRED
            ),
            native.next_cursor,
        )

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """The credits after the cursor ``page`` (``ListAccountCredits``), transferred ones
        omitted."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ListAccountCredits,
            pb.ListAccountCreditsRequest(
                account_id=request.account, limit=LISTING_PAGE_SIZE, cursor=page
            ),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return self._page(native)

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """Holdings of one account or all: ``ListAccountCredits`` from cursor to cursor."""
        return list_all_holdings(self, request, still_wanted)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """Credit quantities per status (``GetTotals``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.GetTotals,
            pb.GetTotalsRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATUS_TO_CANONICAL, ((Program.GS, t.status, t.quantity) for t in native.totals)
        )
