"""A use done at one registry and refused at another: what GetUse shows of it, the hold on
its units, and ResolveUse (retry, settle manually), over real gRPC on both databases.

The failed use is real: the Hong Kong venue's emulator refuses its ``RetireOnBehalf``
(FAILED_PRECONDITION, a final refusal) for as many calls as a test scripts, after Verra
has retired the origin units behind the venue's position. The venue then accepts again,
as a registry whose refusal was put right does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from adapters.serials import parse_serial
from gateway.cli import main
from registry_bridge.bridge import HELD_BY_FAILED_USE, venue_account
from registry_bridge.db import unit_of_work
from registry_bridge.invariants import check_all, check_ledger
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import (
    BlockStatusRequest,
    LockRequest,
    RetireRequest,
    UnlockRequest,
)
from registry_bridge.schema import LedgerEvent, UnitUseRecord
from tests.integration.gateway.conftest import (
    COUNTED_CALLS_TIMEOUT_S,
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.integration.gateway.test_metrics import scrape
from tests.loopback import ANY_PORT

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
UNITS = BlockId(Program.VCS, "", START, START + 9)
SELLER = model_pb2.AccountRef(registry="hkmo", account="hk-seller")
BUYER = model_pb2.AccountRef(registry="shenzhen", account="buyer")
RETRY = model_pb2.USE_RESOLUTION_ACTION_RETRY
SETTLE = model_pb2.USE_RESOLUTION_ACTION_SETTLE_MANUALLY


def _selector(block: BlockId) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=block.program.value,
            serial_series=block.serial_series,
            serial_start=block.serial_start,
            serial_end=block.serial_end,
        )
    )


def _retirement(request_id: str, block: BlockId = UNITS) -> gateway_pb2.RetireRequest:
    return gateway_pb2.RetireRequest(
        request_id=request_id, account=SELLER, units=[_selector(block)], beneficiary="Acme Ltd"
    )


@contextmanager
def _venue_refusing(
    database_url: str, times: int
) -> Iterator[tuple[LiveGateway, LinkedRegistries]]:
    """A gateway whose Hong Kong venue refuses its first ``times`` retirements for good."""
    refusals = (
        (ScriptedRefusal("RetireOnBehalf", "FAILED_PRECONDITION", calls=times),) if times else ()
    )
    with linked_registries({"hkmo": FaultConfig(refusals=refusals)}) as registries:
        registries.seed_venue()
        with running_gateway(
            database_url,
            registries,
            # The tests drive every resolution: no recovery loop settles a use meanwhile.
            recovery_interval_seconds=3600,
            # The venue's refusals are scripted by call number.
            registry_timeout_seconds=COUNTED_CALLS_TIMEOUT_S,
            registry_retry_initial_wait_seconds=0.01,
            registry_retry_max_wait_seconds=0.02,
            metrics_listen=ANY_PORT,
        ) as gateway:
            yield gateway, registries


def _fail(gateway: LiveGateway, request_id: str = "retire-failing", block: BlockId = UNITS) -> str:
    """Retire ``block`` at the venue, which refuses after Verra did its part; the use's name."""
    with pytest.raises(grpc.RpcError) as refused:
        gateway.stub.Retire(_retirement(request_id, block), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = gateway.stub.ListUses(
        gateway_pb2.ListUsesRequest(state=model_pb2.USE_STATE_FAILED), timeout=30
    )
    names = [str(u.name) for u in listed.uses if u.request_id == request_id]
    assert len(names) == 1, names
    return names[0]


def _resolve(
    gateway: LiveGateway,
    name: str,
    request_id: str,
    action: model_pb2.UseResolutionAction.ValueType,
    reason: str = "",
) -> model_pb2.UnitUse:
    use: model_pb2.UnitUse = gateway.stub.ResolveUse(
        gateway_pb2.ResolveUseRequest(
            request_id=request_id, name=name, action=action, reason=reason
        ),
        timeout=30,
    )
    return use


def _refused(invoke: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        invoke()
    return caught.value.code(), caught.value.details() or ""


def _statuses(registries: LinkedRegistries, registry: str, block: BlockId) -> set[HoldingStatus]:
    return {h.status for h in registries.ports[registry].block_status(BlockStatusRequest(block))}


def _events(gateway: LiveGateway) -> int:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(LedgerEvent)) or 0)


def _problems(gateway: LiveGateway, registries: LinkedRegistries) -> list[str]:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        return check_all(session, registries.ports)


def _legs(use: model_pb2.UnitUse) -> list[tuple[str, bool, str]]:
    return [(leg.registry, leg.holder, model_pb2.UseLegState.Name(leg.state)) for leg in use.legs]


def test_a_failed_use_names_the_leg_done_and_the_leg_refused_and_why(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, registries):
        name = _fail(gateway)
        use = gateway.stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=30)
        assert use.state == model_pb2.USE_STATE_FAILED
        assert _legs(use) == [
            ("verra", False, "USE_LEG_STATE_DONE"),
            ("hkmo", True, "USE_LEG_STATE_REFUSED"),
        ]
        done, refused = use.legs
        assert done.account == venue_account("hkmo") and refused.account == "hk-seller"
        assert (refused.block.serial_start, refused.block.serial_end) == (START, START + 9)
        assert refused.refusal_code == "FAILED_PRECONDITION"
        assert "injected fault" in refused.refusal and done.refusal == ""
        assert "verra had already done its part" in use.refusal_reason
        assert list(use.resolutions) == []
        # As the registries have it: retired at Verra, still held at the venue.
        assert _statuses(registries, "verra", UNITS) == {HoldingStatus.RETIRED}
        assert _statuses(registries, "hkmo", UNITS) == {HoldingStatus.ACTIVE}


def test_a_completed_use_names_every_leg_done(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, _):
        _fail(gateway, "spend-the-refusal")
        use = gateway.stub.Retire(
            _retirement("fine", BlockId(Program.VCS, "", START + 30, START + 39)), timeout=30
        )
        assert use.state == model_pb2.USE_STATE_COMPLETED
        assert _legs(use) == [
            ("verra", False, "USE_LEG_STATE_DONE"),
            ("hkmo", True, "USE_LEG_STATE_DONE"),
        ]
        assert [leg.refusal for leg in use.legs] == ["", ""]


def test_the_units_of_a_failed_use_are_refused_to_every_use_and_transfer(
    database_url: str,
) -> None:
    with _venue_refusing(database_url, 1) as (gateway, _):
        name = _fail(gateway)
        failed = ("carbonlink_uses_failed", (("kind", "retirement"),))
        assert scrape(gateway.server.metrics_port)[failed] == 1
        code, details = _refused(lambda: gateway.stub.Retire(_retirement("again"), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert HELD_BY_FAILED_USE in details and name in details
        # A part of them, in a transfer: rejected by the same rule, naming the use.
        part = BlockId(Program.VCS, "", START + 5, START + 14)
        moved = gateway.stub.SubmitTransfer(
            gateway_pb2.SubmitTransferRequest(
                request_id="move-held",
                instruction=model_pb2.TransferInstruction(
                    source=SELLER, destination=BUYER, units=[_selector(part)]
                ),
            ),
            timeout=30,
        )
        assert moved.state == model_pb2.TRANSFER_STATE_REJECTED
        (violation,) = [v for v in moved.decision.violations if v.rule_id == HELD_BY_FAILED_USE]
        assert name in violation.message
        # The dry run says the same.
        decision = gateway.stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=moved.instruction), timeout=30
        ).decision
        assert HELD_BY_FAILED_USE in [v.rule_id for v in decision.violations]
        # Units the use did not touch move as before.
        other = gateway.stub.Retire(
            _retirement("other", BlockId(Program.VCS, "", START + 20, START + 29)), timeout=30
        )
        assert other.state == model_pb2.USE_STATE_COMPLETED


def test_a_retry_the_registry_accepts_completes_the_use_once(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, registries):
        name = _fail(gateway)
        failed = ("carbonlink_uses_failed", (("kind", "retirement"),))
        assert scrape(gateway.server.metrics_port)[failed] == 1
        use = _resolve(gateway, name, "retry-1", RETRY, "the venue lifted its block")
        assert scrape(gateway.server.metrics_port)[failed] == 0
        assert use.state == model_pb2.USE_STATE_COMPLETED
        assert _legs(use) == [
            ("verra", False, "USE_LEG_STATE_DONE"),
            ("hkmo", True, "USE_LEG_STATE_DONE"),
        ]
        (resolution,) = use.resolutions
        assert resolution.action == RETRY and resolution.outcome == model_pb2.USE_STATE_COMPLETED
        assert resolution.request_id == "retry-1" and resolution.refusal == ""
        assert _statuses(registries, "hkmo", UNITS) == {HoldingStatus.RETIRED}
        assert _problems(gateway, registries) == []
        # The same request again changes nothing, and answers the same.
        events = _events(gateway)
        assert _resolve(gateway, name, "retry-1", RETRY, "the venue lifted its block") == use
        assert _events(gateway) == events
        # The original Retire, asked again, now answers the completed use.
        assert gateway.stub.Retire(_retirement("retire-failing"), timeout=30) == use
        # Used now, not held: a retirement is refused as of units already retired.
        code, details = _refused(lambda: gateway.stub.Retire(_retirement("again"), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert HELD_BY_FAILED_USE not in details and "retired" in details


def test_a_request_id_resolves_one_use_only(database_url: str) -> None:
    # A resolution's request id was looked up on its own use only: the same id resolved a
    # second use too, where every other request id of a caller names one request.
    with _venue_refusing(database_url, 2) as (gateway, registries):
        first = _fail(gateway, "retire-first")
        second = _fail(gateway, "retire-second", BlockId(Program.VCS, "", START + 10, START + 19))
        done = _resolve(gateway, first, "resolution-1", RETRY)
        assert done.state == model_pb2.USE_STATE_COMPLETED
        events = _events(gateway)
        for action, reason in ((RETRY, ""), (SETTLE, "settled at the venue, ref V-9")):
            with pytest.raises(grpc.RpcError) as caught:
                _resolve(gateway, second, "resolution-1", action, reason)
            code, details = caught.value.code(), caught.value.details() or ""
            assert code == grpc.StatusCode.ALREADY_EXISTS
            assert "'resolution-1' was already used to resolve another use" in details
        assert _events(gateway) == events
        read = gateway.stub.GetUse(gateway_pb2.GetUseRequest(name=second), timeout=30)
        assert read.state == model_pb2.USE_STATE_FAILED and not read.resolutions
        # Its own use, asked again, answers as before; a new id resolves the other.
        assert _resolve(gateway, first, "resolution-1", RETRY) == done
        other = _resolve(gateway, second, "resolution-2", RETRY)
        assert other.state == model_pb2.USE_STATE_COMPLETED
        assert _problems(gateway, registries) == []


def test_a_retry_after_the_registry_put_its_own_state_right_completes_the_use(
    database_url: str,
) -> None:
    """The venue itself earmarked the position (a settlement of its own) when the gateway
    retired it: its refusal is final, and recorded under the leg's operation id, which the
    venue would answer with that refusal for ever. Once the venue releases the earmark, a
    retry goes out under a new operation id and is done."""
    with _venue_refusing(database_url, 0) as (gateway, registries):
        venue = registries.ports["hkmo"]
        in_a_day = datetime.now(UTC) + timedelta(days=1)
        venue.lock(LockRequest("venue-earmark", "hk-seller", UNITS, in_a_day, "V-1"))
        name = _fail(gateway)
        read = gateway.stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=30)
        assert _legs(read)[1] == ("hkmo", True, "USE_LEG_STATE_REFUSED")
        assert read.legs[1].refusal_code == "UNITS_LOCKED"
        # Refused while the earmark stands: failed again, and still held.
        again = _resolve(gateway, name, "retry-1", RETRY)
        assert again.state == model_pb2.USE_STATE_FAILED
        venue.unlock(UnlockRequest("venue-release", "hk-seller", UNITS, "V-1"))
        done = _resolve(gateway, name, "retry-2", RETRY, "venue released earmark V-1")
        assert done.state == model_pb2.USE_STATE_COMPLETED
        assert _statuses(registries, "hkmo", UNITS) == {HoldingStatus.RETIRED}
        assert _problems(gateway, registries) == []


def test_a_retry_refused_again_stays_failed_with_the_new_refusal(database_url: str) -> None:
    with _venue_refusing(database_url, 2) as (gateway, registries):
        name = _fail(gateway)
        use = _resolve(gateway, name, "retry-1", RETRY)
        assert use.state == model_pb2.USE_STATE_FAILED
        assert _legs(use)[1] == ("hkmo", True, "USE_LEG_STATE_REFUSED")
        (resolution,) = use.resolutions
        assert resolution.outcome == model_pb2.USE_STATE_FAILED
        assert "injected fault" in resolution.refusal
        # Still held; and still the difference a failed use is: Verra retired the units
        # the venue still holds active, as the ledger does.
        code, details = _refused(lambda: gateway.stub.Retire(_retirement("again"), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and HELD_BY_FAILED_USE in details
        assert _problems(gateway, registries) != []
        with unit_of_work(gateway.server.bridge.sessions) as session:
            assert check_ledger(session) == []
        # A later retry, once the venue accepts, completes it.
        again = _resolve(gateway, name, "retry-2", RETRY)
        assert again.state == model_pb2.USE_STATE_COMPLETED
        assert [r.outcome for r in again.resolutions] == [
            model_pb2.USE_STATE_FAILED,
            model_pb2.USE_STATE_COMPLETED,
        ]
        assert _problems(gateway, registries) == []


def test_settling_manually_needs_a_reason_and_the_registry_showing_the_units_used(
    database_url: str,
) -> None:
    with _venue_refusing(database_url, 1) as (gateway, registries):
        name = _fail(gateway)
        events = _events(gateway)
        code, details = _refused(lambda: _resolve(gateway, name, "settle-1", SETTLE, "  "))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason: is required" in details
        code, details = _refused(
            lambda: _resolve(
                gateway, name, "settle-1", model_pb2.USE_RESOLUTION_ACTION_UNSPECIFIED, "x"
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "action:" in details
        # The venue still shows the units active: nothing was settled there.
        code, details = _refused(
            lambda: _resolve(gateway, name, "settle-1", SETTLE, "venue ticket HK-1")
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "hkmo does not show units" in details
        assert _events(gateway) == events
        read = gateway.stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=30)
        assert read.state == model_pb2.USE_STATE_FAILED and list(read.resolutions) == []
        with unit_of_work(gateway.server.bridge.sessions) as session:
            assert check_ledger(session) == []
        assert _statuses(registries, "hkmo", UNITS) == {HoldingStatus.ACTIVE}


def test_a_use_settled_outside_the_gateway_is_resolved_and_traced(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, registries):
        name = _fail(gateway)
        # The venue's operator retires the position by hand, on the gateway's behalf.
        registries.ports["hkmo"].retire(
            RetireRequest("by-hand-1", "hk-seller", UNITS, "Acme Ltd", "venue ticket HK-1")
        )
        use = _resolve(gateway, name, "settle-1", SETTLE, "retired by the venue, ticket HK-1")
        assert use.state == model_pb2.USE_STATE_RESOLVED
        assert _legs(use) == [
            ("verra", False, "USE_LEG_STATE_DONE"),
            ("hkmo", True, "USE_LEG_STATE_SETTLED"),
        ]
        (resolution,) = use.resolutions
        assert (resolution.action, resolution.outcome, resolution.reason) == (
            SETTLE,
            model_pb2.USE_STATE_RESOLVED,
            "retired by the venue, ticket HK-1",
        )
        # The ledger records the units used, and agrees with both registries.
        assert _problems(gateway, registries) == []
        # An auditor's trace of the units shows the resolution, with its reason.
        trace = gateway.stub.TraceUnits(
            gateway_pb2.TraceUnitsRequest(block=_selector(UNITS).block), timeout=30
        )
        resolutions = [
            json.loads(e.event.leaf_data) for e in trace.events if e.event.kind == "use_resolution"
        ]
        assert [(r["use"], r["action"], r["outcome"], r["reason"]) for r in resolutions] == [
            (
                name.removeprefix("uses/"),
                "settle_manually",
                "resolved",
                "retired by the venue, ticket HK-1",
            )
        ]
        # The same request id: the same answer, nothing changed; with other words, refused.
        events = _events(gateway)
        assert _resolve(gateway, name, "settle-1", SETTLE, "retired by the venue, ticket HK-1") == (
            use
        )
        assert _events(gateway) == events
        code, _ = _refused(lambda: _resolve(gateway, name, "settle-1", SETTLE, "other words"))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        # Resolved is final: another resolution is refused, and the units stay used.
        code, details = _refused(lambda: _resolve(gateway, name, "retry-late", RETRY))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "resolved, not failed" in details
        assert _events(gateway) == events
        code, details = _refused(lambda: gateway.stub.Retire(_retirement("again"), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and HELD_BY_FAILED_USE not in details


def test_only_a_failed_use_is_resolved(database_url: str) -> None:
    with _venue_refusing(database_url, 1) as (gateway, _):
        # The venue's one refusal is spent on another use first.
        _fail(gateway, "spend-the-refusal")
        done = gateway.stub.Retire(
            _retirement("fine", BlockId(Program.VCS, "", START + 30, START + 39)), timeout=30
        )
        code, details = _refused(lambda: _resolve(gateway, done.name, "r-1", RETRY))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "completed, not failed" in details
        code, details = _refused(lambda: _resolve(gateway, "uses/" + "0" * 32, "r-2", RETRY))
        assert code == grpc.StatusCode.NOT_FOUND
        code, details = _refused(lambda: _resolve(gateway, "transfers/x", "r-3", RETRY))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "name:" in details


def test_use_resolve_on_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with _venue_refusing(database_url, 2) as (gateway, _):
        name = _fail(gateway)
        target = ["--target", gateway.target, "--insecure"]

        def resolve(*options: str) -> tuple[int, str, str]:
            capsys.readouterr()
            # The in-process gateway's log lines kept out of the command's output.
            with capture_logs():
                code = main(["use", "resolve", *options, *target])
            out, err = capsys.readouterr()
            return code, out, err

        code, _, err = resolve(name, "--settle-manually")
        assert code == 2 and "--settle-manually needs --reason" in err
        # Refused again by the venue: the use printed, still failed, exit 1.
        code, out, err = resolve(name, "--retry", "--request-id", "cli-1")
        assert code == 1 and "still failed" in err
        assert json.loads(out)["state"] == "USE_STATE_FAILED"
        code, out, _ = resolve(name.removeprefix("uses/"), "--retry")
        assert code == 0 and json.loads(out)["state"] == "USE_STATE_COMPLETED"
        with unit_of_work(gateway.server.bridge.sessions) as session:
            record = session.get(UnitUseRecord, name.removeprefix("uses/"))
            assert record is not None and record.state == "completed"
