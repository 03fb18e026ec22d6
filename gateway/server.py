"""The gateway process: gRPC server, health, reflection, storage, graceful shutdown.

This is the composition root: it builds the database engine, brings the schema up to
date, wires the registries named in the configuration once, and serves.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from datetime import UTC, datetime, timedelta

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.engine import Engine

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from gateway.catalog import RegistryInfo
from gateway.config import ConfigError, GatewayConfig
from gateway.error_mapping import ErrorMappingInterceptor
from gateway.in_flight import InFlightCalls
from gateway.log_keys import load_signer
from gateway.metrics import GatewayMetrics, MetricsEndpoint
from gateway.security.settings import GatewaySecurity, warn_if_insecure
from gateway.servicer import LinkageGatewayServicer
from registry_bridge import db
from registry_bridge.bridge import Bridge, TransferRules
from registry_bridge.entities import DatabaseEntityRecords
from registry_bridge.errors import Abandoned, CarbonlinkError
from registry_bridge.migration import DatabaseCutovers, Migrations, MigrationStep
from registry_bridge.port import RegistryPort
from registry_bridge.projects import DatabaseProjectRecords
from registry_bridge.provenance import ProvenanceLog
from registry_bridge.reconcile import Reconciler
from registry_bridge.reconciliations import Reconciliation
from registry_bridge.rules_gate import ComplianceRules
from registry_bridge.transfers import TransferState

_logger = structlog.get_logger(__name__)

SERVICE_NAME: str = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"].full_name
PROBE_TIMEOUT_SECONDS = 0.5
"""How long a registry's health service is given to answer ListRegistries."""
PROBE_REUSE_SECONDS = 2.0
"""How long a registry's health answer is reused: any token lists the registries, and
calls in a loop would otherwise each wait on the registries that do not answer."""
_HANDLER_END_SECONDS = 1.0
"""After the grace period, how long a stop waits for the handlers of the calls it
cancelled: one that was between two statements ends within it, one waiting on a registry
that does not answer is left."""
_SCHEDULE_LOOKS_PER_INTERVAL = 4
"""How often per interval a gateway looks whether a scheduled reconciliation is due: the
runs of a fleet then follow each other within 1.25 intervals."""
YOUNG_COLLECTION_THRESHOLD = 50_000
"""Net allocations of tracked objects between two runs of Python's cyclic collector over
its youngest generation (Python's default: 700).  The gateway's objects are freed by
reference counting; the collector only looks for cycles, and every tenth run of a
generation runs the next one: a full run walks every long-lived object of the process
(~130,000 after start: rule packs, schema, modules, caches).  With the default, a batch
of 1,000 transfers ran the collector ~170 times and the full one once or twice: 8-11 %
of the process's CPU, against about 1 % with this threshold (docs/performance.md, item
47)."""


class RegistryProbe:
    """Asks registries' standard health services whether they are up; one channel per
    target."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._credentials = credentials
        self._channels: dict[str, grpc.Channel] = {}
        # Target -> (monotonic time asked, whether it served).
        self._answers: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def __call__(self, infos: Sequence[RegistryInfo]) -> list[bool]:
        """Whether each registry serves.

        Every registry not asked within ``PROBE_REUSE_SECONDS`` is asked at once, so a
        call waits one check (``PROBE_TIMEOUT_SECONDS``) at most, not one per registry
        that drops traffic.
        """
        now = time.monotonic()
        with self._lock:
            serving = {
                target: answer
                for target, (asked_at, answer) in self._answers.items()
                if now - asked_at < PROBE_REUSE_SECONDS
            }
            checks = {
                info.target: health_pb2_grpc.HealthStub(self._channel(info.target)).Check.future(
                    health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT_SECONDS
                )
                for info in infos
                if info.target not in serving
            }
        asked = {target: _serving(check) for target, check in checks.items()}
        with self._lock:
            self._answers.update({target: (now, answer) for target, answer in asked.items()})
        serving.update(asked)
        return [serving[info.target] for info in infos]

    def _channel(self, target: str) -> grpc.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = (
                grpc.insecure_channel(target)
                if self._credentials is None
                else grpc.secure_channel(target, self._credentials)
            )
            self._channels[target] = channel
        return channel

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def _serving(check: grpc.Future) -> bool:
    try:
        reply = check.result()
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wired_registries(config: GatewayConfig) -> list[RegistryInfo]:
    """The registries named in the configuration, described from the adapter table.

    Raises:
        ConfigError: A configured registry has no adapter.
    """
    infos = []
    for endpoint in config.registries:
        entry = REGISTRIES.get(endpoint.registry_id)
        if entry is None:
            raise ConfigError(
                f"registries: no adapter for {endpoint.registry_id!r} "
                f"(known: {', '.join(sorted(REGISTRIES))})"
            )
        infos.append(
            RegistryInfo(
                registry_id=endpoint.registry_id,
                display_name=entry.display_name,
                programs=tuple(p.value for p in entry.programs),
                serial_format=entry.serial_format,
                target=endpoint.target,
            )
        )
    return infos


def _crash_hook(state_name: str) -> Callable[[str, TransferState], None] | None:
    """Fault injection for crash tests: SIGKILL this process once ``state_name`` commits."""
    if not state_name:
        return None
    _logger.warning("fault_injection_enabled", crash_after_state=state_name)

    def crash(transfer_id: str, state: TransferState) -> None:
        if state.value == state_name:
            _logger.warning("fault_injection_crash", transfer=transfer_id, state=state_name)
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def _migration_crash_hook(step_name: str) -> Callable[[str, MigrationStep], None] | None:
    """Fault injection for crash tests: SIGKILL this process once a ``KIND:STATE`` step commits."""
    if not step_name:
        return None
    _logger.warning("fault_injection_enabled", crash_after_migration_step=step_name)

    def crash(migration_id: str, step: MigrationStep) -> None:
        if f"{step.kind}:{step.state}" == step_name:
            _logger.warning("fault_injection_crash", migration=migration_id, step=step.seq)
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _each(
    *hooks: Callable[[str, TransferState], None] | None,
) -> Callable[[str, TransferState], None] | None:
    """One ``on_state`` hook calling each of ``hooks`` given, in order (None: none given)."""
    given = [h for h in hooks if h is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def each(transfer_id: str, state: TransferState) -> None:
        for hook in given:
            hook(transfer_id, state)

    return each


class GatewayServer:
    """One gateway process."""

    def __init__(
        self,
        config: GatewayConfig,
        rules: TransferRules | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Wire the gateway: database, registry adapters (once), rules and bridge.

        Raises:
            ConfigError: A configured registry has no adapter.
            DatabaseError: The database URL is unusable.
        """
        self.config = config
        self.engine: Engine = db.create_engine(config.database_url)
        self.security = GatewaySecurity.from_config(config, db.session_factory(self.engine))
        self._probe = RegistryProbe(self.security.registry_credentials)
        self._server: grpc.Server | None = None
        self._in_flight = InFlightCalls()
        self._health = health.HealthServicer()
        self._registries = wired_registries(config)
        sessions = db.session_factory(self.engine)
        self.metrics = (
            GatewayMetrics(sessions, clock, config.reconcile_interval_seconds)
            if config.metrics_listen
            else None
        )
        self._metrics_endpoint = (
            MetricsEndpoint(self.metrics, config) if self.metrics is not None else None
        )
        retry = RetryPolicy(
            attempts=config.registry_retry_attempts,
            initial_wait_s=config.registry_retry_initial_wait_seconds,
            max_wait_s=config.registry_retry_max_wait_seconds,
        )
        self.adapters: dict[str, RegistryPort] = {
            info.registry_id: build_adapter(
                info.registry_id,
                info.target,
                retry,
                timeout_s=config.registry_timeout_seconds,
                credentials=self.security.registry_credentials,
                observer=None if self.metrics is None else self.metrics.registry_call,
            )
            for info in self._registries
        }
        self.bridge = Bridge(
            sessions,
            self.adapters,
            rules
            if rules is not None
            else ComplianceRules(
                DatabaseEntityRecords(sessions),
                DatabaseCutovers(sessions),
                DatabaseProjectRecords(sessions),
            ),
            clock=clock,
            lock_ttl=timedelta(seconds=config.lock_ttl_seconds),
            on_state=_each(
                None if self.metrics is None else self.metrics.transfer_step,
                # Last: the crash hook ends the process.
                _crash_hook(config.fault_crash_after_state),
            ),
            lease=timedelta(seconds=config.transfer_lease_seconds),
            accepted_backlog=config.accepted_backlog_transfers,
            credited_programs={
                info.registry_id: programs
                for info in self._registries
                if (programs := REGISTRIES[info.registry_id].credited_programs) is not None
            },
        )
        self.migrations = Migrations(
            self.bridge,
            self.adapters,
            clock=clock,
            on_step=_migration_crash_hook(config.fault_crash_after_migration_step),
        )
        self.provenance = ProvenanceLog(sessions, load_signer(config))
        self._recovery_stop = threading.Event()
        self._recovery: threading.Thread | None = None
        self._importing: threading.Thread | None = None
        self._reconciling: threading.Thread | None = None
        self._reconciler = Reconciler(
            sessions, self.adapters, runner=f"{socket.gethostname()}:{os.getpid()}", clock=clock
        )
        self._clock = clock
        self.port = 0

    def start(self) -> int:
        """Migrate the database, bind and start serving; returns the bound port.

        Raises:
            DatabaseError: The database cannot be reached or migrated.
            OSError: The listen address cannot be bound.
        """
        warn_if_insecure(self.config)
        # Process-wide, as the server is (one gateway process): see the constant.
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        db.check_connection(self.engine)
        db.upgrade(self.engine)
        # Learn the units the registries issued before taking any call about them.
        self.import_registries()
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="rpc"
            ),
            # Counting outermost, so that a call counts until its last step; metrics next,
            # outside error mapping, to see the status code the client sees; error mapping
            # next: it maps what the security interceptor refuses.
            interceptors=[
                self._in_flight,
                *(() if self.metrics is None else (self.metrics.interceptor,)),
                ErrorMappingInterceptor(),
                *self.security.interceptors,
            ],
            options=[
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = LinkageGatewayServicer(
            self._registries,
            self._probe,
            self.bridge,
            self.config.max_batch_size,
            migrations=self.migrations,
            provenance=self.provenance,
            ports=self.adapters,
            reconciler=self._reconciler,
            trace_page_bytes=self.config.trace_page_bytes,
            watch_fallback_seconds=self.config.watch_fallback_seconds,
        )
        gateway_pb2_grpc.add_LinkageGatewayServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        credentials = self.security.server_credentials
        try:
            port: int = (
                server.add_insecure_port(self.config.listen)
                if credentials is None
                else server.add_secure_port(self.config.listen, credentials)
            )
        except RuntimeError as exc:  # grpcio raises where it once returned port 0
            raise OSError(f"cannot bind {self.config.listen}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind {self.config.listen}")
        if self._metrics_endpoint is not None:
            try:
                self._metrics_endpoint.start()
            except OSError as exc:
                server.stop(0)
                raise OSError(
                    f"cannot serve metrics on {self.config.metrics_listen}: {exc}"
                ) from exc
        server.start()
        self._server = server
        self.port = port
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._recovery = threading.Thread(
            target=self._recover_forever, name="transfer-recovery", daemon=True
        )
        self._recovery.start()
        self._importing = threading.Thread(
            target=self._import_forever, name="registry-import", daemon=True
        )
        self._importing.start()
        if self.config.reconcile_interval_seconds > 0:
            self._reconciling = threading.Thread(
                target=self._reconcile_forever, name="reconcile", daemon=True
            )
            self._reconciling.start()
        host = self.config.listen.rsplit(":", 1)[0]
        _logger.info(
            "gateway_started",
            listen=f"{host}:{port}",
            database=self.engine.url.render_as_string(hide_password=True),
        )
        return port

    @property
    def metrics_port(self) -> int:
        """The metrics endpoint's bound port (0: none serving)."""
        return 0 if self._metrics_endpoint is None else self._metrics_endpoint.port

    def stop(self, grace_seconds: float | None = None) -> dict[str, int]:
        """Stop taking calls, let in-flight calls finish within the grace period, close.

        The stop ends within the grace period and a second, whatever the calls do.

        Returns:
            The calls, by method, whose handlers still ran when the stop gave up on them
            (empty when every call ended). They run on in their threads; a process that
            exits now leaves what they had not committed to recovery, as a crash does.
        """
        if self._server is None:
            return {}
        grace = self.config.grace_period_seconds if grace_seconds is None else grace_seconds
        deadline = time.monotonic() + grace + _HANDLER_END_SECONDS
        self._health.enter_graceful_shutdown()
        self._recovery_stop.set()
        self._server.stop(grace).wait()
        abandoned = self._in_flight.wait_until_idle(deadline - time.monotonic())
        # Accepted transfers settle on within what is left of the grace period; those
        # not started are let go for recovery (the next start, or another gateway).
        self.bridge.stop_settling(deadline - time.monotonic())
        for thread in (self._recovery, self._importing, self._reconciling):
            if thread is not None:
                # Daemon threads: one waiting on a registry is left, as a handler is.
                thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        self._server = None
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        self._probe.close()
        self.engine.dispose()
        if abandoned:
            _logger.warning("calls_abandoned", calls=abandoned)
        _logger.info("gateway_stopped")
        return abandoned

    def wait_background(self, timeout_s: float) -> bool:
        """After :meth:`stop`, wait up to ``timeout_s`` for the recovery, registry import
        and reconciliation loops to end; whether they all did.

        ``stop`` gives them what is left of its grace period: a pass under way then (one
        waiting on a registry, say) runs on in its thread. An embedder about to remove
        what that pass uses, as a test removes its database, waits here first.
        """
        deadline = time.monotonic() + timeout_s
        threads = (self._recovery, self._importing, self._reconciling)
        for thread in threads:
            if thread is not None:
                thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        return not any(t is not None and t.is_alive() for t in threads)

    def import_registries(self) -> dict[str, int]:
        """Record in the ledger the units each reachable registry issued; count per registry."""
        imported: dict[str, int] = {}
        for registry_id in self.adapters:
            try:
                imported[registry_id] = self.bridge.import_registry(registry_id)
            except CarbonlinkError as exc:
                _logger.warning("registry_import_skipped", registry=registry_id, error=str(exc))
        return imported

    def _import_forever(self) -> None:
        """Learn what the registries hold, every import interval after the start-up import."""
        while not self._recovery_stop.wait(self.config.registry_import_interval_seconds):
            try:
                imported = self.import_registries()
                if any(imported.values()):
                    _logger.info("registry_units_imported", blocks=imported)
            except Exception:
                # A database busy past its timeout: this look is lost, not the later ones.
                _logger.exception("registry_import_crashed")

    def _reconcile_forever(self) -> None:
        """Take part in the schedule of reconciliations shared by every gateway on the
        database: look a few times per interval whether a run is due, and run it if so."""
        interval = self.config.reconcile_interval_seconds
        while not self._recovery_stop.wait(interval / _SCHEDULE_LOOKS_PER_INTERVAL):
            try:
                self.reconcile_once()
            except Abandoned:
                return  # stopping: the read under way was cancelled
            except Exception:
                # A database busy past its timeout: this run is lost, not the later ones.
                _logger.exception("scheduled_reconcile_crashed")

    def reconcile_once(self) -> Reconciliation | None:
        """The scheduled reconciliation, if one is due (none of any gateway sharing the
        database started within the interval): logs the differences the scheduled run
        completed before it found too, and returns the run; None when none was due or
        another reconciliation is under way.

        Raises:
            Abandoned: The gateway began stopping during the run.
        """
        run = self._reconciler.run_scheduled(
            timedelta(seconds=self.config.reconcile_interval_seconds),
            still_wanted=lambda: not self._recovery_stop.is_set(),
        )
        if run is None or run.report is None:
            return None
        if run.persistent:
            _logger.error(
                "reconcile_differences_persist",
                reconciliation=run.id,
                count=len(run.persistent),
                registries=sorted({d.registry for d in run.persistent}),
                first=[d.detail for d in run.persistent[:5]],
            )
        else:
            _logger.info(
                "scheduled_reconcile_done",
                reconciliation=run.id,
                consistent=run.report.consistent,
                unreadable=[u.registry for u in run.report.unreadable],
            )
        return run

    def _recover_forever(self) -> None:
        """Resume unfinished transfers at start-up, then every recovery interval."""
        while True:
            try:
                self.bridge.resume_uses()
                outcome = self.bridge.resume_unfinished()
                # After the transfers: a migration step waits on its transfer finishing.
                self.migrations.resume()
                if outcome:
                    _logger.info(
                        "transfers_resumed", transfers={k: v.value for k, v in outcome.items()}
                    )
            except CarbonlinkError as exc:
                _logger.warning("transfer_recovery_failed", error=str(exc))
            except Exception:
                # A database busy past its timeout, a registry answering nonsense: this round
                # is lost, not the recovery loop, which would otherwise stop for good.
                _logger.exception("transfer_recovery_crashed")
            if self._recovery_stop.wait(self.config.recovery_interval_seconds):
                return

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()
