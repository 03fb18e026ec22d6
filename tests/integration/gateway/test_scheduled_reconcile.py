"""The gateways reconcile by themselves, on one schedule over every gateway sharing the
database, one run at a time; each run is recorded, and only the differences found by
two scheduled runs in a row are reported as persisting."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from structlog.testing import capture_logs

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from bench.stack import transfer_request
from registry_bridge.model import BlockId
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    hold_calls,
    running_gateway,
)
from tests.integration.gateway.test_metrics import scrape
from tests.loopback import ANY_PORT

ORIGIN = parse_serial("verra", VERRA_SERIAL).id


def _retire_behind_the_gateway(registries: LinkedRegistries) -> None:
    victim = BlockId(ORIGIN.program, "", ORIGIN.serial_start, ORIGIN.serial_start + 9)
    registries.emulators["hkmo"].store.retire(
        "behind-the-back", "hk-seller", victim, (("beneficiary", "nobody"),)
    )


class _Days:
    """A clock a test moves a day at a time: each scheduled run is due when asked for."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def next_day(self) -> None:
        self.now += timedelta(days=1)


def test_a_difference_is_reported_once_two_runs_in_a_row_find_it(
    database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    days = _Days()
    # A day's interval: the test makes the runs itself, a day apart.
    with running_gateway(
        database_url,
        registries,
        clock=days,
        metrics_listen=ANY_PORT,
        reconcile_interval_seconds=86_400,
    ) as gateway:
        server = gateway.server
        started = scrape(server.metrics_port)
        assert started[("carbonlink_reconcile_interval_seconds", ())] == 86_400
        # None has run yet: the start counts as the last, so no alert fires at once.
        assert started[("carbonlink_reconcile_last_run_timestamp_seconds", ())] > 0
        days.next_day()
        clean = server.reconcile_once()
        assert clean is not None and clean.report is not None and clean.report.consistent
        assert server.reconcile_once() is None  # the next is not due for a day
        _retire_behind_the_gateway(registries)
        days.next_day()
        with capture_logs() as logs:
            first = server.reconcile_once()  # seen once: it may be a transfer under way
        assert first is not None and first.report is not None and not first.report.consistent
        assert first.persistent == ()
        assert not [e for e in logs if e["event"] == "reconcile_differences_persist"]
        samples = scrape(server.metrics_port)
        assert samples[("carbonlink_reconcile_differences", (("registry", "hkmo"),))] == 0
        days.next_day()
        with capture_logs() as logs:
            second = server.reconcile_once()
        [persisting] = [e for e in logs if e["event"] == "reconcile_differences_persist"]
        assert persisting["log_level"] == "error" and persisting["registries"] == ["hkmo"]
        assert second is not None and persisting["reconciliation"] == second.id
        samples = scrape(server.metrics_port)
        listed = gateway.stub.ListReconciliations(
            gateway_pb2.ListReconciliationsRequest(trigger="schedule"), timeout=10
        )
    differences = {
        dict(labels)["registry"]: value
        for (name, labels), value in samples.items()
        if name == "carbonlink_reconcile_differences"
    }
    assert differences["hkmo"] >= 1
    assert {r: v for r, v in differences.items() if r != "hkmo"} == dict.fromkeys(
        (r for r in differences if r != "hkmo"), 0
    )
    assert samples[("carbonlink_reconcile_last_run_timestamp_seconds", ())] == (
        days.now.timestamp()
    )
    # Over the API, the auditor sees the three runs, and which differences persisted.
    assert [r.id for r in listed.reconciliations] == [second.id, first.id, clean.id]
    latest = listed.reconciliations[0]
    assert latest.state == "completed" and latest.trigger == "schedule"
    assert latest.report.reconciliation_id == second.id
    marked = [d for d in latest.report.discrepancies if d.persistent]
    assert marked and {d.registry for d in marked} == {"hkmo"}
    assert not any(d.persistent for d in listed.reconciliations[1].report.discrepancies)


def test_the_gateway_reconciles_on_its_interval(
    database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    # Retired at the venue before the gateway starts: its start-up import learns the
    # venue's retirement, which Verra, holding the venue's units, never saw.
    _retire_behind_the_gateway(registries)
    with running_gateway(
        database_url,
        registries,
        metrics_listen=ANY_PORT,
        reconcile_interval_seconds=0.2,
    ) as gateway:
        key = ("carbonlink_reconcile_differences", (("registry", "verra"),))
        deadline = time.monotonic() + 30
        while scrape(gateway.server.metrics_port).get(key, 0) < 1:
            assert time.monotonic() < deadline, "no scheduled reconciliation reported it"
            time.sleep(0.1)


def test_one_reconciliation_at_a_time_over_the_gateways_on_one_database(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, answer = hold_calls(monkeypatch, registries.emulators["verra"].store, "totals", 20)
    with (
        running_gateway(database_url, registries, reconcile_interval_seconds=86_400) as first,
        running_gateway(database_url, registries, reconcile_interval_seconds=86_400) as other,
        ThreadPoolExecutor(1) as pool,
    ):
        running = pool.submit(
            first.stub.Reconcile, gateway_pb2.ReconcileRequest(registries=["verra"]), timeout=30
        )
        assert asked.wait(10), "the first reconciliation never reached Verra"
        for gateway in (first, other):
            with pytest.raises(grpc.RpcError) as refused:
                gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already under way" in (refused.value.details() or "")
            assert gateway.server.reconcile_once() is None  # the scheduled run skips
        (listed,) = other.stub.ListReconciliations(
            gateway_pb2.ListReconciliationsRequest(), timeout=10
        ).reconciliations
        assert listed.state == "running" and list(listed.registries) == ["verra"]
        assert not listed.HasField("ended_at") and not listed.HasField("report")
        answer.set()
        report = running.result(timeout=30)
        assert report.consistent and report.reconciliation_id == listed.id
        # Once it has ended, the next is let in, on either gateway.
        assert other.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=30).consistent
        runs = first.stub.ListReconciliations(
            gateway_pb2.ListReconciliationsRequest(page_size=1), timeout=10
        )
        (newest,) = runs.reconciliations
        assert newest.trigger == "request" and newest.state == "completed"
        (older,) = first.stub.ListReconciliations(
            gateway_pb2.ListReconciliationsRequest(page_size=1, page_token=runs.next_page_token),
            timeout=10,
        ).reconciliations
        assert older.id == listed.id and older.state == "completed"


def test_units_a_difference_persists_over_are_held(
    database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    days = _Days()
    with running_gateway(
        database_url,
        registries,
        clock=days,
        metrics_listen=ANY_PORT,
        reconcile_interval_seconds=86_400,
    ) as gateway:
        _retire_behind_the_gateway(registries)
        for _ in range(2):
            days.next_day()
            run = gateway.server.reconcile_once()
        assert run is not None and run.persistent
        # The ten units retired behind the gateway's back, and only they.
        held_units = scrape(gateway.server.metrics_port)
        assert held_units[("carbonlink_units_held", (("registry", "hkmo"),))] == 10
        assert held_units[("carbonlink_units_held", (("registry", "verra"),))] == 0
        victim = ORIGIN.serial_start + 3
        # Dry run, transfer and retirement of the units: refused by the hold, every
        # violated rule listed, before any registry is asked.
        held = transfer_request("held", victim)
        evaluated = gateway.stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=held.instruction), timeout=10
        )
        assert not evaluated.decision.allowed
        (violation,) = [
            v for v in evaluated.decision.violations if v.rule_id == "CL-RECONCILE-0001"
        ]
        assert f"reconciliation {run.id}" in violation.message and "hkmo" in violation.message
        refused = gateway.stub.SubmitTransfer(held, timeout=30)
        assert refused.state == model_pb2.TRANSFER_STATE_REJECTED
        assert "CL-RECONCILE-0001" in refused.failure_reason
        with pytest.raises(grpc.RpcError) as retire:
            gateway.stub.Retire(
                gateway_pb2.RetireRequest(
                    request_id="retire-held",
                    account=held.instruction.source,
                    units=held.instruction.units,
                    beneficiary="someone",
                ),
                timeout=30,
            )
        assert retire.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CL-RECONCILE-0001" in (retire.value.details() or "")
        # Units the difference does not touch move as ever.
        free = gateway.stub.SubmitTransfer(
            transfer_request("free", ORIGIN.serial_start + 100), timeout=30
        )
        assert free.state == model_pb2.TRANSFER_STATE_COMPLETED
