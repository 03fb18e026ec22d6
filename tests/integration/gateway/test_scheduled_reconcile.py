"""The gateway reconciles by itself, and reports only the differences that persist."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from adapters.serials import parse_serial
from registry_bridge.model import BlockId
from tests.integration.gateway.conftest import VERRA_SERIAL, LinkedRegistries, running_gateway
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
        clean = server.reconcile_once(None)
        assert clean.consistent
        _retire_behind_the_gateway(registries)
        with capture_logs() as logs:
            first = server.reconcile_once(clean)  # seen once: it may be a transfer under way
        assert not first.consistent
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
