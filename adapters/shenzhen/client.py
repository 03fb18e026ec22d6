"""The Shenzhen pilot registry adapter: the canonical port over the registry's native API.

Canonical -> Shenzhen (深圳):

=========  =====================================================================
canonical  native call
=========  =====================================================================
issue      ``Register`` (登记)
lock       ``Freeze`` (冻结) against a transfer order, until a time
unlock     ``Unfreeze`` (解冻)
finalize   ``SettleTransferOrder`` (划转结算): custody (托管) or transfer out (划出)
credit     ``TransferIn`` (划入), before the order's latest entry time
retire     ``Cancel`` (注销), voluntary kind (自愿注销)
surrender  ``Fulfil`` (履约)
cancel     ``Cancel`` (注销), administrative kind (行政注销)
reads      ``QueryLots`` and ``Statistics`` (统计)
=========  =====================================================================

Every mutating call carries the operation id as its business serial number (业务流水号).
Lots travel as a number range plus the registry's lot information, not as serial strings:
mirror lots of other programs have Shenzhen numbers no serial format spells.  The lot
translation lives here once; the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adapters._pb.registries.shenzhen.v1 import shenzhen_pb2 as pb
from adapters._pb.registries.shenzhen.v1 import shenzhen_pb2_grpc as pb_grpc
from adapters.client_core import (
    LISTING_PAGE_SIZE,
    AttributeMemo,
    HoldingsPage,
    NativeAttributeMemo,
    adjustment_from_native,
    authorization_from_native,
    authorization_to_native,
    canonical_status,
    from_iso_date,
    from_rfc3339,
    invoke,
    invoke_batch,
    item_refused,
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

REGISTRY_ID = "shenzhen"

STATE_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.LOT_STATE_AVAILABLE: HoldingStatus.ACTIVE,
    pb.LOT_STATE_FROZEN: HoldingStatus.LOCKED,
    pb.LOT_STATE_IN_CUSTODY: HoldingStatus.BRIDGED,
    pb.LOT_STATE_FULFILLED: HoldingStatus.SURRENDERED,
    pb.LOT_STATE_VOLUNTARILY_CANCELLED: HoldingStatus.RETIRED,
    pb.LOT_STATE_CANCELLED: HoldingStatus.CANCELLED,
    pb.LOT_STATE_TRANSFERRED_OUT: HoldingStatus.EXPORTED,
}


def numbers_to_native(block_id: BlockId) -> pb.NumberRange:
    """A canonical block id as a Shenzhen number range (编号)."""
    native = pb.NumberRange()
    numbers_into(native, block_id)
    return native


def numbers_into(native: pb.NumberRange, block_id: BlockId) -> None:
    """Write a canonical block id into ``native`` (see :func:`numbers_to_native`)."""
    native.product = block_id.program.value
    native.segment = block_id.serial_series
    native.number_from = block_id.serial_start
    native.number_to = block_id.serial_end


def numbers_from_native(native: pb.NumberRange) -> BlockId:
    """The canonical id of a Shenzhen number range.

    Raises:
        ValueError: Unknown product, or an empty or reversed range.
    """
    return BlockId(Program(native.product), native.segment, native.number_from, native.number_to)


def info_to_native(block: UnitBlock) -> pb.LotInfo:
    """A canonical block as the registry's lot information (登记信息)."""
    native = pb.LotInfo()
    info_into(native, block)
    return native


def info_into(native: pb.LotInfo, block: UnitBlock) -> None:
    """Write a canonical block into ``native`` (see :func:`info_to_native`)."""
    native.CopyFrom(_INFO_OF_ATTRIBUTES(block))
    numbers_into(native.numbers, block.id)


def _info_of_attributes(block: UnitBlock) -> pb.LotInfo:
    """The lot information of a block, its numbers left unset."""
    return pb.LotInfo(
        project_code=block.project_id,
        host_country=block.country,
        region=block.region,
        period_from=block.vintage_start.isoformat(),
        period_to=block.vintage_end.isoformat(),
        project_type=block.project_type,
        methodology=block.methodology,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_no=block.issuance_id,
        labels=sorted(block.labels),
        authorization=authorization_to_native(pb.Authorization, block.authorization),
        corresponding_adjustment=block.corresponding_adjustment.value,
        extra_attributes=[pb.ExtraAttribute(key=k, value=v) for k, v in block.native_attributes],
    )


_INFO_OF_ATTRIBUTES = AttributeMemo(_info_of_attributes)


def info_from_native(native: pb.LotInfo) -> UnitBlock:
    """The canonical block of the registry's lot information.

    Raises:
        ValueError: A field is malformed.
    """
    return _BLOCKS_OF_INFO(native, numbers_from_native(native.numbers))


def _block_of_info(native: pb.LotInfo) -> UnitBlock:
    auth = None
    if native.HasField("authorization"):
        auth = authorization_from_native(native.authorization)
    return UnitBlock(
        id=numbers_from_native(native.numbers),
        project_id=native.project_code,
        country=native.host_country,
        vintage_start=from_iso_date(native.period_from),
        vintage_end=from_iso_date(native.period_to),
        region=native.region,
        project_type=native.project_type,
        methodology=native.methodology,
        gas=native.gas or "CO2",
        gwp_basis=native.gwp_basis,
        issuance_id=native.issuance_no,
        authorization=auth,
        corresponding_adjustment=adjustment_from_native(native.corresponding_adjustment),
        labels=frozenset(native.labels),
        native_attributes=tuple((a.key, a.value) for a in native.extra_attributes),
    )


_BLOCKS_OF_INFO = NativeAttributeMemo(pb.LotInfo, "numbers", _block_of_info)


class ShenzhenClient:
    """The Shenzhen pilot registry behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to the registry's native API.
        timeout_s: Deadline of each call, in seconds.
    """

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pb_grpc.ShenzhenRegistryStub(channel)
        self._timeout_s = timeout_s

    @property
    def registry_id(self) -> str:
        """``"shenzhen"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.Lot) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATE_TO_CANONICAL, native.state)
        mirror = native.mirror_source if native.HasField("mirror_source") else None
        return RegistryHolding(
            block=info_from_native(native.info),
            account=native.account_no,
            status=status,
            lock_expires_at=from_rfc3339(native.frozen_until),
            mirror_of=None if mirror is None else numbers_from_native(mirror.origin),
            mirror_origin_registry="" if mirror is None else mirror.origin_registry,
        )

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """Register units into an account (``Register``, 登记)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Register,
            pb.RegisterRequest(
                business_serial_no=request.operation_id,
                account_no=request.account,
                info=info_to_native(request.block),
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _lots(
        self, query: pb.QueryLotsRequest, after_key: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One answer of ``query`` after ``after_key``, lots transferred out omitted."""
        request = pb.QueryLotsRequest(max_lots=LISTING_PAGE_SIZE, after_key=after_key)
        request.MergeFrom(query)
        native = invoke(
            REGISTRY_ID, self._stub.QueryLots, request, self._timeout_s, still_wanted=still_wanted
        )
        return HoldingsPage(
            tuple(
                self._holding(lot)
                for lot in native.lots
                if lot.state != pb.LOT_STATE_TRANSFERRED_OUT
            ),
            native.next_after_key,
        )

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """Lots overlapping the block (``QueryLots``, every answer)."""
        query = pb.QueryLotsRequest(overlapping=numbers_to_native(request.block))
        return read_pages(REGISTRY_ID, lambda after_key: self._lots(query, after_key))

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One answer of ``QueryLots`` of one account or all, ``page`` its after key."""
        return self._lots(pb.QueryLotsRequest(account_no=request.account), page, still_wanted)

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """Lots of one account or all (``QueryLots``, every answer)."""
        return list_all_holdings(self, request, still_wanted)

    def _freeze(self, request: LockRequest) -> pb.FreezeRequest:
        return pb.FreezeRequest(
            business_serial_no=request.operation_id,
            account_no=request.account,
            numbers=numbers_to_native(request.block),
            frozen_until=to_rfc3339(request.expires_at),
            transfer_order_no=request.transfer,
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """Freeze units against the transfer order (``Freeze``, 冻结)."""
        native = invoke(REGISTRY_ID, self._stub.Freeze, self._freeze(request), self._timeout_s)
        return self._holding(native)

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """Unfreeze the order's units (``Unfreeze``, 解冻)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Unfreeze,
            pb.UnfreezeRequest(
                business_serial_no=request.operation_id,
                account_no=request.account,
                numbers=numbers_to_native(request.block),
                transfer_order_no=request.transfer,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _settle(self, request: FinalizeRequest) -> pb.SettleTransferOrderRequest:
        settlement = (
            pb.SETTLEMENT_CUSTODY
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.SETTLEMENT_TRANSFER_OUT
        )
        return pb.SettleTransferOrderRequest(
            business_serial_no=request.operation_id,
            account_no=request.account,
            numbers=numbers_to_native(request.block),
            transfer_order_no=request.transfer,
            settlement=settlement,
            counterparty_registry=request.destination_registry,
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """Settle the order: custody (托管) or transfer out (划出)."""
        native = invoke(
            REGISTRY_ID, self._stub.SettleTransferOrder, self._settle(request), self._timeout_s
        )
        return self._holding(native)

    def _transfer_in(self, request: CreditRequest) -> pb.TransferInRequest:
        return pb.TransferInRequest(
            business_serial_no=request.operation_id,
            account_no=request.account,
            info=info_to_native(request.origin),
            source_registry=request.origin_registry,
            transfer_order_no=request.transfer,
            latest_entry_time=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """Transfer arriving units in (``TransferIn``, 划入), before the deadline."""
        native = invoke(
            REGISTRY_ID, self._stub.TransferIn, self._transfer_in(request), self._timeout_s
        )
        return self._holding(native)

    def _cancel(
        self,
        operation_id: str,
        account: str,
        block: BlockId,
        kind: pb.CancellationKind.ValueType,
        beneficiary: str,
        statement: str,
    ) -> RegistryHolding:
        native = invoke(
            REGISTRY_ID,
            self._stub.Cancel,
            pb.CancelRequest(
                business_serial_no=operation_id,
                account_no=account,
                numbers=numbers_to_native(block),
                kind=kind,
                beneficiary=beneficiary,
                statement=statement,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _result(self, native: pb.LotBatchResult) -> RegistryHolding:
        if native.HasField("refusal"):
            raise item_refused(REGISTRY_ID, native.refusal)
        return self._holding(native.lot)

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """批量冻结: many freezes in one call per chunk (``FreezeBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._freeze,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.FreezeBatch,
                    pb.FreezeBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """批量划转结算: many settlements in one call per chunk (``SettleTransferOrderBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._settle,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.SettleTransferOrderBatch,
                    pb.SettleTransferOrderBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """批量划入: many transfers-in in one call per chunk (``TransferInBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._transfer_in,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.TransferInBatch,
                    pb.TransferInBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """Voluntary cancellation for a claimed use (``Cancel``, 自愿注销)."""
        return self._cancel(
            request.operation_id,
            request.account,
            request.block,
            pb.CANCELLATION_KIND_VOLUNTARY,
            request.beneficiary,
            request.claim_text,
        )

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """Administrative cancellation (``Cancel``, 行政注销)."""
        return self._cancel(
            request.operation_id,
            request.account,
            request.block,
            pb.CANCELLATION_KIND_ADMINISTRATIVE,
            "",
            request.reason,
        )

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """Compliance surrender of a covered entity (``Fulfil``, 履约)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Fulfil,
            pb.FulfilRequest(
                business_serial_no=request.operation_id,
                account_no=request.account,
                numbers=numbers_to_native(request.block),
                entity_code=request.entity_id,
                compliance_year=request.compliance_year,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """Quantities per product and lot state (``Statistics``, 统计)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.Statistics,
            pb.StatisticsRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATE_TO_CANONICAL, ((s.product, s.state, s.quantity) for s in native.statistics)
        )
