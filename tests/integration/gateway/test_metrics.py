"""The Prometheus metrics endpoint: calls by code, transfer steps, unfinished transfers."""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.serials import parse_serial
from bench.stack import transfer_request
from gateway.config import ConfigError, GatewayConfig, RegistryEndpoint, load_config
from gateway.server import GatewayServer
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    running_gateway,
)
from tests.loopback import ANY_PORT, HOST, free_port

START = parse_serial("verra", VERRA_SERIAL).id.serial_start
ALERT_RULES = Path(__file__).resolve().parents[3] / "deploy" / "prometheus-alerts.yaml"


def scrape(
    port: int, opener: urllib.request.OpenerDirector | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by name and sorted labels."""
    url = f"http://{HOST}:{port}/metrics"
    with (opener or urllib.request.build_opener()).open(url, timeout=10) as answer:
        text = answer.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_calls_are_counted_by_method_and_code_and_steps_by_state(
    database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    with running_gateway(database_url, registries, metrics_listen=ANY_PORT) as gateway:
        port = gateway.server.metrics_port
        assert port > 0
        before = scrape(port)
        assert before[("carbonlink_provenance_log_size", ())] >= 1  # the import's issuance
        reply = gateway.stub.SubmitTransfer(
            transfer_request("trade-1", START, START + 9), timeout=30
        )
        assert reply.state == model_pb2.TRANSFER_STATE_COMPLETED
        with pytest.raises(grpc.RpcError) as refused:
            gateway.stub.SubmitTransfer(transfer_request("", START, START + 9), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        gateway.stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        after = scrape(port)
    ok = ("carbonlink_rpc_calls_total", (("code", "OK"), ("method", "SubmitTransfer")))
    bad = (
        "carbonlink_rpc_calls_total",
        (("code", "INVALID_ARGUMENT"), ("method", "SubmitTransfer")),
    )
    listed = ("carbonlink_rpc_calls_total", (("code", "OK"), ("method", "ListRegistries")))
    assert (after[ok], after[bad], after[listed]) == (1, 1, 1)
    timed = ("carbonlink_rpc_call_duration_seconds_count", (("method", "SubmitTransfer"),))
    assert after[timed] == 2
    for state in ("CHECKED", "SOURCE_LOCKED", "DESTINATION_CREDITED", "COMPLETED"):
        assert after[("carbonlink_transfer_steps_total", (("state", state),))] == 1, state
    # The transfer's registry calls: locks and finalizes at the venue and at Verra, the
    # credit at Shenzhen, each once and answered.
    calls = {
        (dict(labels)["registry"], dict(labels)["operation"]): value
        for (name, labels), value in after.items()
        if name == "carbonlink_registry_calls_total" and dict(labels)["outcome"] == "ok"
    }
    for registry, operation in (
        ("hkmo", "lock"),
        ("verra", "lock"),
        ("shenzhen", "credit"),
        ("hkmo", "finalize"),
        ("verra", "finalize"),
    ):
        assert calls[(registry, operation)] == 1, (registry, operation)
    unfinished = {
        labels: value
        for (name, labels), value in after.items()
        if name == "carbonlink_transfers_unfinished"
    }
    assert unfinished and set(unfinished.values()) == {0}
    for kind in ("retirement", "surrender"):
        assert after[("carbonlink_uses_pending", (("kind", kind),))] == 0
    assert after[("carbonlink_migrations_running", ())] == 0
    assert after[("process_resident_memory_bytes", ())] > 0
    # No scheduled reconciliation on this gateway: nothing for the not-running alert.
    assert after[("carbonlink_reconcile_interval_seconds", ())] == 0
    assert after[("carbonlink_reconcile_last_run_timestamp_seconds", ())] == 0
    assert (
        after[("carbonlink_provenance_log_size", ())]
        > before[("carbonlink_provenance_log_size", ())]
    )


@contextmanager
def _gateway_with_shenzhen_down(
    database_url: str, registries: LinkedRegistries, clock: list[datetime]
) -> Iterator[tuple[GatewayServer, gateway_pb2_grpc.LinkageGatewayStub]]:
    dead = f"{HOST}:{free_port()}"
    config = GatewayConfig(
        listen=ANY_PORT,
        metrics_listen=ANY_PORT,
        database_url=database_url,
        registries=tuple(
            RegistryEndpoint(e.registry_id, dead if e.registry_id == "shenzhen" else e.target)
            for e in registries.endpoints()
        ),
        insecure=True,
        registry_retry_attempts=1,
        registry_timeout_seconds=1.0,
    )
    server = GatewayServer(config, clock=lambda: clock[0])
    port = server.start()
    channel = grpc.insecure_channel(f"{HOST}:{port}")
    try:
        yield server, gateway_pb2_grpc.LinkageGatewayStub(channel)
    finally:
        channel.close()
        server.stop(grace_seconds=0)


def test_a_transfer_waiting_on_a_registry_shows_as_unfinished_with_its_age(
    database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    # From the wall clock's now: the registries keep their own time, and refuse a lock
    # whose expiry (the gateway's clock plus its lock TTL) is already past for them.
    clock = [datetime.now(UTC).replace(microsecond=0)]
    with _gateway_with_shenzhen_down(database_url, registries, clock) as (server, stub):
        reply = stub.SubmitTransfer(transfer_request("stuck-1", START, START + 9), timeout=30)
        assert reply.state == model_pb2.TRANSFER_STATE_SOURCE_LOCKED  # the credit waits
        clock[0] += timedelta(seconds=90)
        samples = scrape(server.metrics_port)
    locked = (("state", "SOURCE_LOCKED"),)
    assert samples[("carbonlink_transfers_unfinished", locked)] == 1
    assert samples[("carbonlink_transfer_oldest_unfinished_age_seconds", locked)] == 90
    assert samples[("carbonlink_transfers_unfinished", (("state", "CHECKED"),))] == 0
    refused_credit = (
        "carbonlink_registry_calls_total",
        (("operation", "credit"), ("outcome", "unavailable"), ("registry", "shenzhen")),
    )
    assert samples[refused_credit] >= 1


def test_no_metrics_endpoint_unless_asked_and_a_bad_address_is_named() -> None:
    assert GatewayConfig().metrics_listen == ""
    with pytest.raises(ConfigError, match="metrics_listen: 'nine' is not HOST:PORT"):
        load_config(flags={"metrics_listen": "nine"})


def test_every_metric_the_deployments_alert_rules_name_is_served(
    database_url: str, registries: LinkedRegistries
) -> None:
    rules = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = {name for expr in expressions for name in re.findall(r"carbonlink_[a-z_]+", expr)}
    assert named
    with running_gateway(database_url, registries, metrics_listen=ANY_PORT) as gateway:
        assert gateway.server.metrics is not None
        families = list(gateway.server.metrics.registry.collect())
    served = {
        family.name + suffix
        for family in families
        for suffix in ("", "_total", "_count", "_sum", "_bucket")
    }
    assert named <= served, named - served


def test_a_scrape_reads_while_a_transfer_holds_sqlites_write_lock(
    tmp_path: Path, registries: LinkedRegistries
) -> None:
    path = tmp_path / "gateway.db"
    with running_gateway(f"sqlite:///{path}", registries, metrics_listen=ANY_PORT) as gateway:
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # as a transfer step's transaction does
            began = time.monotonic()
            samples = scrape(gateway.server.metrics_port)
            assert time.monotonic() - began < 5
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert ("carbonlink_provenance_log_size", ()) in samples
