"""The national registry adapter: the canonical port over DES-style transaction proposals.

Every canonical change is one ``AcceptProposal`` whose transaction identifier is the
operation id:

=========  ===================  ====================  =====================
canonical  transaction type     supplementary type    status when accepted
=========  ===================  ====================  =====================
issue      ISSUANCE 1           -                     COMPLETED 4
lock       EXTERNAL_TRANSFER 3  RESERVE               PROPOSED 1
unlock     EXTERNAL_TRANSFER 3  TERMINATE             TERMINATED 5
finalize   EXTERNAL_TRANSFER 3  COMPLETE_IMMOBILIZE   COMPLETED 4
           / COMPLETE_EXPORT
credit     EXTERNAL_TRANSFER 3  ACQUIRE               ACCEPTED 8
retire     RETIREMENT 5         VOLUNTARY             COMPLETED 4
surrender  RETIREMENT 5         COMPLIANCE            COMPLETED 4
cancel     CANCELLATION 4       -                     COMPLETED 4
=========  ===================  ====================  =====================

A refused proposal answers REJECTED 6 with evaluation results (response code and the
offending unit blocks), which become :class:`RegistryRejected`.  Reads are the DES
reconciliation calls ``ProvideTotals`` and ``ProvideUnitBlocks``.  The block translation
lives here once; the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from adapters._pb.registries.national.v1 import national_pb2 as pb
from adapters._pb.registries.national.v1 import national_pb2_grpc as pb_grpc
from adapters.client_core import (
    LISTING_PAGE_SIZE,
    HoldingsPage,
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
    UnitKind,
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

Canonical = TypeVar("Canonical")

REGISTRY_ID = "national"
REGISTRY_CODE = "CN"
"""This registry's code in proposals (DES: the Party's ISO code)."""
DES_MAJOR_VERSION = 1
DES_MINOR_VERSION = 1

STATE_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.BLOCK_HELD: HoldingStatus.ACTIVE,
    pb.BLOCK_RESERVED: HoldingStatus.LOCKED,
    pb.BLOCK_IMMOBILIZED: HoldingStatus.BRIDGED,
    pb.BLOCK_RETIRED: HoldingStatus.RETIRED,
    pb.BLOCK_CANCELLED: HoldingStatus.CANCELLED,
    pb.BLOCK_SURRENDERED: HoldingStatus.SURRENDERED,
    pb.BLOCK_EXPORTED: HoldingStatus.EXPORTED,
}


def identifier_to_native(block_id: BlockId) -> pb.UnitBlockIdentifier:
    """A canonical block id as a DES unit block identifier."""
    return pb.UnitBlockIdentifier(
        unit_serial_block_start=block_id.serial_start,
        unit_serial_block_end=block_id.serial_end,
        originating_registry_code=block_id.program.value,
        serial_series=block_id.serial_series,
    )


def identifier_from_native(identifier: pb.UnitBlockIdentifier) -> BlockId:
    """The canonical id of a DES unit block identifier.

    Raises:
        ValueError: Unknown program, or an empty or reversed range.
    """
    return BlockId(
        Program(identifier.originating_registry_code),
        identifier.serial_series,
        identifier.unit_serial_block_start,
        identifier.unit_serial_block_end,
    )


def block_to_native(block: UnitBlock) -> pb.TransactionUnitBlock:
    """A canonical block as a DES transaction unit block."""
    return pb.TransactionUnitBlock(
        identifier=identifier_to_native(block.id),
        unit_type=pb.ALLOWANCE if block.unit_kind is UnitKind.ALLOWANCE else pb.OFFSET_CREDIT,
        project_identifier=block.project_id,
        host_country=block.country,
        region=block.region,
        monitoring_period_start=block.vintage_start.isoformat(),
        monitoring_period_end=block.vintage_end.isoformat(),
        project_type=block.project_type,
        methodology=block.methodology,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_identifier=block.issuance_id,
        labels=sorted(block.labels),
        authorization=authorization_to_native(pb.Authorization, block.authorization),
        corresponding_adjustment=block.corresponding_adjustment.value,
        native_attributes=[pb.NativeAttribute(key=k, value=v) for k, v in block.native_attributes],
    )


def block_from_native(native: pb.TransactionUnitBlock) -> UnitBlock:
    """The canonical block of a DES transaction unit block.

    Raises:
        ValueError: A field is malformed.
    """
    auth = None
    if native.HasField("authorization"):
        auth = authorization_from_native(native.authorization)
    return UnitBlock(
        id=identifier_from_native(native.identifier),
        project_id=native.project_identifier,
        country=native.host_country,
        vintage_start=from_iso_date(native.monitoring_period_start),
        vintage_end=from_iso_date(native.monitoring_period_end),
        region=native.region,
        project_type=native.project_type,
        methodology=native.methodology,
        gas=native.gas or "CO2",
        gwp_basis=native.gwp_basis,
        issuance_id=native.issuance_identifier,
        authorization=auth,
        corresponding_adjustment=adjustment_from_native(native.corresponding_adjustment),
        labels=frozenset(native.labels),
        native_attributes=tuple((a.key, a.value) for a in native.native_attributes),
    )


def _unit_block_of(block_id: BlockId) -> pb.TransactionUnitBlock:
    """A proposal block naming only its identifier (for operations on held units)."""
    return pb.TransactionUnitBlock(identifier=identifier_to_native(block_id))


class NationalClient:
    """The national registry (CEA, CCER) behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to the registry's native API.
        timeout_s: Deadline of each call, in seconds.
    """

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pb_grpc.NationalRegistryStub(channel)
        self._timeout_s = timeout_s

    @property
    def registry_id(self) -> str:
        """``"national"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.HeldUnitBlock) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATE_TO_CANONICAL, native.state)
        return RegistryHolding(
            block=block_from_native(native.block),
            account=native.account_identifier,
            status=status,
            lock_expires_at=from_rfc3339(native.reservation_expiry),
            mirror_of=identifier_from_native(native.mirror_of)
            if native.HasField("mirror_of")
            else None,
            mirror_origin_registry=native.mirror_origin_registry_code,
        )

    @staticmethod
    def _proposal(transaction: pb.ProposalTransaction) -> pb.ProposalRequest:
        return pb.ProposalRequest(
            to=REGISTRY_CODE,
            major_version=DES_MAJOR_VERSION,
            minor_version=DES_MINOR_VERSION,
            proposed_transaction=transaction,
            **{"from": "carbonlink"},
        )

    def _propose(self, transaction: pb.ProposalTransaction) -> RegistryHolding:
        response = invoke(
            REGISTRY_ID, self._stub.AcceptProposal, self._proposal(transaction), self._timeout_s
        )
        return self._response(response)

    def _response(self, response: pb.ProposalResponse) -> RegistryHolding:
        if response.transaction_status == pb.REJECTED:
            first = response.evaluation_results[0] if response.evaluation_results else None
            raise RegistryRejected(
                REGISTRY_ID,
                first.response_code if first else "REJECTED",
                first.message if first else "proposal rejected",
            )
        return self._holding(response.resulting_block)

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """An ISSUANCE proposal."""
        return self._propose(
            pb.ProposalTransaction(
                transaction_identifier=request.operation_id,
                transaction_type=pb.ISSUANCE,
                acquiring_registry_code=REGISTRY_CODE,
                acquiring_account_identifier=request.account,
                proposal_unit_blocks=[block_to_native(request.block)],
            )
        )

    @staticmethod
    def _reserve(request: LockRequest) -> pb.ProposalTransaction:
        return pb.ProposalTransaction(
            transaction_identifier=request.operation_id,
            transaction_type=pb.EXTERNAL_TRANSFER,
            supp_transaction_type=pb.RESERVE,
            transferring_registry_code=REGISTRY_CODE,
            transferring_account_identifier=request.account,
            notification_identifier=request.transfer,
            proposal_unit_blocks=[_unit_block_of(request.block)],
            reservation_expiry=to_rfc3339(request.expires_at),
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """An EXTERNAL_TRANSFER proposal reserving the blocks."""
        return self._propose(self._reserve(request))

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """An EXTERNAL_TRANSFER proposal terminating the transfer."""
        return self._propose(
            pb.ProposalTransaction(
                transaction_identifier=request.operation_id,
                transaction_type=pb.EXTERNAL_TRANSFER,
                supp_transaction_type=pb.TERMINATE,
                transferring_registry_code=REGISTRY_CODE,
                transferring_account_identifier=request.account,
                notification_identifier=request.transfer,
                proposal_unit_blocks=[_unit_block_of(request.block)],
            )
        )

    @staticmethod
    def _complete(request: FinalizeRequest) -> pb.ProposalTransaction:
        supp = (
            pb.COMPLETE_IMMOBILIZE
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.COMPLETE_EXPORT
        )
        return pb.ProposalTransaction(
            transaction_identifier=request.operation_id,
            transaction_type=pb.EXTERNAL_TRANSFER,
            supp_transaction_type=supp,
            transferring_registry_code=REGISTRY_CODE,
            transferring_account_identifier=request.account,
            acquiring_registry_code=request.destination_registry,
            notification_identifier=request.transfer,
            proposal_unit_blocks=[_unit_block_of(request.block)],
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """An EXTERNAL_TRANSFER proposal completing the transfer."""
        return self._propose(self._complete(request))

    @staticmethod
    def _acquire(request: CreditRequest) -> pb.ProposalTransaction:
        return pb.ProposalTransaction(
            transaction_identifier=request.operation_id,
            transaction_type=pb.EXTERNAL_TRANSFER,
            supp_transaction_type=pb.ACQUIRE,
            transferring_registry_code=request.origin_registry,
            acquiring_registry_code=REGISTRY_CODE,
            acquiring_account_identifier=request.account,
            notification_identifier=request.transfer,
            proposal_unit_blocks=[block_to_native(request.origin)],
            acquisition_deadline=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """An EXTERNAL_TRANSFER proposal on the acquiring side."""
        return self._propose(self._acquire(request))

    def _propose_many(
        self,
        requests: Sequence[Canonical],
        to_transaction: Callable[[Canonical], pb.ProposalTransaction],
    ) -> list[RegistryHolding | RegistryRejected]:
        # Every kind of proposal goes through the one batch RPC, as through AcceptProposal.
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=lambda request: self._proposal(to_transaction(request)),
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.AcceptProposals,
                    pb.ProposalBatchRequest(proposals=items),
                    timeout_s,
                ).responses
            ),
            from_native=self._response,
            timeout_s=self._timeout_s,
        )

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many reserving proposals, one ``AcceptProposals`` call per chunk."""
        return self._propose_many(requests, self._reserve)

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many completing proposals, one ``AcceptProposals`` call per chunk."""
        return self._propose_many(requests, self._complete)

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many acquiring proposals, one ``AcceptProposals`` call per chunk."""
        return self._propose_many(requests, self._acquire)

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """A voluntary RETIREMENT proposal."""
        return self._propose(
            pb.ProposalTransaction(
                transaction_identifier=request.operation_id,
                transaction_type=pb.RETIREMENT,
                supp_transaction_type=pb.VOLUNTARY,
                transferring_registry_code=REGISTRY_CODE,
                transferring_account_identifier=request.account,
                proposal_unit_blocks=[_unit_block_of(request.block)],
                retirement_beneficiary=request.beneficiary,
                comment=request.claim_text,
            )
        )

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """A compliance RETIREMENT proposal (履约清缴)."""
        return self._propose(
            pb.ProposalTransaction(
                transaction_identifier=request.operation_id,
                transaction_type=pb.RETIREMENT,
                supp_transaction_type=pb.COMPLIANCE,
                transferring_registry_code=REGISTRY_CODE,
                transferring_account_identifier=request.account,
                proposal_unit_blocks=[_unit_block_of(request.block)],
                entity_identifier=request.entity_id,
                compliance_year=request.compliance_year,
            )
        )

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """A CANCELLATION proposal."""
        return self._propose(
            pb.ProposalTransaction(
                transaction_identifier=request.operation_id,
                transaction_type=pb.CANCELLATION,
                transferring_registry_code=REGISTRY_CODE,
                transferring_account_identifier=request.account,
                proposal_unit_blocks=[_unit_block_of(request.block)],
                comment=request.reason,
            )
        )

    def _blocks(
        self,
        query: pb.ProvideUnitBlocksRequest,
        continuation: str,
        still_wanted: StillWanted | None = None,
    ) -> HoldingsPage:
        """One response of ``query``, exported blocks omitted."""
        request = pb.ProvideUnitBlocksRequest(
            max_blocks=LISTING_PAGE_SIZE, continuation_token=continuation
        )
        request.MergeFrom(query)
        native = invoke(
            REGISTRY_ID,
            self._stub.ProvideUnitBlocks,
            request,
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return HoldingsPage(
            tuple(self._holding(b) for b in native.blocks if b.state != pb.BLOCK_EXPORTED),
            native.continuation_token,
        )

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """``ProvideUnitBlocks`` overlapping the block, every response."""
        query = pb.ProvideUnitBlocksRequest(overlapping=identifier_to_native(request.block))
        return read_pages(REGISTRY_ID, lambda continuation: self._blocks(query, continuation))

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One response of ``ProvideUnitBlocks`` of one account or all, ``page`` its
        continuation token."""
        return self._blocks(
            pb.ProvideUnitBlocksRequest(account_identifier=request.account), page, still_wanted
        )

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """``ProvideUnitBlocks`` of one account or all, every response."""
        return list_all_holdings(self, request, still_wanted)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """``ProvideTotals``: quantities per originating program and block state."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ProvideTotals,
            pb.ProvideTotalsRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATE_TO_CANONICAL,
            ((t.originating_registry_code, t.state, t.quantity) for t in native.totals),
        )
