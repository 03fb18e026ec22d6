"""The gateway reconciles by itself, and reports only the differences that persist."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from structlog.testing import capture_logs

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters.serials import parse_serial
from registry_bridge.model import BlockId
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    hold_calls,
    running_gateway,
)
from tests.integration.gateway.test_metrics import scrape

ORIGIN = parse_serial("verra", VERRA_SERIAL).id


def _retire_behind_the_gateway(registries: LinkedRegistries) -> None:
    victim = BlockId(ORIGIN.program, "", ORIGIN.serial_start, ORIGIN.serial_start + 9)
    registries.emulators["hkmo"].store.retire(
        "behind-the-back", "hk-seller", victim, (("beneficiary", "nobody"),)
    )


def test_a_difference_is_reported_once_two_runs_in_a_row_find_it(
    database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    # A day's interval: the test makes the runs itself.
    with running_gateway(
        database_url,
        registries,
        metrics_listen="127.0.0.1:0",
        reconcile_interval_seconds=86_400,
    ) as gateway:
        server = gateway.server
        started = scrape(server.metrics_port)
        assert started[("carbonlink_reconcile_interval_seconds", ())] == 86_400
        # None has run yet: the start counts as the last, so no alert fires at once.
        assert started[("carbonlink_reconcile_last_run_timestamp_seconds", ())] > 0
        clean = server.reconcile_once(None)
        assert clean is not None and clean.consistent
        _retire_behind_the_gateway(registries)
        with capture_logs() as logs:
            first = server.reconcile_once(clean)  # seen once: it may be a transfer under way
        assert first is not None and not first.consistent
        assert not [e for e in logs if e["event"] == "reconcile_differences_persist"]
        samples = scrape(server.metrics_port)
        assert samples[("carbonlink_reconcile_differences", (("registry", "hkmo"),))] == 0
        with capture_logs() as logs:
            server.reconcile_once(first)
        [persisting] = [e for e in logs if e["event"] == "reconcile_differences_persist"]
        assert persisting["log_level"] == "error" and persisting["registries"] == ["hkmo"]
        samples = scrape(server.metrics_port)
    differences = {
        dict(labels)["registry"]: value
        for (name, labels), value in samples.items()
        if name == "carbonlink_reconcile_differences"
    }
    assert differences["hkmo"] >= 1
    assert {r: v for r, v in differences.items() if r != "hkmo"} == dict.fromkeys(
        (r for r in differences if r != "hkmo"), 0
    )
    assert samples[("carbonlink_reconcile_last_run_timestamp_seconds", ())] > 0


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
        metrics_listen="127.0.0.1:0",
        reconcile_interval_seconds=0.2,
    ) as gateway:
        key = ("carbonlink_reconcile_differences", (("registry", "verra"),))
        deadline = time.monotonic() + 30
        while scrape(gateway.server.metrics_port).get(key, 0) < 1:
            assert time.monotonic() < deadline, "no scheduled reconciliation reported it"
            time.sleep(0.1)


def test_one_reconciliation_at_a_time_the_others_are_refused_or_skipped(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, answer = hold_calls(monkeypatch, registries.emulators["verra"].store, "totals", 20)
    with (
        running_gateway(database_url, registries, reconcile_interval_seconds=86_400) as gateway,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(
            gateway.stub.Reconcile, gateway_pb2.ReconcileRequest(registries=["verra"]), timeout=30
        )
        assert asked.wait(10), "the first reconciliation never reached Verra"
        with pytest.raises(grpc.RpcError) as refused:
            gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already under way" in (refused.value.details() or "")
        assert gateway.server.reconcile_once(None) is None  # the scheduled run skips
        answer.set()
        assert first.result(timeout=30).consistent
        # Once it has ended, the next is let in.
        assert gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=30).consistent
