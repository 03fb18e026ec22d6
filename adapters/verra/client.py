"""The Verra adapter: the canonical registry port over Verra's native API.

Canonical -> Verra: lock is ``Immobilize`` (pending, with a hold expiry), unlock is
``ReleaseImmobilization``, finalize is ``ConfirmImmobilization`` (immobilize, or transfer
out), credit is ``RestoreImmobilized`` (Verra accepts only its own immobilized VCUs back),
retire and cancel are themselves, and Verra has no compliance surrender.  Blocks travel as
VCU serial numbers, written and read with the Verra serial codec.

The block translation lives here once; the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adapters._pb.registries.verra.v1 import verra_pb2 as pb
from adapters._pb.registries.verra.v1 import verra_pb2_grpc as pb_grpc
from adapters.client_core import (
    LISTING_PAGE_SIZE,
    AttributeMemo,
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
    to_ddmmyyyy,
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

REGISTRY_ID = "verra"

STATUS_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.VCU_STATUS_ACTIVE: HoldingStatus.ACTIVE,
    pb.VCU_STATUS_PENDING_IMMOBILIZATION: HoldingStatus.LOCKED,
    pb.VCU_STATUS_IMMOBILIZED: HoldingStatus.BRIDGED,
    pb.VCU_STATUS_RETIRED: HoldingStatus.RETIRED,
    pb.VCU_STATUS_CANCELLED: HoldingStatus.CANCELLED,
    pb.VCU_STATUS_TRANSFERRED_OUT: HoldingStatus.EXPORTED,
}


def block_to_native(block: UnitBlock) -> pb.VcuBlock:
    """A canonical VCS block as a Verra VCU block (serial written by the codec).

    Raises:
        SerialEncodeError: The block cannot be spelled as a VCU serial.
    """
    native = pb.VcuBlock()
    block_into(native, block)
    return native


def block_into(native: pb.VcuBlock, block: UnitBlock) -> None:
    """Write a canonical VCS block into ``native`` (see :func:`block_to_native`).

    Raises:
        SerialEncodeError: The block cannot be spelled as a VCU serial.
    """
    serial = spell_serial(REGISTRY_ID, block)
    native.CopyFrom(_VCUS_OF_ATTRIBUTES(block))
    native.serial_number = serial
    native.quantity = block.quantity


def _vcus_of_attributes(block: UnitBlock) -> pb.VcuBlock:
    """A Verra VCU block of a block, its serial and quantity (its range) left unset."""
    return pb.VcuBlock(
        project_type=block.project_type,
        methodology=block.methodology,
        region=block.region,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        additional_certifications=sorted(block.labels),
        authorization=authorization_to_native(pb.AuthorizationLabel, block.authorization),
        corresponding_adjustment=block.corresponding_adjustment.value,
        vintage_start=to_ddmmyyyy(block.vintage_start),
        vintage_end=to_ddmmyyyy(block.vintage_end),
    )


_VCUS_OF_ATTRIBUTES = AttributeMemo(_vcus_of_attributes)


def block_from_native(vcus: pb.VcuBlock) -> UnitBlock:
    """The canonical block of a Verra VCU block.

    Raises:
        SerialFormatError: The serial number is malformed.
        ValueError: Another field is malformed.
    """
    parsed = read_serial(REGISTRY_ID, vcus.serial_number)
    auth = None
    if vcus.HasField("authorization"):
        auth = authorization_from_native(vcus.authorization)
    return UnitBlock(
        id=parsed.id,
        project_id=parsed.project_id,
        country=parsed.country,
        vintage_start=parsed.vintage_start,
        vintage_end=parsed.vintage_end,
        region=vcus.region,
        project_type=vcus.project_type,
        methodology=vcus.methodology,
        gas=vcus.gas or "CO2",
        gwp_basis=vcus.gwp_basis,
        issuance_id=parsed.issuance_id,
        authorization=auth,
        corresponding_adjustment=adjustment_from_native(vcus.corresponding_adjustment),
        labels=frozenset(vcus.additional_certifications),
        native_attributes=parsed.native_attributes,
    )


def range_to_native(block_id: BlockId) -> pb.VcuRange:
    """A VCS block id as a Verra block-number range.

    Raises:
        ValueError: The block is not a VCS block (Verra holds nothing else).
    """
    if block_id.program is not Program.VCS or block_id.serial_series:
        raise ValueError(f"Verra holds only VCS units, not {block_id}")
    return pb.VcuRange(block_start=block_id.serial_start, block_end=block_id.serial_end)


def range_from_native(vcu_range: pb.VcuRange) -> BlockId:
    """The canonical id of a Verra block-number range.

    Raises:
        ValueError: The range is empty or reversed.
    """
    return BlockId(Program.VCS, "", vcu_range.block_start, vcu_range.block_end)


class VerraClient:
    """The Verra registry behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to a Verra native API.
        timeout_s: Deadline of each call, in seconds.
    """

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pb_grpc.VerraRegistryStub(channel)
        self._timeout_s = timeout_s

    @property
    def registry_id(self) -> str:
        """``"verra"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.VcuHolding) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATUS_TO_CANONICAL, native.status)
        return RegistryHolding(
            block=block_from_native(native.vcus),
            account=native.account_id,
            status=status,
            lock_expires_at=from_rfc3339(native.hold_until),
        )

    def _range(self, block_id: BlockId) -> pb.VcuRange:
        try:
            return range_to_native(block_id)
        except ValueError as exc:
            raise not_supported(REGISTRY_ID, f"operation on {block_id}") from exc

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """Issue VCUs (``IssueVcus``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.IssueVcus,
            pb.IssueVcusRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                vcus=block_to_native(request.block),
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """Holdings overlapping the block (``GetVcuBlock``, every page), transferred-out
        ones omitted."""
        if request.block.program is not Program.VCS:
            return ()
        vcus = self._range(request.block)

        def page(token: str) -> HoldingsPage:
            native = invoke(
                REGISTRY_ID,
                self._stub.GetVcuBlock,
                pb.GetVcuBlockRequest(range=vcus, page_size=LISTING_PAGE_SIZE, page_token=token),
                self._timeout_s,
            )
            return self._page(native)

        return read_pages(REGISTRY_ID, page)

    def _immobilize(self, request: LockRequest) -> pb.ImmobilizeRequest:
        return pb.ImmobilizeRequest(
            operation_id=request.operation_id,
            account_id=request.account,
            range=self._range(request.block),
            hold_until=to_rfc3339(request.expires_at),
            hold_reference=request.transfer,
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """Place VCUs on hold pending immobilization (``Immobilize``)."""
        native = invoke(
            REGISTRY_ID, self._stub.Immobilize, self._immobilize(request), self._timeout_s
        )
        return self._holding(native)

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """Release the hold (``ReleaseImmobilization``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ReleaseImmobilization,
            pb.ReleaseImmobilizationRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                range=self._range(request.block),
                hold_reference=request.transfer,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _confirm(self, request: FinalizeRequest) -> pb.ConfirmImmobilizationRequest:
        kind = (
            pb.CONFIRMATION_KIND_IMMOBILIZE
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.CONFIRMATION_KIND_TRANSFER_OUT
        )
        return pb.ConfirmImmobilizationRequest(
            operation_id=request.operation_id,
            account_id=request.account,
            range=self._range(request.block),
            hold_reference=request.transfer,
            kind=kind,
            destination_registry=request.destination_registry,
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """Confirm the immobilization, or transfer the VCUs out (``ConfirmImmobilization``)."""
        native = invoke(
            REGISTRY_ID, self._stub.ConfirmImmobilization, self._confirm(request), self._timeout_s
        )
        return self._holding(native)

    def _restore(self, request: CreditRequest) -> pb.RestoreImmobilizedRequest:
        if request.origin.program is not Program.VCS:
            raise RegistryRejected(
                REGISTRY_ID,
                "FOREIGN_UNITS_NOT_ACCEPTED",
                f"Verra holds only VCS units, not {request.origin.program.value}",
            )
        return pb.RestoreImmobilizedRequest(
            operation_id=request.operation_id,
            account_id=request.account,
            range=self._range(request.origin.id),
            reference=request.transfer,
            restore_by=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """Take back immobilized VCUs (``RestoreImmobilized``); foreign units are refused.

        Raises:
            RegistryRejected: ``FOREIGN_UNITS_NOT_ACCEPTED`` for units of another program,
                which Verra's API cannot even name; otherwise as the registry answers.
        """
        native = invoke(
            REGISTRY_ID, self._stub.RestoreImmobilized, self._restore(request), self._timeout_s
        )
        return self._holding(native)

    def _result(self, native: pb.VcuBatchResult) -> RegistryHolding:
        if native.HasField("refusal"):
            raise item_refused(REGISTRY_ID, native.refusal)
        return self._holding(native.holding)

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many holds in one call per chunk (``ImmobilizeBatch``); see the port's contract."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._immobilize,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.ImmobilizeBatch,
                    pb.ImmobilizeBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many confirmations in one call per chunk (``ConfirmImmobilizationBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._confirm,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.ConfirmImmobilizationBatch,
                    pb.ConfirmImmobilizationBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many restorations in one call per chunk (``RestoreImmobilizedBatch``).

        Foreign units get their ``FOREIGN_UNITS_NOT_ACCEPTED`` refusal without being sent.
        """
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._restore,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.RestoreImmobilizedBatch,
                    pb.RestoreImmobilizedBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """Retire VCUs for a beneficiary (``Retire``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Retire,
            pb.RetireRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                range=self._range(request.block),
                beneficiary=request.beneficiary,
                retirement_details=request.claim_text,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """Verra has no compliance surrender.

        Raises:
            RegistryRejected: Always, with code ``NOT_SUPPORTED``.
        """
        raise not_supported(REGISTRY_ID, "compliance surrender")

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """Cancel VCUs (``Cancel``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Cancel,
            pb.CancelRequest(
                operation_id=request.operation_id,
                account_id=request.account,
                range=self._range(request.block),
                reason=request.reason,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _page(self, native: pb.VcuHoldingList | pb.ListAccountHoldingsResponse) -> HoldingsPage:
        """Holdings as the registry listed them, its transferred-out ones omitted (they
        are held elsewhere now)."""
        return HoldingsPage(
            tuple(
                self._holding(h)
                for h in native.holdings
                if h.status != pb.VCU_STATUS_TRANSFERRED_OUT
            ),
            native.next_page_token,
        )

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One page of ``ListAccountHoldings``, transferred-out holdings omitted."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ListAccountHoldings,
            pb.ListAccountHoldingsRequest(
                account_id=request.account, page_size=LISTING_PAGE_SIZE, page_token=page
            ),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return self._page(native)

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """Holdings of one account or all: every page of ``ListAccountHoldings``."""
        return list_all_holdings(self, request, still_wanted)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """VCU quantities per status (``GetRegistryTotals``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.GetRegistryTotals,
            pb.GetRegistryTotalsRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATUS_TO_CANONICAL, ((Program.VCS, t.status, t.quantity) for t in native.totals)
        )
