"""Covered entities' compliance years, stored in the ledger database.

Offsets an entity already surrendered are not stored twice: they are summed from the
surrenders the bridge recorded for that entity, jurisdiction and year, those still waiting
on a registry included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from compliance_rules import EntityYear, OffsetUse
from registry_bridge import ledger
from registry_bridge.block_json import block_id_from_dict
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
            # A pending surrender has spent its units as surely as a completed one: its
            # holder's leg may be done and only an origin registry, down, still to answer.
            uses = session.execute(
                sa.select(UnitUseRecord.id, UnitUseRecord.state, UnitUseRecord.detail).where(
                    UnitUseRecord.kind == "surrender",
                    UnitUseRecord.state.in_(("pending", "completed")),
                )
            ).all()
            for use_id, state, raw in uses:
                detail = json.loads(raw)
                request = detail["request"]
                if (request["entity_id"], request["jurisdiction"], request["compliance_year"]) != (
                    entity_id,
                    jurisdiction,
                    year,
                ):
                    continue
                spending = (
                    detail.get("surrendered", [])
                    if state == "completed"
                    else _locked_for(session, use_id, detail["legs"])
                )
                for spent in spending:
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


def _locked_for(session: Session, use_id: str, legs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a pending surrender spends, in the form its record takes once it completes:
    the holder's rows it locked (an origin's leg holds no row of the holder)."""
    spent: list[dict[str, Any]] = []
    for leg in legs:
        if leg["origin"] is None:
            continue
        block = block_id_from_dict(leg["block"])
        for row in ledger.locked_by(session, leg["registry"], leg["account"], block, use_id):
            spent.append(
                {
                    "program": row.origin.program.value,
                    "quantity": row.block.quantity,
                    "country": row.block.country,
                    "region": row.block.region,
                    "offset": row.block.unit_kind.value == "offset_credit",
                }
            )
    return spent
