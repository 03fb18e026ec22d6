"""A recorded compliance year withdrawn (UpsertCoveredEntityRequest.withdraw_years), over
real gRPC on both databases.

The case it is for: a migration out of the pilot from year Y fails and is abandoned, and
while it stood the national registry recorded the entity's year Y (it surrendered nothing
for it). Recorded on the national side, Y blocks every later plan that leaves it in the
pilot (CL-MIGRATION-0007), for good, as no year could be removed. Withdrawn, it no longer
does; the withdrawal stays on the entity's record, with the figures the year had.
"""

from __future__ import annotations

import dataclasses
import threading
from functools import partial
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway.cli import main
from gateway.demo_migration import pilot_entity, settle_final_pilot_year
from registry_bridge import entities
from registry_bridge.db import unit_of_work
from registry_bridge.schema import (
    EntityYearRecord,
    EntityYearWithdrawalRecord,
    IdempotencyRecord,
    UnitUseRecord,
)
from tests.integration.gateway.conftest import LiveGateway
from tests.integration.gateway.entity_records import year_record
from tests.integration.gateway.test_migration_abandon import (
    YEAR_COVERED_TWICE,
    _abandon,
    _allocated,
    _failed_migration,
    _record_year,
    _refused,
    _surrender,
)
from tests.integration.gateway.test_migration_holds import (
    _check_invariants,
    _execute,
    _pilot,
    _plan,
    _seeded,
)


def _withdraw(
    gateway: LiveGateway,
    entity_id: str,
    *years: tuple[str, int],
    request_id: str = "withdraw-1",
    entity: gateway_pb2.CoveredEntity | None = None,
) -> gateway_pb2.CoveredEntity:
    """UpsertCoveredEntity withdrawing ``years`` (jurisdiction, year); the entity names
    only its id unless ``entity`` is given."""
    reply: gateway_pb2.CoveredEntity = gateway.stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id=request_id,
            entity=entity or gateway_pb2.CoveredEntity(entity_id=entity_id),
            withdraw_years=[
                gateway_pb2.ComplianceYearRef(jurisdiction=j, compliance_year=y) for j, y in years
            ],
        ),
        timeout=30,
    )
    return reply


def _years(gateway: LiveGateway, entity_id: str) -> list[tuple[str, int]]:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        return [
            (str(j), int(y))
            for j, y in session.execute(
                sa.select(EntityYearRecord.jurisdiction, EntityYearRecord.compliance_year)
                .where(EntityYearRecord.entity_id == entity_id)
                .order_by(EntityYearRecord.jurisdiction, EntityYearRecord.compliance_year)
            )
        ]


def _counts(gateway: LiveGateway) -> list[int]:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        return [
            int(session.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
            for table in (EntityYearRecord, EntityYearWithdrawalRecord, IdempotencyRecord)
        ]


def test_withdrawing_a_national_year_recorded_under_an_abandoned_migration_unblocks_a_later_move(
    database_url: str,
) -> None:
    with _failed_migration(database_url, "steel-w1", 41_000_000, "migrate-w1") as (
        gateway,
        registries,
        steel,
        failed,
    ):
        year = steel.first_national_year
        # While the migration stood, the national registry recorded the entity's first
        # national year; the entity surrendered nothing for it.
        _record_year(gateway, steel, "national", year)
        _abandon(gateway.stub, failed.name)
        # The entity stays in the pilot for that year: recorded, paid, then a move from
        # the year after.
        _record_year(gateway, steel, "shenzhen", year)
        sza = _allocated(gateway, registries, steel, "shenzhen", year)
        paid = _surrender(gateway, steel, "pilot-w1", "shenzhen", year, sza)
        assert paid.state == model_pb2.USE_STATE_COMPLETED, paid
        stays = dataclasses.replace(steel, final_year=year)
        blocked = [
            v.message
            for v in _plan(gateway, stays).blocking_violations
            if v.rule_id == YEAR_COVERED_TWICE
        ]
        assert any(f"has a compliance year recorded in national for {year}" in m for m in blocked)

        withdrawn = _withdraw(gateway, steel.entity_id, ("national", year))
        assert ("national", year) not in [
            (y.jurisdiction, y.compliance_year) for y in withdrawn.years
        ]
        assert [
            (w.year.jurisdiction, w.year.compliance_year, w.year.verified_emissions, w.withdrawn_by)
            for w in withdrawn.withdrawn_years
        ] == [("national", year, 1_000, "")]
        assert withdrawn.withdrawn_years[0].HasField("withdrawn_at")
        # The record is otherwise as it was: an entity naming only its id changes nothing
        # else.
        assert (withdrawn.sector, list(withdrawn.gases)) == (steel.sector, list(steel.gases))
        assert len(withdrawn.accounts) == 2

        plan = _plan(gateway, stays)
        assert plan.executable, [v.message for v in plan.blocking_violations]
        again = _execute(gateway, stays, "migrate-w1-again")
        assert again.state == "completed", again.failure_reason
        _check_invariants(gateway, registries)


def test_a_withdrawal_is_refused_naming_what_is_wrong_and_changes_nothing(
    database_url: str,
) -> None:
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-w2", "steel", 2023, 42_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        _record_year(gateway, steel, "national", 2024)
        before = _counts(gateway)

        # The year surrendered for: FAILED_PRECONDITION naming the surrender.
        with unit_of_work(gateway.server.bridge.sessions) as session:
            uses = list(
                session.execute(
                    sa.select(UnitUseRecord.id).where(
                        UnitUseRecord.entity_id == steel.entity_id,
                        UnitUseRecord.compliance_year == 2023,
                    )
                ).scalars()
            )
        assert uses
        code, details = _refused(lambda: _withdraw(gateway, steel.entity_id, ("shenzhen", 2023)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "withdraw_years[0]" in details and f"uses/{uses[0]}" in details, details
        # A year not recorded, and an entity not recorded: NOT_FOUND, naming which.
        code, details = _refused(lambda: _withdraw(gateway, steel.entity_id, ("shenzhen", 2022)))
        assert code == grpc.StatusCode.NOT_FOUND, details
        assert "withdraw_years[0]" in details and "shenzhen year 2022" in details, details
        code, details = _refused(lambda: _withdraw(gateway, "no-such-entity", ("national", 2024)))
        assert code == grpc.StatusCode.NOT_FOUND and "entities/no-such-entity" in details
        # The second of two years fails: the first is not withdrawn either.
        code, details = _refused(
            lambda: _withdraw(gateway, steel.entity_id, ("national", 2024), ("national", 2030))
        )
        assert code == grpc.StatusCode.NOT_FOUND and "withdraw_years[1]" in details, details
        # Bad input names its field.
        record_and_withdraw = year_record(steel, "national", 2024, tonnes=5)
        for years, entity, field in (
            ((("national", 2024),), record_and_withdraw, "withdraw_years[0]"),
            ((("national", 2024), ("national", 2024)), None, "withdraw_years[1]"),
            ((("tokyo", 2024),), None, "withdraw_years[0].jurisdiction"),
            ((("national", 1999),), None, "withdraw_years[0].compliance_year"),
        ):
            code, details = _refused(
                partial(_withdraw, gateway, steel.entity_id, *years, entity=entity)
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert field in details, details
        # The record of withdrawals is the gateway's: a request carrying it is refused.
        replayed = gateway_pb2.CoveredEntity(entity_id=steel.entity_id)
        replayed.withdrawn_years.add().year.jurisdiction = "national"
        code, details = _refused(
            lambda: _withdraw(gateway, steel.entity_id, ("national", 2024), entity=replayed)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "entity.withdrawn_years" in details
        assert _counts(gateway) == before
        assert _years(gateway, steel.entity_id) == [("national", 2024), ("shenzhen", 2023)]

        # One request records a year and withdraws another.
        recorded = gateway_pb2.CoveredEntity()
        recorded.CopyFrom(record_and_withdraw)
        recorded.years[0].compliance_year = 2025
        reply = _withdraw(gateway, steel.entity_id, ("national", 2024), entity=recorded)
        assert [(y.jurisdiction, y.compliance_year) for y in reply.years] == [
            ("national", 2025),
            ("shenzhen", 2023),
        ]
        assert [w.year.compliance_year for w in reply.withdrawn_years] == [2024]
        # Idempotent: the same request answers the same; the same id for another body is
        # another request; a new request finds the year gone.
        assert _withdraw(gateway, steel.entity_id, ("national", 2024), entity=recorded) == reply
        code, _ = _refused(lambda: _withdraw(gateway, steel.entity_id, ("national", 2025)))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        code, _ = _refused(
            lambda: _withdraw(gateway, steel.entity_id, ("national", 2024), request_id="w-2")
        )
        assert code == grpc.StatusCode.NOT_FOUND
        # A withdrawn year may be recorded again (a new request: the first one's id
        # answers what it did then); its withdrawal stays on the record.
        gateway.stub.UpsertCoveredEntity(
            gateway_pb2.UpsertCoveredEntityRequest(
                request_id="year-national-2024-again", entity=record_and_withdraw
            ),
            timeout=30,
        )
        assert _years(gateway, steel.entity_id) == [
            ("national", 2024),
            ("national", 2025),
            ("shenzhen", 2023),
        ]
        again = _withdraw(gateway, steel.entity_id, ("national", 2024), request_id="w-3")
        assert [w.year.compliance_year for w in again.withdrawn_years] == [2024, 2024]


def test_a_surrender_committed_first_keeps_its_year_from_a_withdrawal(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The surrender is held after its rules decision, its entity's row locked; a
    withdrawal of its year asked meanwhile waits for it, then finds it and is refused."""
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-w3", "steel", 2023, 43_000_000)
        _seeded(gateway, registries, steel)
        _record_year(gateway, steel, "shenzhen", 2024)
        sza = _allocated(gateway, registries, steel, "shenzhen", 2024)
        rules = gateway.server.bridge._rules
        check_use = rules.check_use
        decided, withdrawal_returned = threading.Event(), threading.Event()

        def surrender_waits_after_its_decision(check: Any) -> Any:
            decision = check_use(check)
            decided.set()
            # Long enough for a withdrawal that is not held back to commit.
            withdrawal_returned.wait(timeout=2)
            return decision

        monkeypatch.setattr(rules, "check_use", surrender_waits_after_its_decision)
        answers: dict[str, model_pb2.UnitUse] = {}
        refusals: dict[str, tuple[grpc.StatusCode, str]] = {}

        def surrender() -> None:
            answers["surrender"] = _surrender(gateway, steel, "race-w3", "shenzhen", 2024, sza)

        racing = threading.Thread(target=surrender)
        racing.start()
        assert decided.wait(timeout=60)
        try:
            refusals["withdrawal"] = _refused(
                lambda: _withdraw(gateway, steel.entity_id, ("shenzhen", 2024))
            )
        finally:
            withdrawal_returned.set()
        racing.join(timeout=120)
        use = answers["surrender"]
        assert use.state == model_pb2.USE_STATE_COMPLETED, use
        code, details = refusals["withdrawal"]
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert f"uses/{use.name.removeprefix('uses/')}" in details, details
        assert ("shenzhen", 2024) in _years(gateway, steel.entity_id)
        _check_invariants(gateway, registries)


def test_a_withdrawal_committed_first_leaves_a_surrender_no_year_to_claim(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The withdrawal is held before its commit, its entity's row locked; a surrender for
    the year asked meanwhile waits for it, then finds no year recorded and is refused."""
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-w4", "steel", 2023, 44_000_000)
        _seeded(gateway, registries, steel)
        _record_year(gateway, steel, "shenzhen", 2024)
        sza = _allocated(gateway, registries, steel, "shenzhen", 2024)
        withdraw = entities.withdraw_entity_years
        withdrawn, surrender_returned = threading.Event(), threading.Event()

        def withdrawal_waits_before_its_commit(*args: Any, **kwargs: Any) -> None:
            withdraw(*args, **kwargs)
            withdrawn.set()
            # Long enough for a surrender that is not held back to be decided.
            surrender_returned.wait(timeout=2)

        monkeypatch.setattr(
            "gateway.migration_api.withdraw_entity_years", withdrawal_waits_before_its_commit
        )
        answers: dict[str, gateway_pb2.CoveredEntity] = {}
        refusals: dict[str, tuple[grpc.StatusCode, str]] = {}

        def withdrawal() -> None:
            answers["withdrawal"] = _withdraw(gateway, steel.entity_id, ("shenzhen", 2024))

        racing = threading.Thread(target=withdrawal)
        racing.start()
        assert withdrawn.wait(timeout=60)
        try:
            refusals["surrender"] = _refused(
                lambda: _surrender(gateway, steel, "race-w4", "shenzhen", 2024, sza)
            )
        finally:
            surrender_returned.set()
        racing.join(timeout=120)
        reply = answers["withdrawal"]
        assert [w.year.compliance_year for w in reply.withdrawn_years] == [2024]
        code, details = refusals["surrender"]
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "no verified emissions recorded for entity steel-w4 in year 2024" in details
        _check_invariants(gateway, registries)


def test_entity_withdraw_from_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-w5", "steel", 2023, 45_000_000)
        _seeded(gateway, registries, steel)
        _record_year(gateway, steel, "national", 2024)
        _record_year(gateway, steel, "national", 2025)
        common = ["--target", gateway.target, "--insecure"]
        capsys.readouterr()
        withdraw = ["entity", "withdraw", steel.entity_id, "--year", "national:2024"]
        withdraw += ["--year", "national:2025", "--request-id", "cli-w5", *common]
        assert main(withdraw) == 0
        out = capsys.readouterr().out
        shown = out[out.index(f"entities/{steel.entity_id}") :]
        assert "withdrew national 2024 (1000 verified, 1000 due)" in shown, shown
        assert "withdrew national 2025" in shown, shown
        assert _years(gateway, steel.entity_id) == [("shenzhen", 2023)]
        # The same command again answers the same; a year not recorded exits 1, saying so.
        assert main(withdraw) == 0
        assert capsys.readouterr().out[-len(shown) :] == shown
        assert (
            main(["entity", "withdraw", steel.entity_id, "--year", "national:2024", *common]) == 1
        )
        assert "NOT_FOUND" in capsys.readouterr().err
        # A year is JURISDICTION:YEAR.
        with pytest.raises(SystemExit) as exited:
            main(["entity", "withdraw", steel.entity_id, "--year", "2024", *common])
        assert exited.value.code == 2
