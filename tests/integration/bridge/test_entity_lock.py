"""An update of a covered entity's record and the recording of its migration, side by side.

A migration is recorded with the entity's row locked, and an update of the entity's
record locks it before it checks its years against the entity's migrations: whichever
comes second sees the other. On SQLite the process's writers are serialized anyway; on
PostgreSQL an update that checked before the lock would record a pilot year the
migration has just given to the national ETS.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from registry_bridge import db
from registry_bridge.covered_entities import ComplianceYear, CoveredEntity
from registry_bridge.entities import upsert_entity
from registry_bridge.errors import InvalidRequest
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.schema import CoveredEntityRecord, EntityYearRecord, MigrationRecord

_AT = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
_WAIT_S = 0.5
"""How long the migration's transaction stays open once the update was started."""


def _steel(*years: ComplianceYear) -> CoveredEntity:
    return CoveredEntity(
        entity_id="steel-l",
        display_name="Steel L",
        sector="steel",
        gases=("CO2",),
        accounts={"shenzhen": "sz-steel-l"},
        years=years,
    )


def test_an_entity_update_waits_for_a_migration_being_recorded_and_then_sees_it(
    database_url: str,
) -> None:
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with db.unit_of_work(sessions) as session:
            upsert_entity(session, _steel(ComplianceYear("shenzhen", 2023, 1_000, 1_000)), _AT)

        outcome: list[BaseException | None] = []

        def record_2024() -> None:
            try:
                with db.unit_of_work(sessions) as session:
                    upsert_entity(
                        session, _steel(ComplianceYear("shenzhen", 2024, 1_000, 1_000)), _AT
                    )
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        update = threading.Thread(target=record_2024)
        with db.unit_of_work(sessions) as session:
            # As Migrations._start records a migration: the entity's row locked first.
            session.get(CoveredEntityRecord, "steel-l", with_for_update=True)
            session.add(
                MigrationRecord(
                    id="m-1",
                    request_id="migrate-m-1",
                    caller=LOCAL_CALLER,
                    body_sha256=hashlib.sha256(b"m-1").digest(),
                    entity_id="steel-l",
                    from_jurisdiction="shenzhen",
                    to_jurisdiction="national",
                    first_year=2024,
                    state="running",
                    plan="{}",
                    failure_reason="",
                    created_at=_AT,
                    updated_at=_AT,
                )
            )
            session.flush()
            update.start()
            time.sleep(_WAIT_S)
        update.join(timeout=30)

        assert len(outcome) == 1
        refused = outcome[0]
        assert isinstance(refused, InvalidRequest), outcome
        assert "entity.years[0]: shenzhen 2024" in str(refused)
        with db.read_only(sessions) as session:
            years = session.execute(
                sa.select(EntityYearRecord.jurisdiction, EntityYearRecord.compliance_year).where(
                    EntityYearRecord.entity_id == "steel-l"
                )
            ).all()
        assert [tuple(y) for y in years] == [("shenzhen", 2023)]
    finally:
        engine.dispose()
