"""Covered entities' compliance years, stored in the ledger database.

Offsets an entity already surrendered are not stored twice: they are summed from the
surrenders the bridge completed for that entity, jurisdiction and year.
"""

from __future__ import annotations

import json
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from compliance_rules import EntityYear, OffsetUse
from registry_bridge.db import read_only
from registry_bridge.errors import InvalidRequest
from registry_bridge.schema import EntityYearRecord, UnitUseRecord


def record_entity_year(
    session: Session,
    entity_id: str,
    jurisdiction: str,
    compliance_year: int,
    verified_emissions: int,
    allowances_due: int,
    covered_by_national_ets: bool = False,
) -> None:
    """Record (or correct) an entity's verified emissions and allowances due for a year.

    Raises:
        InvalidRequest: A figure is negative or the year is out of range.
    """
    if verified_emissions < 0:
        raise InvalidRequest.field("verified_emissions", "must not be negative")
    if allowances_due < 0:
        raise InvalidRequest.field("allowances_due", "must not be negative")
    if not 2000 <= compliance_year <= 2100:
        raise InvalidRequest.field("compliance_year", "must be between 2000 and 2100")
    session.merge(
        EntityYearRecord(
            entity_id=entity_id,
            jurisdiction=jurisdiction,
            compliance_year=compliance_year,
            verified_emissions=verified_emissions,
            allowances_due=allowances_due,
            covered_by_national_ets=covered_by_national_ets,
        )
    )


class DatabaseEntityRecords:
    """``EntityRecords`` over the ledger database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def get(self, entity_id: str, jurisdiction: str, year: int) -> EntityYear | None:
        """The entity's year with the offsets it already surrendered, or None."""
        # Read-only: the gate asks while the bridge's surrender transaction is open.
        with read_only(self._sessions) as session:
            record = session.get(EntityYearRecord, (entity_id, jurisdiction, year))
            if record is None:
                return None
            used: dict[tuple[str, str, str], int] = defaultdict(int)
            uses = session.execute(
                sa.select(UnitUseRecord.detail).where(
                    UnitUseRecord.kind == "surrender", UnitUseRecord.state == "completed"
                )
            ).scalars()
            for raw in uses:
                detail = json.loads(raw)
                request = detail["request"]
                if (request["entity_id"], request["jurisdiction"], request["compliance_year"]) != (
                    entity_id,
                    jurisdiction,
                    year,
                ):
                    continue
                for spent in detail.get("surrendered", []):
                    if spent["offset"]:
                        used[(spent["program"], spent["country"], spent["region"])] += spent[
                            "quantity"
                        ]
            return EntityYear(
                entity_id=entity_id,
                compliance_year=year,
                verified_emissions=record.verified_emissions,
                allowances_due=record.allowances_due,
                offsets_surrendered=tuple(
                    OffsetUse(program=p, quantity=q, country=c, region=r)
                    for (p, c, r), q in sorted(used.items())
                ),
                covered_by_national_ets=record.covered_by_national_ets,
            )
