"""The Hong Kong / Macau venue adapter: the canonical port over a venue's native API.

A venue holds units of other programs under their original serials, so a canonical block
is a venue ``SerialRange`` as it is.  Canonical -> venue: issue is ``DepositUnits``, lock
``EarmarkForSettlement``, unlock ``ReleaseEarmark``, finalize ``SettleDelivery`` (keep in
custody, or deliver out), credit ``ReceiveDelivery`` (the origin block is held as it is),
retire ``RetireOnBehalf``, cancel ``CancelUnits``; venues have no compliance surrender.
Every settlement records its settlement currency, configured per adapter (HKEX Core
Climate settles in HKD or RMB, the Macau exchange in MOP).  The block translation lives
here once; the emulator reuses it to read its own wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adapters._pb.registries.hkmo.v1 import hkmo_pb2 as pb
from adapters._pb.registries.hkmo.v1 import hkmo_pb2_grpc as pb_grpc
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
    not_supported,
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

REGISTRY_ID = "hkmo"

SETTLEMENT_CURRENCIES = ("HKD", "RMB", "MOP")

STATE_TO_CANONICAL: dict[int, HoldingStatus] = {
    pb.AVAILABLE: HoldingStatus.ACTIVE,
    pb.EARMARKED: HoldingStatus.LOCKED,
    pb.IN_CUSTODY: HoldingStatus.BRIDGED,
    pb.RETIRED: HoldingStatus.RETIRED,
    pb.CANCELLED: HoldingStatus.CANCELLED,
    pb.SURRENDERED: HoldingStatus.SURRENDERED,
    pb.DELIVERED_OUT: HoldingStatus.EXPORTED,
}


def range_to_native(block_id: BlockId) -> pb.SerialRange:
    """A canonical block id as a venue serial range."""
    native = pb.SerialRange()
    _range_into(native, block_id)
    return native


def _range_into(native: pb.SerialRange, block_id: BlockId) -> None:
    native.program = block_id.program.value
    native.series = block_id.serial_series
    native.first_serial = block_id.serial_start
    native.last_serial = block_id.serial_end


def range_from_native(native: pb.SerialRange) -> BlockId:
    """The canonical id of a venue serial range.

    Raises:
        ValueError: Unknown program, or an empty or reversed range.
    """
    return BlockId(Program(native.program), native.series, native.first_serial, native.last_serial)


def units_to_native(block: UnitBlock) -> pb.Units:
    """A canonical block as venue units."""
    native = pb.Units()
    units_into(native, block)
    return native


def units_into(native: pb.Units, block: UnitBlock) -> None:
    """Write a canonical block into ``native`` as venue units (see :func:`units_to_native`)."""
    native.CopyFrom(_UNITS_OF_ATTRIBUTES(block))
    _range_into(native.range, block.id)


def _units_of_attributes(block: UnitBlock) -> pb.Units:
    """Venue units of a block, its range left unset."""
    return pb.Units(
        project_id=block.project_id,
        country=block.country,
        region=block.region,
        vintage_from=block.vintage_start.isoformat(),
        vintage_to=block.vintage_end.isoformat(),
        project_type=block.project_type,
        methodology=block.methodology,
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_id=block.issuance_id,
        labels=sorted(block.labels),
        authorization=authorization_to_native(pb.Authorization, block.authorization),
        corresponding_adjustment=block.corresponding_adjustment.value,
        origin_serial_attributes=[pb.Attribute(key=k, value=v) for k, v in block.native_attributes],
    )


_UNITS_OF_ATTRIBUTES = AttributeMemo(_units_of_attributes)


def units_from_native(native: pb.Units) -> UnitBlock:
    """The canonical block of venue units.

    Raises:
        ValueError: A field is malformed.
    """
    return _BLOCKS_OF_UNITS(native, range_from_native(native.range))


def _block_of_units(native: pb.Units) -> UnitBlock:
    auth = None
    if native.HasField("authorization"):
        auth = authorization_from_native(native.authorization)
    return UnitBlock(
        id=range_from_native(native.range),
        project_id=native.project_id,
        country=native.country,
        vintage_start=from_iso_date(native.vintage_from),
        vintage_end=from_iso_date(native.vintage_to),
        region=native.region,
        project_type=native.project_type,
        methodology=native.methodology,
        gas=native.gas or "CO2",
        gwp_basis=native.gwp_basis,
        issuance_id=native.issuance_id,
        authorization=auth,
        corresponding_adjustment=adjustment_from_native(native.corresponding_adjustment),
        labels=frozenset(native.labels),
        native_attributes=tuple((a.key, a.value) for a in native.origin_serial_attributes),
    )


_BLOCKS_OF_UNITS = NativeAttributeMemo(pb.Units, "range", _block_of_units)


class VenueClient:
    """A Hong Kong or Macau venue behind :class:`registry_bridge.port.RegistryPort`.

    Args:
        channel: A gRPC channel to the venue's native API.
        timeout_s: Deadline of each call, in seconds.
        settlement_currency: Recorded with each settlement: ``HKD``, ``RMB`` or ``MOP``.

    Raises:
        ValueError: An unknown settlement currency.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout_s: float = 5.0,
        settlement_currency: str = "HKD",
    ) -> None:
        if settlement_currency not in SETTLEMENT_CURRENCIES:
            raise ValueError(
                f"settlement currency must be one of {SETTLEMENT_CURRENCIES}, "
                f"not {settlement_currency!r}"
            )
        self._stub = pb_grpc.CarbonVenueStub(channel)
        self._timeout_s = timeout_s
        self._currency = pb.SettlementCurrency.Value(settlement_currency)

    @property
    def registry_id(self) -> str:
        """``"hkmo"``."""
        return REGISTRY_ID

    def _holding(self, native: pb.Position) -> RegistryHolding:
        status = canonical_status(REGISTRY_ID, STATE_TO_CANONICAL, native.state)
        return RegistryHolding(
            block=units_from_native(native.units),
            account=native.client_account,
            status=status,
            lock_expires_at=from_rfc3339(native.earmark_until),
        )

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """List units onto the venue (``DepositUnits``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.DepositUnits,
            pb.DepositUnitsRequest(
                operation_id=request.operation_id,
                client_account=request.account,
                units=units_to_native(request.block),
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _positions(
        self,
        query: pb.QueryPositionsRequest,
        next_token: str,
        still_wanted: StillWanted | None = None,
    ) -> HoldingsPage:
        """One reply of ``query``, positions delivered out omitted."""
        request = pb.QueryPositionsRequest(max_results=LISTING_PAGE_SIZE, next_token=next_token)
        request.MergeFrom(query)
        native = invoke(
            REGISTRY_ID,
            self._stub.QueryPositions,
            request,
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return HoldingsPage(
            tuple(self._holding(p) for p in native.positions if p.state != pb.DELIVERED_OUT),
            native.next_token,
        )

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """Positions overlapping the block (``QueryPositions``, every reply)."""
        query = pb.QueryPositionsRequest(overlapping=range_to_native(request.block))
        return read_pages(REGISTRY_ID, lambda token: self._positions(query, token))

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One reply of ``QueryPositions`` of one client account or all, after ``page``."""
        return self._positions(
            pb.QueryPositionsRequest(client_account=request.account), page, still_wanted
        )

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """Positions of one client account or all (``QueryPositions``, every reply)."""
        return list_all_holdings(self, request, still_wanted)

    def _earmark(self, request: LockRequest) -> pb.EarmarkForSettlementRequest:
        return pb.EarmarkForSettlementRequest(
            operation_id=request.operation_id,
            client_account=request.account,
            range=range_to_native(request.block),
            earmark_until=to_rfc3339(request.expires_at),
            settlement_reference=request.transfer,
        )

    def lock(self, request: LockRequest) -> RegistryHolding:
        """Earmark units for a pending settlement (``EarmarkForSettlement``)."""
        native = invoke(
            REGISTRY_ID, self._stub.EarmarkForSettlement, self._earmark(request), self._timeout_s
        )
        return self._holding(native)

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """Release an earmark (``ReleaseEarmark``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.ReleaseEarmark,
            pb.ReleaseEarmarkRequest(
                operation_id=request.operation_id,
                client_account=request.account,
                range=range_to_native(request.block),
                settlement_reference=request.transfer,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def _settle(self, request: FinalizeRequest) -> pb.SettleDeliveryRequest:
        mode = (
            pb.KEEP_IN_CUSTODY
            if request.disposition is FinalizeDisposition.IMMOBILIZE
            else pb.DELIVER_OUT
        )
        return pb.SettleDeliveryRequest(
            operation_id=request.operation_id,
            client_account=request.account,
            range=range_to_native(request.block),
            settlement_reference=request.transfer,
            mode=mode,
            counterparty_registry=request.destination_registry,
            settlement_currency=self._currency,
        )

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """Settle the delivery: keep in custody, or deliver out (``SettleDelivery``)."""
        native = invoke(
            REGISTRY_ID, self._stub.SettleDelivery, self._settle(request), self._timeout_s
        )
        return self._holding(native)

    def _receive(self, request: CreditRequest) -> pb.ReceiveDeliveryRequest:
        return pb.ReceiveDeliveryRequest(
            operation_id=request.operation_id,
            client_account=request.account,
            units=units_to_native(request.origin),
            origin_registry=request.origin_registry,
            settlement_reference=request.transfer,
            settlement_currency=self._currency,
            settle_by=to_rfc3339(request.deadline),
        )

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """Receive delivered units into a client account (``ReceiveDelivery``)."""
        native = invoke(
            REGISTRY_ID, self._stub.ReceiveDelivery, self._receive(request), self._timeout_s
        )
        return self._holding(native)

    def _result(self, native: pb.PositionBatchResult) -> RegistryHolding:
        if native.HasField("refusal"):
            raise item_refused(REGISTRY_ID, native.refusal)
        return self._holding(native.position)

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many earmarks in one call per chunk (``EarmarkForSettlementBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._earmark,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.EarmarkForSettlementBatch,
                    pb.EarmarkForSettlementBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many settlements in one call per chunk (``SettleDeliveryBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._settle,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.SettleDeliveryBatch,
                    pb.SettleDeliveryBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Many deliveries received in one call per chunk (``ReceiveDeliveryBatch``)."""
        return invoke_batch(
            REGISTRY_ID,
            requests,
            to_native=self._receive,
            call=lambda items, timeout_s: (
                invoke(
                    REGISTRY_ID,
                    self._stub.ReceiveDeliveryBatch,
                    pb.ReceiveDeliveryBatchRequest(requests=items),
                    timeout_s,
                ).results
            ),
            from_native=self._result,
            timeout_s=self._timeout_s,
        )

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """Retire units on behalf of a beneficiary (``RetireOnBehalf``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.RetireOnBehalf,
            pb.RetireOnBehalfRequest(
                operation_id=request.operation_id,
                client_account=request.account,
                range=range_to_native(request.block),
                beneficiary=request.beneficiary,
                claim=request.claim_text,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """Voluntary venues have no compliance surrender.

        Raises:
            RegistryRejected: Always, with code ``NOT_SUPPORTED``.
        """
        raise not_supported(REGISTRY_ID, "compliance surrender")

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """Cancel units (``CancelUnits``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.CancelUnits,
            pb.CancelUnitsRequest(
                operation_id=request.operation_id,
                client_account=request.account,
                range=range_to_native(request.block),
                reason=request.reason,
            ),
            self._timeout_s,
        )
        return self._holding(native)

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """Quantities per program and position state (``VenueTotals``)."""
        native = invoke(
            REGISTRY_ID,
            self._stub.VenueTotals,
            pb.VenueTotalsRequest(),
            self._timeout_s,
            still_wanted=still_wanted,
        )
        return program_totals(
            STATE_TO_CANONICAL, ((t.program, t.state, t.quantity) for t in native.totals)
        )
