"""What a covered entity has surrendered for a year, as the offset limits count it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from registry_bridge import db
from registry_bridge.entities import DatabaseEntityRecords
from registry_bridge.schema import EntityYearRecord, UnitUseRecord


def _surrender(use_id: str, state: str, quantity: int) -> UnitUseRecord:
    request = {"entity_id": "steel-1", "jurisdiction": "shenzhen", "compliance_year": 2024}
    spent = {"program": "CCER", "quantity": quantity, "country": "CN", "region": "", "offset": True}
    return UnitUseRecord(
        id=use_id,
        request_id=use_id,
        caller="",
        body_sha256=b"\0" * 32,
        kind="surrender",
        state=state,
        registry_id="shenzhen",
        account="steel-1",
        detail=json.dumps({"request": request, "legs": [], "surrendered": [spent]}),
        created_at=datetime(2025, 3, 1, tzinfo=UTC),
        **request,
    )


def _offsets_counted(database_url: str, *surrenders: UnitUseRecord) -> list[tuple[str, int]]:
    """The offsets steel-1's 2024 Shenzhen year counts as surrendered, with ``surrenders``
    recorded (program and quantity of each)."""
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    try:
        with db.unit_of_work(sessions) as session:
            session.add(
                EntityYearRecord(
                    entity_id="steel-1",
                    jurisdiction="shenzhen",
                    compliance_year=2024,
                    verified_emissions=50_000,
                    allowances_due=50_000,
                )
            )
            session.add_all(surrenders)
        year = DatabaseEntityRecords(sessions).get("steel-1", "shenzhen", 2024)
        assert year is not None
        return [(u.program, u.quantity) for u in year.offsets_surrendered]
    finally:
        engine.dispose()


def test_a_failed_surrender_counts_the_units_its_done_legs_surrendered(database_url: str) -> None:
    """A surrender a registry refused part-way (``failed``) surrendered for good what its
    earlier legs did: those offsets count toward the year's limits; a rejected one's none."""
    counted = _offsets_counted(
        database_url,
        _surrender("done", "completed", 100),
        _surrender("part", "failed", 20),
        _surrender("none", "rejected", 7),
    )
    assert counted == [("CCER", 120)]


def test_a_settled_or_retried_surrender_counts_everything_it_surrendered(
    database_url: str,
) -> None:
    """A failed surrender an operator settled by hand (``resolved``) surrendered all its
    units; one being retried (``pending`` again) keeps what its done legs surrendered."""
    counted = _offsets_counted(
        database_url, _surrender("settled", "resolved", 30), _surrender("retrying", "pending", 4)
    )
    assert counted == [("CCER", 34)]
