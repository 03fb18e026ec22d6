"""A migration whose step failed is retried, on a repeated ExecuteMigration, over what the
entity holds now, over real gRPC on both databases.

The failures are real: a failed use (the Shenzhen emulator refuses a scripted ``Fulfil``)
holds units of a cancel step's block under CL-USE-0001, or Shenzhen refuses a transfer
step's ``Freeze``. Each repeat is a new attempt of the failed step under new derived ids;
one whose cause remains fails again with its current reason and does nothing else; one
whose cause is gone acts only on the units of the step's block the entity still holds, and
reports the rest. A repeat while a transfer in flight holds some of those units locked (the
national emulator's credit applied, its answer lost) waits for it the same way. Every attempt stays
on the migration's record.
"""

from __future__ import annotations

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from gateway.cli import main
from gateway.demo_migration import pilot_entity, settle_final_pilot_year, statuses
from registry_bridge.bridge import HELD_BY_FAILED_USE
from registry_bridge.db import unit_of_work
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.schema import MigrationRecord
from registry_bridge.transfers import TransferState
from tests.integration.gateway.conftest import (
    COUNTED_CALLS_TIMEOUT_S,
    linked_registries,
    lose_answers,
    running_gateway,
)
from tests.integration.gateway.test_migration_holds import (
    HELD_UNITS,
    SETTLE_FULFILS,
    _check_invariants,
    _execute,
    _fail_a_use_once_recorded,
    _pilot,
    _seeded,
)


def _step(migration: gateway_pb2.Migration, kind: str) -> gateway_pb2.MigrationStep:
    (step,) = [s for s in migration.steps if s.kind == kind]
    return step


def _done_on_the_third_attempt(
    migration: gateway_pb2.Migration, kind: str
) -> gateway_pb2.MigrationStep:
    """The migration completed, its ``kind`` step failed twice and done on a third attempt."""
    assert migration.state == "completed", migration.failure_reason
    step = _step(migration, kind)
    assert [(a.attempt, a.state) for a in step.attempts] == [
        (0, "failed"),
        (1, "failed"),
        (2, "done"),
    ]
    return step


def _range(block: model_pb2.BlockId) -> tuple[int, int]:
    return (block.serial_start, block.serial_end)


def test_a_cancel_step_failed_on_held_units_is_retried_over_the_units_still_held(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = ScriptedRefusal("Fulfil", "FAILED_PRECONDITION", calls=1, after=SETTLE_FULFILS + 1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-r1", "steel", 2023, 31_000_000)
        _seeded(gateway, registries, steel)
        held, failed = _fail_a_use_once_recorded(gateway, steel, monkeypatch)
        first = _execute(gateway, steel, "migrate-r1")
        assert first.state == "failed"
        assert _step(first, "cancel").state == "failed"
        shenzhen = registries.ports["shenzhen"]
        before = statuses(shenzhen, steel.sza.id)

        # The hold stands: the repeat is a second attempt, failing for the same reason
        # now, and nothing is cancelled.
        second = _execute(gateway, steel, "migrate-r1")
        assert second.state == "failed"
        cancel = _step(second, "cancel")
        assert cancel.state == "failed"
        assert [(a.attempt, a.state) for a in cancel.attempts] == [(0, "failed"), (1, "failed")]
        assert HELD_UNITS in cancel.attempts[1].error and failed[0] in cancel.attempts[1].error
        assert cancel.error == cancel.attempts[1].error
        assert cancel.attempts[0].operation != cancel.attempts[1].operation
        assert list(cancel.attempts[1].units) == []
        assert statuses(shenzhen, steel.sza.id) == before

        # The operator retries the use; Shenzhen accepts it now: the held units are
        # surrendered, no longer the entity's to cancel, and the hold is gone.
        resolved = gateway.stub.ResolveUse(
            gateway_pb2.ResolveUseRequest(
                request_id="retry-r1", name=failed[0], action=model_pb2.USE_RESOLUTION_ACTION_RETRY
            ),
            timeout=30,
        )
        assert resolved.state == model_pb2.USE_STATE_COMPLETED

        third = _execute(gateway, steel, "migrate-r1")
        cancel = _done_on_the_third_attempt(third, "cancel")
        assert all(s.state == "done" for s in third.steps)
        assert len({a.operation for a in cancel.attempts}) == 3
        sza = steel.sza.id
        cut = sza.serial_start + 46_000
        retried = cancel.attempts[2]
        assert [_range(b) for b in retried.units] == [
            (cut, held.serial_start - 1),
            (held.serial_end + 1, sza.serial_end),
        ]
        (left,) = retried.left
        assert _range(left.block) == (held.serial_start, held.serial_end)
        assert "surrendered" in left.reason
        # At Shenzhen, through its own API: the surrendered units stay surrendered, and
        # everything else of the step's block is cancelled, once.
        assert statuses(shenzhen, sza) == {
            (sza.serial_start, cut - 1): HoldingStatus.SURRENDERED,
            (cut, held.serial_start - 1): HoldingStatus.CANCELLED,
            (held.serial_start, held.serial_end): HoldingStatus.SURRENDERED,
            (held.serial_end + 1, sza.serial_end): HoldingStatus.CANCELLED,
        }
        _check_invariants(gateway, registries)

        # The record keeps the history; a repeat of the completed migration changes nothing.
        got = gateway.stub.GetMigration(gateway_pb2.GetMigrationRequest(name=third.name))
        assert list(got.steps) == list(third.steps)
        assert list(_execute(gateway, steel, "migrate-r1").steps) == list(third.steps)
        assert HELD_BY_FAILED_USE in cancel.attempts[0].error


def test_a_refused_transfer_step_is_retried_under_new_ids_over_the_units_still_held(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Shenzhen refuses the first two freezes: the migration's transfer step, and its retry.
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=2)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-r2", "steel", 2023, 32_000_000)
        _seeded(gateway, registries, steel)
        mirror = settle_final_pilot_year(gateway.stub, steel)
        first = _execute(gateway, steel, "migrate-r2")
        assert first.state == "failed"
        assert "FAILED_PRECONDITION" in _step(first, "transfer").error

        # Still refused: a second attempt under a new request id, failing for its own
        # reason with a transfer of its own (the first one's refusal is not replayed).
        second = _execute(gateway, steel, "migrate-r2")
        assert second.state == "failed"
        transfer = _step(second, "transfer")
        assert [(a.attempt, a.state) for a in transfer.attempts] == [(0, "failed"), (1, "failed")]
        assert transfer.attempts[0].operation != transfer.attempts[1].operation
        assert transfer.attempts[0].transfer != transfer.attempts[1].transfer
        assert "FAILED_PRECONDITION" in transfer.attempts[1].error

        # Meanwhile the entity retires some of the CCER it was to take home.
        used = model_pb2.BlockId(
            program=mirror.program,
            serial_series=mirror.serial_series,
            serial_start=mirror.serial_start + 4_000,
            serial_end=mirror.serial_start + 4_099,
        )
        gateway.stub.Retire(
            gateway_pb2.RetireRequest(
                request_id="retire-r2",
                account=model_pb2.AccountRef(registry="shenzhen", account=steel.shenzhen_account),
                units=[model_pb2.UnitSelector(block=used)],
                beneficiary=steel.entity_id,
                claim_text="voluntary",
            ),
            timeout=60,
        )

        third = _execute(gateway, steel, "migrate-r2")
        transfer = _done_on_the_third_attempt(third, "transfer")
        retried = transfer.attempts[2]
        assert [_range(b) for b in retried.units] == [
            (used.serial_end + 1, mirror.serial_start + 4_999)
        ]
        (left,) = retried.left
        assert _range(left.block) == _range(used) and "retired" in left.reason
        assert list(third.transfers) == [a.transfer for a in transfer.attempts]
        # Only what was still held came home; the retired units stay retired at origin.
        ccer = steel.ccer.id
        national = statuses(registries.ports["national"], ccer)
        assert national[(ccer.serial_start + 4_000, ccer.serial_start + 4_099)] == (
            HoldingStatus.RETIRED
        )
        assert national[(ccer.serial_start + 4_100, ccer.serial_end)] == HoldingStatus.ACTIVE
        _check_invariants(gateway, registries)

        # ``carbonlink migrate get`` shows every attempt.
        capsys.readouterr()
        assert main(["migrate", "get", third.name, "--target", gateway.target, "--insecure"]) == 0
        out = capsys.readouterr().out
        assert "attempt 0 failed" in out and "attempt 2 done" in out
        assert f"left {mirror.program}" in out


def test_a_retry_of_a_step_whose_units_are_all_gone_moves_nothing(database_url: str) -> None:
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-r3", "steel", 2023, 33_000_000)
        _seeded(gateway, registries, steel)
        mirror = settle_final_pilot_year(gateway.stub, steel)
        assert _execute(gateway, steel, "migrate-r3").state == "failed"
        shenzhen = model_pb2.AccountRef(registry="shenzhen", account=steel.shenzhen_account)

        def part(first: int, last: int) -> model_pb2.BlockId:
            return model_pb2.BlockId(
                program=mirror.program,
                serial_series=mirror.serial_series,
                serial_start=mirror.serial_start + first,
                serial_end=mirror.serial_start + last,
            )

        # The entity takes half the CCER home itself, and retires the other half.
        home, used = part(4_000, 4_499), part(4_500, 4_999)
        moved = gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id="home-r3",
                instruction=model_pb2.TransferInstruction(
                    source=shenzhen,
                    destination=model_pb2.AccountRef(
                        registry="national", account=steel.national_account
                    ),
                    units=[model_pb2.UnitSelector(block=home)],
                ),
            ),
            timeout=60,
        )
        assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
        gateway.stub.Retire(
            gateway_pb2.RetireRequest(
                request_id="retire-r3",
                account=shenzhen,
                units=[model_pb2.UnitSelector(block=used)],
                beneficiary=steel.entity_id,
                claim_text="voluntary",
            ),
            timeout=60,
        )
        transfers = len(gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest()).transfers)
        migration = _execute(gateway, steel, "migrate-r3")
        assert migration.state == "completed", migration.failure_reason
        retried = _step(migration, "transfer").attempts[-1]
        assert (retried.state, list(retried.units), retried.transfer) == ("done", [], "")
        assert [(_range(x.block), x.reason) for x in retried.left] == [
            (_range(home), "no longer in shenzhen (exported to another registry)"),
            (_range(used), f"retired at shenzhen/{steel.shenzhen_account}"),
        ]
        after = len(gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest()).transfers)
        assert after == transfers
        _check_invariants(gateway, registries)


def test_a_step_a_second_driver_ends_again_keeps_its_first_ending(database_url: str) -> None:
    """ExecuteMigration and the recovery loop's resume can both drive one migration: each
    picks the first step not done, and the slower ends it again after the faster. The
    step's record stays as the first ending left it (a repeated ExecuteMigration then
    answers the same migration, step for step, as the first)."""
    with _pilot(database_url) as (gateway, registries):
        steel = pilot_entity("steel-r4", "steel", 2023, 34_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        first = _execute(gateway, steel, "migrate-r4")
        assert first.state == "completed"
        migration_id = first.name.removeprefix("migrations/")
        with unit_of_work(gateway.server.bridge.sessions) as session:
            record = session.get(MigrationRecord, migration_id)
            assert record is not None
            caller = record.caller
        # The second driver, which had picked each step before the first ended it.
        for step in first.steps:
            gateway.server.migrations._run_step(migration_id, step.seq, step.kind, caller)
        again = gateway.stub.GetMigration(
            gateway_pb2.GetMigrationRequest(name=first.name), timeout=30
        )
        assert list(again.steps) == list(first.steps)
        _check_invariants(gateway, registries)


def test_a_retry_waits_for_a_transfer_in_flight_on_the_steps_units(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry while a transfer holds some of the step's units locked (its credit at the
    national registry not answered yet) fails naming that transfer and moves nothing; once
    the transfer has ended, the next repeat moves what the entity still holds."""
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=1)
    faults = {"shenzhen": FaultConfig(refusals=(refusal,))}
    with (
        linked_registries(faults, wired=("shenzhen", "national")) as registries,
        running_gateway(
            database_url,
            registries,
            recovery_interval_seconds=3600,
            reconcile_interval_seconds=86_400,
            # A credit whose answer the national registry loses leaves its transfer
            # SOURCE_LOCKED after one try, instead of being repeated at once.
            registry_retry_attempts=1,
            # Shenzhen's refusal is scripted by call number.
            registry_timeout_seconds=COUNTED_CALLS_TIMEOUT_S,
        ) as gateway,
    ):
        steel = pilot_entity("steel-r5", "steel", 2023, 35_000_000)
        _seeded(gateway, registries, steel)
        mirror = settle_final_pilot_year(gateway.stub, steel)
        assert _execute(gateway, steel, "migrate-r5").state == "failed"

        # The entity sends some of the CCER home itself; the national registry takes the
        # credit but its answer is lost, so the transfer stays in flight, its units locked.
        away = model_pb2.BlockId(
            program=mirror.program,
            serial_series=mirror.serial_series,
            serial_start=mirror.serial_start + 4_000,
            serial_end=mirror.serial_start + 4_199,
        )
        asked, answering = lose_answers(
            monkeypatch, registries.emulators["national"].store, "credit"
        )
        try:
            moving = gateway.stub.SubmitTransfer(
                gateway_pb2.SubmitTransferRequest(
                    request_id="home-r5",
                    instruction=model_pb2.TransferInstruction(
                        source=model_pb2.AccountRef(
                            registry="shenzhen", account=steel.shenzhen_account
                        ),
                        destination=model_pb2.AccountRef(
                            registry="national", account=steel.national_account
                        ),
                        units=[model_pb2.UnitSelector(block=away)],
                    ),
                ),
                timeout=60,
            )
            assert asked.is_set()
            assert moving.state == model_pb2.TRANSFER_STATE_SOURCE_LOCKED, moving.failure_reason
            in_flight = moving.name.removeprefix("transfers/")
            national, shenzhen = registries.ports["national"], registries.ports["shenzhen"]
            held = BlockId(
                Program(mirror.program),
                mirror.serial_series,
                mirror.serial_start,
                mirror.serial_end,
            )
            before = (
                statuses(national, steel.ccer.id),
                statuses(shenzhen, held),
                len(gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest()).transfers),
            )

            second = _execute(gateway, steel, "migrate-r5")
            assert second.state == "failed"
            transfer = _step(second, "transfer")
            assert [(a.attempt, a.state) for a in transfer.attempts] == [
                (0, "failed"),
                (1, "failed"),
            ]
            waiting = transfer.attempts[1]
            assert "CL-MIGRATION-0006" in waiting.error and in_flight in waiting.error
            assert f"{away.serial_start}-{away.serial_end}" in waiting.error
            assert "locked" in waiting.error and transfer.error == waiting.error
            assert (list(waiting.units), waiting.transfer) == ([], "")
            after = (
                statuses(national, steel.ccer.id),
                statuses(shenzhen, held),
                len(gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest()).transfers),
            )
            assert after == before
            assert before[1][_range(away)] == HoldingStatus.LOCKED
        finally:
            answering.set()

        # The national registry answers now (the credit's repeat from its operation log);
        # the bridge's recovery completes the transfer.
        assert gateway.server.bridge.resume_unfinished() == {in_flight: TransferState.COMPLETED}

        third = _execute(gateway, steel, "migrate-r5")
        transfer = _done_on_the_third_attempt(third, "transfer")
        retried = transfer.attempts[2]
        assert [_range(b) for b in retried.units] == [
            (mirror.serial_start + 4_200, mirror.serial_start + 4_999)
        ]
        assert [(_range(x.block), x.reason) for x in retried.left] == [
            (_range(away), "no longer in shenzhen (exported to another registry)")
        ]
        assert in_flight not in {a.transfer for a in transfer.attempts}
        # Every unit of the step's block came home once: by the entity's own transfer, or
        # by the retry.
        ccer = steel.ccer.id
        assert (
            statuses(registries.ports["national"], ccer)[
                (ccer.serial_start + 4_000, ccer.serial_end)
            ]
            == HoldingStatus.ACTIVE
        )
        _check_invariants(gateway, registries)


def test_migrate_execute_says_how_to_retry_a_failed_step_and_the_same_command_does(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = ScriptedRefusal("Freeze", "FAILED_PRECONDITION", calls=1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-r9", "steel", 2023, 39_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        command = ["migrate", "execute", "--entity", steel.entity_id]
        command += ["--from-year", str(steel.first_national_year)]
        command += ["--acknowledge", "CL-MIGRATION-0014", "--target", gateway.target]
        command += ["--insecure"]
        capsys.readouterr()
        assert main(command) == 1
        failed = capsys.readouterr()
        # The in-process gateway's log shares stdout: the summary starts at its name.
        summary = failed.out[failed.out.index("migrations/") :]
        name = summary.split()[0]
        assert summary.startswith(f"{name} failed: step 2 (transfer) failed: "), summary
        request_id = f"migrate-{steel.entity_id}-shenzhen-national-{steel.first_national_year}"
        assert failed.err == (
            f"carbonlink: {name} failed: once the cause is settled, run the same command "
            f"again (request id {request_id}): the failed step is tried again over the units "
            "still held, the rest of the steps waiting until then; a cause that will not go "
            f"away: `carbonlink migrate abandon {name} --reason TEXT` gives it up (what is "
            "done stays done) and lets the entity plan again\n"
        )
        # Shenzhen refused once: the same command again retries the step, and completes.
        assert main(command) == 0
        done = capsys.readouterr()
        summary = done.out[done.out.index("migrations/") :]
        assert summary.startswith(f"{name} completed") and done.err == ""
        assert "attempt 0 failed" in summary and "attempt 1 done" in summary


def test_a_cancellation_the_registry_refuses_is_asked_again_until_it_follows(
    database_url: str,
) -> None:
    """The ledger cancels the units first (terminal), so a registry's refusal to follow
    does not fail the migration: it waits, saying so in those words (not as a registry
    that did not answer), and the next drive asks again."""
    refusal = ScriptedRefusal("Cancel", "FAILED_PRECONDITION", calls=1)
    with _pilot(database_url, (refusal,)) as (gateway, registries):
        steel = pilot_entity("steel-r10", "steel", 2023, 40_000_000)
        _seeded(gateway, registries, steel)
        settle_final_pilot_year(gateway.stub, steel)
        first = _execute(gateway, steel, "migrate-r10")
        assert first.state == "running"
        assert first.failure_reason.startswith(
            "waiting: registry shenzhen refused to cancel units the ledger has cancelled "
            "(asked again until it follows): registry shenzhen rejected the operation "
            "(FAILED_PRECONDITION)"
        ), first.failure_reason
        assert _step(first, "cancel").state == "applied"
        cancelled = BlockId(
            Program.SZA, "", steel.sza.id.serial_start + 46_000, steel.sza.id.serial_end
        )
        shenzhen = registries.ports["shenzhen"]
        assert set(statuses(shenzhen, cancelled).values()) == {HoldingStatus.ACTIVE}

        again = _execute(gateway, steel, "migrate-r10")
        assert (again.name, again.state, again.failure_reason) == (first.name, "completed", "")
        assert set(statuses(shenzhen, cancelled).values()) == {HoldingStatus.CANCELLED}
        _check_invariants(gateway, registries)
