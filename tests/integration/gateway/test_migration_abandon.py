"""A failed migration is abandoned (AbandonMigration), over real gRPC on both databases.

The failure is real: Shenzhen refuses the ``Freeze`` of the migration's transfer step (a
scripted refusal), after the step before it cancelled the entity's SZA. Abandoning keeps
what was done (the SZA stays cancelled at Shenzhen), marks the steps not taken, records
who, when and why, and frees the entity to plan again from what it holds then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import ScriptedRefusal
from adapters.serials import parse_serial
from gateway.cli import main
from gateway.demo_migration import PilotEntity, pilot_entity, settle_final_pilot_year, statuses
from registry_bridge import db
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.migration import DatabaseCutovers
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import IssueRequest
from registry_bridge.schema import CoveredEntityRecord, MigrationRecord, UnitUseRecord
from tests.integration.gateway.conftest import LinkedRegistries, LiveGateway
from tests.integration.gateway.entity_records import year_record
from tests.integration.gateway.test_migration_holds import (
    _check_invariants,
    _execute,
    _head,
    _pilot,
    _plan,
    _seeded,
)

ALREADY_MIGRATING = "CL-MIGRATION-0009"
MIGRATED_OUT = "CL-MIGRATION-0001"
PILOT_COVERED = "CL-MIGRATION-0002"
YEAR_COVERED_TWICE = "CL-MIGRATION-0007"
REASON = "the national registry refuses the destination account for good"


def _abandon(
    stub: Any, name: str, request_id: str = "abandon-1", reason: str = REASON
) -> gateway_pb2.Migration:
    migration: gateway_pb2.Migration = stub.AbandonMigration(
        gateway_pb2.AbandonMigrationRequest(request_id=request_id, name=name, reason=reason),
        timeout=60,
    )
    return migration


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), str(refused.value.details())


def _states(migration: gateway_pb2.Migration) -> list[tuple[str, str]]:
    return [(s.kind, s.state) for s in migration.steps]


@contextmanager
def _failed_migration(
    database_url: str, entity_id: str, emissions: int, request_id: str
) -> Iterator[tuple[LiveGateway, LinkedRegistries, PilotEntity, gateway_pb2.Migration]]:
    """A steel works whose final pilot year is settled and whose migration failed at its
    transfer step (Shenzhen refuses the ``Freeze``, after the SZA were cancelled): the
    gateway, the registries, the entity and the failed migration."""
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity(entity_id, "steel", 2023, emissions)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        failed = _execute(gateway, steel, request_id)
        assert failed.state == "failed"
        yield gateway, registries, steel, failed


def test_an_abandoned_migration_keeps_what_it_did_and_a_new_plan_takes_only_what_is_left(
    database_url: str,
) -> None:
    with _failed_migration(database_url, "steel-a1", 34_000_000, "migrate-a1") as (
        gateway,
        registries,
        steel,
        failed,
    ):
        assert _states(failed) == [
            ("keep", "done"),
            ("cancel", "done"),
            ("transfer", "failed"),
            ("register", "pending"),
        ]
        # While it stands, no other migration of the entity can start.
        assert ALREADY_MIGRATING in [v.rule_id for v in _plan(gateway, steel).blocking_violations]
        code, _ = _refused(lambda: _execute(gateway, steel, "migrate-a1-again"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        shenzhen = registries.ports["shenzhen"]
        cancelled = statuses(shenzhen, steel.sza.id)
        assert HoldingStatus.CANCELLED in cancelled.values()

        abandoned = _abandon(gateway.stub, failed.name)
        assert abandoned.state == "abandoned"
        # Done stays done, the failed step stays failed with its error, the rest is not
        # taken; the failure reason and every attempt stay on the record.
        assert _states(abandoned) == [
            ("keep", "done"),
            ("cancel", "done"),
            ("transfer", "failed"),
            ("register", "not_taken"),
        ]
        assert abandoned.failure_reason == failed.failure_reason
        assert [list(s.attempts)[:-1] for s in abandoned.steps] == [
            list(s.attempts)[:-1] for s in failed.steps
        ]
        assert abandoned.steps[3].attempts[-1].HasField("ended_at")
        record = abandoned.abandonment
        assert (record.request_id, record.reason) == ("abandon-1", REASON)
        assert record.HasField("abandoned_at")
        # Nothing at the registries was undone: the SZA stays cancelled.
        assert statuses(shenzhen, steel.sza.id) == cancelled
        got = gateway.stub.GetMigration(gateway_pb2.GetMigrationRequest(name=failed.name))
        assert got == abandoned

        # Idempotent: the same request answers the migration unchanged; the same id for
        # another reason is another request; another request finds it abandoned.
        assert _abandon(gateway.stub, failed.name) == abandoned
        code, _ = _refused(lambda: _abandon(gateway.stub, failed.name, reason="another"))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        code, details = _refused(lambda: _abandon(gateway.stub, failed.name, "abandon-2"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "is abandoned" in details
        # Its ExecuteMigration repeated answers it as it stands, and retries nothing.
        assert _execute(gateway, steel, "migrate-a1") == abandoned
        # Its split of the entity's years stands until a new migration is recorded.
        cutovers = DatabaseCutovers(gateway.server.bridge.sessions)
        assert [c.migration_id for c in cutovers.cutovers(steel.entity_id)] == [
            failed.name.removeprefix("migrations/")
        ]

        # A new plan starts from what the entity holds now: the SZA cancelled is not
        # planned again; the SZ-CI kept and the CCER the failed transfer left are.
        plan = _plan(gateway, steel)
        assert plan.executable, [v.message for v in plan.blocking_violations]
        first = [(d.action, d.holding.block.id) for d in failed.plan.dispositions]
        assert [action for action, _ in first] == ["keep_for_sale", "cancel", "transfer"]
        assert [(d.action, d.holding.block.id) for d in plan.dispositions] == [
            first[0],
            first[2],
        ]
        again = _execute(gateway, steel, "migrate-a2")
        assert again.state == "completed", again.failure_reason
        assert _states(again) == [("keep", "done"), ("transfer", "done"), ("register", "done")]
        assert again.name != abandoned.name
        assert [c.migration_id for c in cutovers.cutovers(steel.entity_id)] == [
            again.name.removeprefix("migrations/")
        ]
        # At the national registry, through its own API: the CCER left came home.
        ccer = steel.ccer.id
        national = statuses(registries.ports["national"], ccer)
        assert national[(ccer.serial_start + 4_000, ccer.serial_end)] == HoldingStatus.ACTIVE
        assert statuses(shenzhen, steel.sza.id) == cancelled
        _check_invariants(gateway, registries)


def _refused_in_the_pilot(
    gateway: LiveGateway, entity: PilotEntity, request_id: str, year: int
) -> list[tuple[str, str]]:
    """The entity surrenders 10 of its SZ-CI in the pilot for ``year``: the refusal's
    violations that put the year in another scheme (CL-MIGRATION-0001), as (rule id,
    message)."""
    sz_ci = entity.sz_ci.id
    request = gateway_pb2.SurrenderRequest(
        request_id=request_id,
        account=model_pb2.AccountRef(registry="shenzhen", account=entity.shenzhen_account),
        units=[
            model_pb2.UnitSelector(
                block=model_pb2.BlockId(
                    program=sz_ci.program.value,
                    serial_start=sz_ci.serial_start,
                    serial_end=sz_ci.serial_start + 9,
                )
            )
        ],
        entity_id=entity.entity_id,
        compliance_year=year,
        jurisdiction="shenzhen",
    )
    with pytest.raises(grpc.RpcError) as refused:
        gateway.stub.Surrender(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(refused.value)
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    return [(v.subject, v.description) for v in failure.violations if v.subject == MIGRATED_OUT]


def _surrender(
    gateway: LiveGateway,
    entity: PilotEntity,
    request_id: str,
    jurisdiction: str,
    year: int,
    block: BlockId,
) -> model_pb2.UnitUse:
    """The entity surrenders ``block`` from its account in ``jurisdiction``'s registry for
    that jurisdiction's compliance ``year``."""
    account = entity.shenzhen_account if jurisdiction == "shenzhen" else entity.national_account
    use: model_pb2.UnitUse = gateway.stub.Surrender(
        gateway_pb2.SurrenderRequest(
            request_id=request_id,
            account=model_pb2.AccountRef(registry=jurisdiction, account=account),
            units=[
                model_pb2.UnitSelector(
                    block=model_pb2.BlockId(
                        program=block.program.value,
                        serial_start=block.serial_start,
                        serial_end=block.serial_end,
                    )
                )
            ],
            entity_id=entity.entity_id,
            compliance_year=year,
            jurisdiction=jurisdiction,
        ),
        timeout=60,
    )
    return use


def _refusal(call: Callable[[], object]) -> list[tuple[str, str]]:
    """``call`` is refused FAILED_PRECONDITION: its violations, as (rule id, message)."""
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    status = rpc_status.from_call(refused.value)
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    return [(v.subject, v.description) for v in failure.violations]


def _record_year(gateway: LiveGateway, entity: PilotEntity, jurisdiction: str, year: int) -> None:
    """UpsertCoveredEntity: the entity's ``jurisdiction`` compliance ``year``, 1,000 t
    verified and due."""
    gateway.stub.UpsertCoveredEntity(
        gateway_pb2.UpsertCoveredEntityRequest(
            request_id=f"year-{jurisdiction}-{year}",
            entity=year_record(entity, jurisdiction, year),
        ),
        timeout=30,
    )


def _allocated(
    gateway: LiveGateway,
    registries: LinkedRegistries,
    entity: PilotEntity,
    jurisdiction: str,
    year: int,
) -> BlockId:
    """The registry of ``jurisdiction`` allocates the entity 1,000 allowances of ``year``
    (SZA or CEA), past every serial the entity was seeded with; the gateway learns of them."""
    start = entity.sza.id.serial_start + 100_000 + (year - 2000) * 1_000
    program = "SZA" if jurisdiction == "shenzhen" else "CEA"
    account = entity.shenzhen_account if jurisdiction == "shenzhen" else entity.national_account
    block = parse_serial(jurisdiction, f"{program}-{year}-{start}-{start + 999}")
    registries.ports[jurisdiction].issue(
        IssueRequest(f"allocate-{entity.entity_id}-{jurisdiction}-{year}", account, block)
    )
    gateway.server.import_registries()
    return block.id


def test_an_abandoned_migration_gives_the_pilot_back_the_years_the_national_ets_never_claimed(
    database_url: str,
) -> None:
    """The migration out of the pilot from 2024 fails and is abandoned: the entity stays in
    the pilot for 2024. The national ETS never claimed 2024 (no surrender there), so the
    pilot records and takes the entity's 2024 obligation, and the entity migrates again
    with 2024 as its final pilot year."""
    with _failed_migration(database_url, "steel-a5", 38_000_000, "migrate-a5") as (
        gateway,
        registries,
        steel,
        failed,
    ):
        year = steel.first_national_year
        # While the migration stands (failed), the year is the national ETS's.
        while_failed = _refused_in_the_pilot(gateway, steel, "late-failed", year)
        assert len(while_failed) == 1 and failed.name in while_failed[0][1], while_failed
        assert "from shenzhen to national" in _pilot_year_refused(gateway, steel, year)

        _abandon(gateway.stub, failed.name)
        _record_year(gateway, steel, "shenzhen", year)
        sza = _allocated(gateway, registries, steel, "shenzhen", year)
        paid = _surrender(gateway, steel, "pilot-2024", "shenzhen", year, sza)
        assert paid.state == model_pb2.USE_STATE_COMPLETED, paid

        stays = dataclasses.replace(steel, final_year=year)
        plan = _plan(gateway, stays)
        assert plan.executable, [v.message for v in plan.blocking_violations]
        assert (plan.final_pilot_year, plan.shortfall) == (year, 0)
        again = _execute(gateway, stays, "migrate-a5-again")
        assert again.state == "completed", again.failure_reason
        # The new migration's split counts as it always did: the pilot's years end at 2024.
        renewed = _refused_in_the_pilot(gateway, steel, "late-renewed", year + 1)
        assert len(renewed) == 1, renewed
        assert again.name in renewed[0][1] and failed.name not in renewed[0][1], renewed
        _pilot_year_refused(gateway, steel, year + 1)
        _check_invariants(gateway, registries)


def test_a_year_one_scheme_claimed_under_an_abandoned_migration_stays_that_schemes(
    database_url: str,
) -> None:
    """The entity surrendered in the national ETS for 2024 while its migration from 2024
    stood: once it is abandoned, 2024 is still not the pilot's (no surrender, no record,
    no new migration from a later year), or the one obligation would be claimed in both
    schemes. 2025, which the national ETS never claimed, goes back to the pilot, and once
    the pilot has claimed it the national ETS refuses it in turn."""
    with _failed_migration(database_url, "steel-a7", 39_000_000, "migrate-a7") as (
        gateway,
        registries,
        steel,
        failed,
    ):
        year = steel.first_national_year
        _record_year(gateway, steel, "national", year)
        _record_year(gateway, steel, "national", year + 1)
        cea = _allocated(gateway, registries, steel, "national", year)
        claimed = _surrender(gateway, steel, "national-2024", "national", year, _head(cea, 0, 499))
        assert claimed.state == model_pb2.USE_STATE_COMPLETED, claimed

        _abandon(gateway.stub, failed.name)
        refused = _refused_in_the_pilot(gateway, steel, "pilot-2024", year)
        assert len(refused) == 1, refused
        assert failed.name in refused[0][1] and "surrendered in the national" in refused[0][1]
        assert "surrendered in the national" in _pilot_year_refused(gateway, steel, year)
        # A migration with 2024 as the final pilot year would cover 2024 twice.
        stays = dataclasses.replace(steel, final_year=year)
        twice = [
            v.message
            for v in _plan(gateway, stays).blocking_violations
            if v.rule_id == YEAR_COVERED_TWICE
        ]
        assert any("has surrenders in national for 2024" in m for m in twice), twice

        # 2025: the national ETS never claimed it, so the pilot may; then the national
        # ETS may not.
        _record_year(gateway, steel, "shenzhen", year + 1)
        sza = _allocated(gateway, registries, steel, "shenzhen", year + 1)
        paid = _surrender(gateway, steel, "pilot-2025", "shenzhen", year + 1, sza)
        assert paid.state == model_pb2.USE_STATE_COMPLETED, paid
        national_too = _refusal(
            lambda: _surrender(
                gateway, steel, "national-2025", "national", year + 1, _head(cea, 500, 509)
            )
        )
        assert [rule for rule, _ in national_too if rule.startswith("CL-MIGRATION")] == [
            PILOT_COVERED
        ], national_too
        assert "surrendered in shenzhen for 2025" in dict(national_too)[PILOT_COVERED]
        # The national ETS keeps the year it claimed.
        more = _surrender(
            gateway, steel, "national-2024-more", "national", year, _head(cea, 500, 509)
        )
        assert more.state == model_pb2.USE_STATE_COMPLETED, more
        _check_invariants(gateway, registries)


def test_a_pilot_and_a_national_surrender_for_one_unclaimed_year_do_not_both_succeed(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under an abandoned migration a year goes to the scheme that claims it first. Two
    surrenders for 2025, one in each scheme, decided side by side would each find the
    year unclaimed: the pilot's is held after its decision until the national one has had
    its chance, which must wait for it and then be refused."""
    with _failed_migration(database_url, "steel-a8", 40_000_000, "migrate-a8") as (
        gateway,
        registries,
        steel,
        failed,
    ):
        year = steel.first_national_year + 1
        _record_year(gateway, steel, "national", year)
        cea = _allocated(gateway, registries, steel, "national", year)
        _abandon(gateway.stub, failed.name)
        _record_year(gateway, steel, "shenzhen", year)
        sza = _allocated(gateway, registries, steel, "shenzhen", year)

        rules = gateway.server.bridge._rules
        check_use = rules.check_use
        decided, national_returned = threading.Event(), threading.Event()

        def pilot_waits_after_its_decision(check: Any) -> Any:
            decision = check_use(check)
            if check.request.jurisdiction == "shenzhen":
                decided.set()
                # Long enough for a national surrender that is not held back to finish.
                national_returned.wait(timeout=2)
            return decision

        monkeypatch.setattr(rules, "check_use", pilot_waits_after_its_decision)
        answers: dict[str, object] = {}

        def pilot() -> None:
            try:
                answers["pilot"] = _surrender(gateway, steel, "pilot-race", "shenzhen", year, sza)
            except grpc.RpcError as exc:
                answers["pilot"] = exc.code()

        racing = threading.Thread(target=pilot)
        racing.start()
        assert decided.wait(timeout=60)
        try:
            answers["national"] = _surrender(gateway, steel, "national-race", "national", year, cea)
        except grpc.RpcError as exc:
            answers["national"] = (exc.code(), exc.details())
        finally:
            national_returned.set()
        racing.join(timeout=120)
        pilot_use = answers["pilot"]
        assert (
            isinstance(pilot_use, model_pb2.UnitUse)
            and pilot_use.state == model_pb2.USE_STATE_COMPLETED
        )
        national = answers["national"]
        assert isinstance(national, tuple), national
        code, details = national
        assert code == grpc.StatusCode.FAILED_PRECONDITION and PILOT_COVERED in details, details
        _check_invariants(gateway, registries)


def _pilot_year_refused(gateway: LiveGateway, entity: PilotEntity, year: int) -> str:
    """UpsertCoveredEntity recording a Shenzhen compliance year ``year`` for the entity is
    refused as a year on the wrong side of its split; the refusal's text."""
    record = year_record(entity, "shenzhen", year)
    code, details = _refused(
        lambda: gateway.stub.UpsertCoveredEntity(
            gateway_pb2.UpsertCoveredEntityRequest(request_id=f"year-{year}", entity=record),
            timeout=30,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "entity.years[0]" in details, details
    return details


_AT = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


def _record(
    migration_id: str, entity_id: str, pilot: str, first_year: int, state: str, minutes: int
) -> MigrationRecord:
    """A migration row as ExecuteMigration records one (its plan aside), ``minutes`` after
    ``_AT``."""
    at = _AT + timedelta(minutes=minutes)
    return MigrationRecord(
        id=migration_id,
        request_id=f"migrate-{migration_id}",
        caller=LOCAL_CALLER,
        body_sha256=hashlib.sha256(migration_id.encode()).digest(),
        entity_id=entity_id,
        from_jurisdiction=pilot,
        to_jurisdiction="national",
        first_year=first_year,
        state=state,
        plan="{}",
        failure_reason="",
        abandonment="",
        created_at=at,
        updated_at=at,
    )


def _use(use_id: str, entity_id: str, jurisdiction: str, year: int, state: str) -> UnitUseRecord:
    """A surrender row as the bridge records one (its legs aside)."""
    request = {"entity_id": entity_id, "jurisdiction": jurisdiction, "compliance_year": year}
    return UnitUseRecord(
        id=use_id,
        request_id=f"surrender-{use_id}",
        caller=LOCAL_CALLER,
        body_sha256=hashlib.sha256(use_id.encode()).digest(),
        kind="surrender",
        state=state,
        registry_id=jurisdiction,
        account=f"{jurisdiction}-{entity_id}",
        detail=json.dumps({"request": request, "legs": []}),
        decision="",
        created_at=_AT,
        **request,
    )


def test_the_newest_abandoned_migration_splits_the_years_until_another_is_recorded(
    database_url: str,
) -> None:
    """Per entity and pilot: the migration not abandoned, once one is recorded; until then
    the newest abandoned one, with the years the entity claimed in each scheme, since it
    may already have surrendered under its split."""
    engine = db.create_engine(database_url)
    try:
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with sessions.begin() as session:
            for entity_id in ("steel-a", "steel-b"):
                session.add(
                    CoveredEntityRecord(
                        entity_id=entity_id,
                        display_name=entity_id,
                        sector="steel",
                        gases="[]",
                        updated_at=_AT,
                    )
                )
            session.flush()
            session.add_all(
                [
                    _record("sz-1", "steel-a", "shenzhen", 2024, "abandoned", 0),
                    _record("gd-1", "steel-a", "guangdong", 2024, "abandoned", 1),
                    _record("sz-2", "steel-a", "shenzhen", 2025, "abandoned", 2),
                    _record("b-1", "steel-b", "shenzhen", 2026, "running", 3),
                ]
            )
        cutovers = DatabaseCutovers(sessions)

        def split() -> list[tuple[str, str, int]]:
            return [
                (c.migration_id, c.from_jurisdiction, c.first_year)
                for c in cutovers.cutovers("steel-a")
            ]

        assert split() == [("gd-1", "guangdong", 2024), ("sz-2", "shenzhen", 2025)]
        # A new migration out of Shenzhen, with a first year of its own, takes over there,
        # from the moment it is recorded, in whatever state it ends.
        for state in ("running", "failed", "completed"):
            with sessions.begin() as session:
                session.merge(_record("sz-3", "steel-a", "shenzhen", 2026, state, 4))
            assert split() == [("gd-1", "guangdong", 2024), ("sz-3", "shenzhen", 2026)]
        assert [c.claimed for c in cutovers.cutovers("steel-a")] == [{}, None]
        # Abandoned in turn, it is the newest abandoned one.
        with sessions.begin() as session:
            session.merge(_record("sz-3", "steel-a", "shenzhen", 2026, "abandoned", 4))
        assert split() == [("gd-1", "guangdong", 2024), ("sz-3", "shenzhen", 2026)]
        # An abandoned one's split carries the years the entity claimed in each scheme:
        # a surrender that may have spent units (a rejected one spent none).
        with sessions.begin() as session:
            session.add_all(
                [
                    _use("u-1", "steel-a", "national", 2026, "completed"),
                    _use("u-2", "steel-a", "shenzhen", 2027, "pending"),
                    _use("u-3", "steel-a", "national", 2027, "failed"),
                    _use("u-4", "steel-a", "shenzhen", 2028, "resolved"),
                    _use("u-5", "steel-a", "national", 2029, "rejected"),
                    _use("u-6", "steel-b", "national", 2030, "completed"),
                ]
            )
        claimed = {"national": frozenset({2026, 2027}), "shenzhen": frozenset({2027, 2028})}
        assert [c.claimed for c in cutovers.cutovers("steel-a")] == [claimed, claimed]
        assert [c.claimed for c in cutovers.cutovers("steel-b")] == [None]
    finally:
        engine.dispose()


def test_only_a_failed_migration_is_abandoned(database_url: str) -> None:
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-a2", "steel", 2023, 35_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        completed = _execute(gateway, steel, "migrate-a3")
        assert completed.state == "completed", completed.failure_reason

        code, details = _refused(lambda: _abandon(gateway.stub, completed.name))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"{completed.name} is completed" in details
        code, _ = _refused(lambda: _abandon(gateway.stub, "migrations/no-such-migration"))
        assert code == grpc.StatusCode.NOT_FOUND
        # Bad input names its field and changes nothing.
        for request_id, name, reason, field in (
            ("", completed.name, REASON, "request_id"),
            ("abandon-x", completed.name, "", "reason"),
            ("abandon-x", completed.name, "  ", "reason"),
            ("abandon-x", "transfers/x", REASON, "name"),
        ):
            request = gateway_pb2.AbandonMigrationRequest(
                request_id=request_id, name=name, reason=reason
            )
            code, details = _refused(partial(gateway.stub.AbandonMigration, request, timeout=60))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert field in details
        got = gateway.stub.GetMigration(gateway_pb2.GetMigrationRequest(name=completed.name))
        assert got == completed


def test_a_retry_and_an_abandonment_at_once_do_not_both_win(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeated ExecuteMigration reads the failed migration; an abandonment arrives before
    it has started its new attempt. The migration row's lock lets only one of them act on
    the failed state: the abandonment waits, finds the migration running, and is refused."""
    with _failed_migration(database_url, "steel-a3", 36_000_000, "migrate-a4") as (
        gateway,
        registries,
        steel,
        failed,
    ):
        migrations = gateway.server.migrations
        repeat = migrations._repeat
        read, abandon_returned = threading.Event(), threading.Event()

        def repeat_once_abandon_had_its_chance(*args: Any) -> str:
            read.set()
            # Long enough for an abandonment that is not held back to commit.
            abandon_returned.wait(timeout=2)
            return repeat(*args)

        monkeypatch.setattr(migrations, "_repeat", repeat_once_abandon_had_its_chance)
        answers: dict[str, object] = {}

        def abandon() -> None:
            read.wait(timeout=60)
            try:
                answers["abandon"] = _abandon(gateway.stub, failed.name)
            except grpc.RpcError as exc:
                answers["abandon"] = exc.code()
            finally:
                abandon_returned.set()

        abandoning = threading.Thread(target=abandon)
        abandoning.start()
        retried = _execute(gateway, steel, "migrate-a4")
        abandoning.join(timeout=120)
        assert answers["abandon"] == grpc.StatusCode.FAILED_PRECONDITION
        assert retried.state == "completed", retried.failure_reason
        got = gateway.stub.GetMigration(gateway_pb2.GetMigrationRequest(name=failed.name))
        assert got.state == "completed" and not got.HasField("abandonment")
        _check_invariants(gateway, registries)


def _summary(out: str) -> str:
    """What a command printed of a migration (the in-process gateway's logs share stdout)."""
    return out[out.index("migrations/") :]


def test_migrate_abandon_from_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-a4", "steel", 2023, 37_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        common = ["--target", gateway.target, "--insecure"]
        migration = ["--entity", steel.entity_id, "--from-year", str(steel.first_national_year)]
        migration += ["--acknowledge", "CL-MIGRATION-0014", *common]
        capsys.readouterr()
        # A failed execution says how to give it up, should its cause not go away.
        assert main(["migrate", "execute", *migration]) == 1
        failed = capsys.readouterr()
        name = failed.out[failed.out.index("migrations/") :].split()[0]
        assert f"`carbonlink migrate abandon {name} --reason TEXT`" in failed.err

        # The reason is required.
        with pytest.raises(SystemExit) as exited:
            main(["migrate", "abandon", name, *common])
        assert exited.value.code == 2
        capsys.readouterr()
        abandon = ["migrate", "abandon", name.removeprefix("migrations/"), "--reason", REASON]
        assert main([*abandon, *common]) == 0
        shown = _summary(capsys.readouterr().out)
        assert shown.startswith(f"{name} abandoned: ")
        assert "abandoned by the local caller at " in shown and f"): {REASON}" in shown
        assert "step 3 register not_taken" in shown
        # The same command again answers the same abandonment; `migrate get` shows it.
        assert main([*abandon, *common]) == 0
        assert _summary(capsys.readouterr().out) == shown
        assert main(["migrate", "get", name, *common]) == 0
        assert _summary(capsys.readouterr().out) == shown
        # Another reason under the same (derived) request id is another request.
        assert main(["migrate", "abandon", name, "--reason", "another", *common]) == 1
        assert "ALREADY_EXISTS" in capsys.readouterr().err

        # The entity migrates anew, under a request id of its own.
        again = ["migrate", "execute", *migration, "--request-id", "migrate-a4-again"]
        assert main(again) == 0
        assert "completed" in capsys.readouterr().out
