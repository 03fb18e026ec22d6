"""A covered entity's record naming one compliance year, as the tests send it."""

from __future__ import annotations

from adapters._pb.carbonlink.v1 import gateway_pb2
from gateway.demo_migration import PilotEntity


def year_record(
    entity: PilotEntity, jurisdiction: str, year: int, tonnes: int = 1_000
) -> gateway_pb2.CoveredEntity:
    """``entity``'s record with its ``jurisdiction`` compliance ``year`` alone, ``tonnes``
    verified and due (accounts and other years are left as they are)."""
    return gateway_pb2.CoveredEntity(
        entity_id=entity.entity_id,
        display_name=entity.display_name,
        sector=entity.sector,
        gases=list(entity.gases),
        years=[
            gateway_pb2.ComplianceYear(
                jurisdiction=jurisdiction,
                compliance_year=year,
                verified_emissions=tonnes,
                allowances_due=tonnes,
            )
        ],
    )
