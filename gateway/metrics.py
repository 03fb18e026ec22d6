"""Operational metrics in the Prometheus text format, on an HTTP endpoint of their own.

What an operator watches and alerts on: calls by method and status code and how long
they take; calls to each registry by operation and outcome (every attempt, retries
included) and how long they take; transfer steps as they commit; what the scheduled
reconciliation found; and, read from the database at each scrape, the transfers not yet
final by state with the age of the oldest (a transfer waiting on a registry that stays
down shows here first), the retirements and surrenders pending, the migrations running,
and the provenance log's size. Counts only: no account, unit or party appears in a label.

On a secure gateway the endpoint speaks TLS with the gateway's certificate and requires
a client certificate of the configured CA, as the gRPC API does.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import GatewayConfig
from gateway.handlers import GatewayCallInterceptor, StreamBehavior, UnaryBehavior
from registry_bridge.db import read_only
from registry_bridge.reconciliations import SCHEDULE, held_blocks, last_completed
from registry_bridge.schema import LogHead, MigrationRecord, TransferRecord, UnitUseRecord
from registry_bridge.transfers import TransferState

_UNFINISHED = tuple(s.value for s in TransferState if not s.is_final)
_USE_KINDS = ("retirement", "surrender")
_PENDING_USE = "pending"
_FAILED_USE = "failed"
_RUNNING_MIGRATION = "running"
_CALL_SECONDS_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0),  # a batch of 1,000 takes seconds
)


class _DatabaseCollector(Collector):
    """Gauges read from the database at each scrape, so that every gateway sharing the
    database reports the same, and a restarted one is right from its first scrape."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
        started: datetime | None,
    ) -> None:
        """``started``: when this gateway's schedule of reconciliations began (None:
        this gateway runs none)."""
        self._sessions = sessions
        self._clock = clock
        self._started = started

    def collect(self) -> Iterable[Metric]:
        unfinished = GaugeMetricFamily(
            "carbonlink_transfers_unfinished",
            "Transfers not yet in a final state, by state.",
            labels=["state"],
        )
        oldest = GaugeMetricFamily(
            "carbonlink_transfer_oldest_unfinished_age_seconds",
            "Seconds since the oldest transfer in each unfinished state was proposed.",
            labels=["state"],
        )
        uses = GaugeMetricFamily(
            "carbonlink_uses_pending",
            "Retirements and surrenders whose registry legs are under way, by kind.",
            labels=["kind"],
        )
        failed_uses = GaugeMetricFamily(
            "carbonlink_uses_failed",
            "Retirements and surrenders done at one registry and refused at another, not "
            "yet resolved by an operator (their units are held, rule CL-USE-0001), by kind.",
            labels=["kind"],
        )
        oldest_use = GaugeMetricFamily(
            "carbonlink_use_oldest_pending_age_seconds",
            "Seconds since the oldest pending retirement or surrender was requested.",
            labels=["kind"],
        )
        migrations = GaugeMetricFamily(
            "carbonlink_migrations_running", "Migrations of covered entities under way."
        )
        log_size = GaugeMetricFamily(
            "carbonlink_provenance_log_size", "Events in the provenance log."
        )
        differences = GaugeMetricFamily(
            "carbonlink_reconcile_differences",
            "Differences between the ledger and a registry found by the last completed "
            "scheduled reconciliation (of any gateway sharing the database) and the one "
            "before it, by registry.",
            labels=["registry"],
        )
        unreadable = GaugeMetricFamily(
            "carbonlink_reconcile_unreadable",
            "1 when the last completed scheduled reconciliation could not read the registry.",
            labels=["registry"],
        )
        held_units = GaugeMetricFamily(
            "carbonlink_units_held",
            "Units no transfer or use may take because the last two scheduled "
            "reconciliations found them differing from the registry, by registry.",
            labels=["registry"],
        )
        last_run = GaugeMetricFamily(
            "carbonlink_reconcile_last_run_timestamp_seconds",
            "When the last scheduled reconciliation of any gateway sharing the database "
            "completed, or this gateway started when none has yet (Unix time; 0 when none "
            "has and this gateway runs none).",
        )
        # Read only: on SQLite a session's transaction would take the one write lock.
        with read_only(self._sessions) as session:
            by_state = {
                state: (count, first)
                for state, count, first in session.execute(
                    sa.select(
                        TransferRecord.state,
                        sa.func.count(),
                        sa.func.min(TransferRecord.created_at),
                    )
                    .where(TransferRecord.state.in_(_UNFINISHED))
                    .group_by(TransferRecord.state)
                )
            }
            pending_uses = {
                kind: (count, first)
                for kind, count, first in session.execute(
                    sa.select(
                        UnitUseRecord.kind,
                        sa.func.count(),
                        sa.func.min(UnitUseRecord.created_at),
                    )
                    .where(UnitUseRecord.state == _PENDING_USE)
                    .group_by(UnitUseRecord.kind)
                )
            }
            failed: dict[str, int] = {
                kind: count
                for kind, count in session.execute(
                    sa.select(UnitUseRecord.kind, sa.func.count())
                    .where(UnitUseRecord.state == _FAILED_USE)
                    .group_by(UnitUseRecord.kind)
                )
            }
            running = session.execute(
                sa.select(sa.func.count()).where(MigrationRecord.state == _RUNNING_MIGRATION)
            ).scalar_one()
            size = session.execute(sa.select(LogHead.size)).scalar()
            reconciled = last_completed(session, SCHEDULE)
            held = held_blocks(session)
        now = self._clock()
        for state in _UNFINISHED:
            count, first = by_state.get(state, (0, None))
            unfinished.add_metric([state], count)
            oldest.add_metric([state], _age(now, first))
        for kind in _USE_KINDS:
            count, first = pending_uses.get(kind, (0, None))
            uses.add_metric([kind], count)
            failed_uses.add_metric([kind], failed.get(kind, 0))
            oldest_use.add_metric([kind], _age(now, first))
        migrations.add_metric([], running)
        log_size.add_metric([], size or 0)
        if reconciled is not None and reconciled.report is not None:
            persisting = collections.Counter(d.registry for d in reconciled.persistent)
            not_read = {u.registry for u in reconciled.report.unreadable}
            for registry in reconciled.registries:
                differences.add_metric([registry], persisting[registry])
                unreadable.add_metric([registry], 1 if registry in not_read else 0)
                held_units.add_metric(
                    [registry], sum(h.block.quantity for h in held if h.registry == registry)
                )
        last = (
            reconciled.ended_at
            if reconciled is not None and reconciled.ended_at is not None
            else self._started
        )
        last_run.add_metric([], 0.0 if last is None else last.timestamp())
        return [
            unfinished,
            oldest,
            uses,
            failed_uses,
            oldest_use,
            migrations,
            log_size,
            differences,
            unreadable,
            held_units,
            last_run,
        ]


def _age(now: datetime, since: datetime | None) -> float:
    """Seconds from ``since`` to ``now``; 0 when there is none (the minimum of no rows).
    Both are aware: the columns' UtcDateTime type reads the minimum too."""
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


class GatewayMetrics:
    """The gateway's metrics, in a registry of its own (several gateways in one process,
    as in tests, do not share counters)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime] | None = None,
        reconcile_interval_seconds: float = 0.0,
    ) -> None:
        """Metrics of a gateway on ``sessions``; ``reconcile_interval_seconds``: its
        scheduled reconciliation's interval (0: none)."""
        now = clock or (lambda: datetime.now(UTC))
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "carbonlink_rpc_calls",
            "Calls answered, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "carbonlink_rpc_call_duration_seconds",
            "Time from a call's arrival to its answer (a stream's: to its end), by method.",
            ["method"],
            buckets=_CALL_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.registry_calls = Counter(
            "carbonlink_registry_calls",
            "Attempts at calls to a registry, retries included, by registry, operation and "
            "outcome (ok, rejected, unavailable, abandoned, error).",
            ["registry", "operation", "outcome"],
            registry=self.registry,
        )
        self.registry_call_seconds = Histogram(
            "carbonlink_registry_call_duration_seconds",
            "Time one attempt at a registry call took, by registry.",
            ["registry"],
            buckets=_CALL_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.transfer_steps = Counter(
            "carbonlink_transfer_steps",
            "Transfer states committed by this gateway, by state.",
            ["state"],
            registry=self.registry,
        )
        self.reconcile_interval = Gauge(
            "carbonlink_reconcile_interval_seconds",
            "The scheduled reconciliation's interval (0: this gateway runs none).",
            registry=self.registry,
        )
        self.reconcile_interval.set(reconcile_interval_seconds)
        # Before any scheduled run, the gateway's start counts as the last: an alert on
        # the time since the last run does not fire the moment a gateway starts.
        started = now() if reconcile_interval_seconds > 0 else None
        self.registry.register(_DatabaseCollector(sessions, now, started))
        # The process's CPU, memory, open files and garbage collections, as every
        # Prometheus client exports them (they describe the process, not this gateway).
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.interceptor = MetricsInterceptor(self)

    def registry_call(self, registry: str, operation: str, outcome: str, seconds: float) -> None:
        """Count and time one attempt at a registry call (the adapters' observer)."""
        self.registry_calls.labels(registry, operation, outcome).inc()
        self.registry_call_seconds.labels(registry).observe(seconds)

    def transfer_step(self, _: str, state: TransferState) -> None:
        """Count a committed transfer state (the bridge's ``on_state`` hook)."""
        self.transfer_steps.labels(state.value).inc()


class MetricsInterceptor(GatewayCallInterceptor):
    """Counts each call of the gateway service by method and final status code, and
    times it. It sits outside error mapping, so it sees the code the client sees."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def _record(self, full_method: str, context: grpc.ServicerContext, began: float) -> None:
        method = full_method.rsplit("/", 1)[-1]
        code = context.code()
        name = grpc.StatusCode.OK.name if code is None else code.name
        self._metrics.calls.labels(method, name).inc()
        self._metrics.call_seconds.labels(method).observe(time.perf_counter() - began)

    def _unary(self, behavior: UnaryBehavior, full_method: str) -> UnaryBehavior:
        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            began = time.perf_counter()
            try:
                return behavior(request, context)
            finally:
                self._record(full_method, context, began)

        return timed

    def _stream(self, behavior: StreamBehavior, full_method: str) -> StreamBehavior:
        def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            began = time.perf_counter()
            try:
                yield from behavior(request, context)
            finally:
                self._record(full_method, context, began)

        return timed


class MetricsEndpoint:
    """The HTTP(S) server of ``/metrics``; started by :meth:`start`, ended by :meth:`stop`."""

    def __init__(self, metrics: GatewayMetrics, config: GatewayConfig) -> None:
        self._metrics = metrics
        self._config = config
        self._server: Any = None
        self.port = 0

    def start(self) -> int:
        """Bind and serve; returns the bound port.

        Raises:
            OSError: The address cannot be bound, or a TLS file cannot be read.
        """
        host, port = self._config.metrics_listen.rsplit(":", 1)
        tls: dict[str, Any] = {}
        if not self._config.insecure:
            tls = {
                "certfile": self._config.tls_cert_file,
                "keyfile": self._config.tls_key_file,
                "client_cafile": self._config.tls_ca_file,
                "client_auth_required": True,
            }
        server, _ = start_http_server(
            int(port), addr=host.strip("[]"), registry=self._metrics.registry, **tls
        )
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
