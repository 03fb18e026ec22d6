"""Conversions between generated protobuf messages and domain objects.

Generated types stop here: the servicer converts each request into domain values on the
way in and each domain result into a message on the way out.
"""

from __future__ import annotations

from adapters._pb.carbonlink.v1 import model_pb2
from gateway.catalog import RegistryInfo
from registry_bridge.model import (
    BlockId,
    CorrespondingAdjustment,
    HoldingStatus,
    UnitBlock,
    UnitKind,
)

_UNIT_KIND = {
    UnitKind.ALLOWANCE: model_pb2.UNIT_KIND_ALLOWANCE,
    UnitKind.OFFSET_CREDIT: model_pb2.UNIT_KIND_OFFSET_CREDIT,
}
_CORRESPONDING_ADJUSTMENT = {
    CorrespondingAdjustment.NOT_APPLICABLE: model_pb2.CORRESPONDING_ADJUSTMENT_NOT_APPLICABLE,
    CorrespondingAdjustment.PENDING: model_pb2.CORRESPONDING_ADJUSTMENT_PENDING,
    CorrespondingAdjustment.APPLIED: model_pb2.CORRESPONDING_ADJUSTMENT_APPLIED,
}
HOLDING_STATUS = {
    HoldingStatus.ACTIVE: model_pb2.HOLDING_STATUS_ACTIVE,
    HoldingStatus.LOCKED: model_pb2.HOLDING_STATUS_LOCKED,
    HoldingStatus.BRIDGED: model_pb2.HOLDING_STATUS_BRIDGED,
    HoldingStatus.RETIRED: model_pb2.HOLDING_STATUS_RETIRED,
    HoldingStatus.CANCELLED: model_pb2.HOLDING_STATUS_CANCELLED,
    HoldingStatus.SURRENDERED: model_pb2.HOLDING_STATUS_SURRENDERED,
}


def registry_to_pb(info: RegistryInfo, reachable: bool) -> model_pb2.Registry:
    """A registry resource."""
    return model_pb2.Registry(
        name=f"registries/{info.registry_id}",
        registry_id=info.registry_id,
        display_name=info.display_name,
        programs=list(info.programs),
        serial_format=info.serial_format,
        reachable=reachable,
    )


def block_id_to_pb(block_id: BlockId) -> model_pb2.BlockId:
    """A canonical block identity."""
    return model_pb2.BlockId(
        program=block_id.program.value,
        serial_series=block_id.serial_series,
        serial_start=block_id.serial_start,
        serial_end=block_id.serial_end,
    )


def unit_block_to_pb(block: UnitBlock, native_serial: str = "") -> model_pb2.UnitBlock:
    """A canonical unit block, with its serial in the originating registry's format."""
    message = model_pb2.UnitBlock(
        id=block_id_to_pb(block.id),
        quantity=block.quantity,
        unit_kind=_UNIT_KIND[block.unit_kind],
        project_id=block.project_id,
        country=block.country,
        region=block.region,
        project_type=block.project_type,
        methodology=block.methodology,
        vintage_start=block.vintage_start.isoformat(),
        vintage_end=block.vintage_end.isoformat(),
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_id=block.issuance_id,
        corresponding_adjustment=_CORRESPONDING_ADJUSTMENT[block.corresponding_adjustment],
        labels=sorted(block.labels),
        native_serial=native_serial,
    )
    if block.authorization is not None:
        message.authorization.CopyFrom(
            model_pb2.Authorization(
                letter_id=block.authorization.letter_id,
                host_country=block.authorization.host_country,
                authorized_uses=sorted(block.authorization.authorized_uses),
                issued_on=block.authorization.issued_on.isoformat(),
            )
        )
    return message
