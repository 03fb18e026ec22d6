"""Running an emulated registry: in-process for tests (port 0) or standalone for the CLI.

Each registry's ``emulator.py`` provides an :class:`EmulatorSpec`: which programs the
registry issues, what it does with arriving units, and how to add its native servicer to
a gRPC server.  :func:`start_emulator` runs one in the background and returns a handle
(``carbonlink emulate`` runs one until SIGTERM or SIGINT), serving next to the native API
the back office every emulator shares (:mod:`adapters.emulator_core.admin`: its accounts).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from adapters.emulator_core.admin import add_admin_servicer
from adapters.emulator_core.faults import FaultConfig, FaultInterceptor
from adapters.emulator_core.rejections import abort_rejected, native_rules
from adapters.emulator_core.store import (
    PAGE_SIZE_CAP,
    Clock,
    CreditMode,
    Store,
    utc_now,
)
from registry_bridge.bridge import CUSTODY_VENUES, venue_account
from registry_bridge.model import Program

_logger = structlog.get_logger(__name__)

__all__ = [
    "CallCounter",
    "EmulatorSpec",
    "RunningEmulator",
    "abort_rejected",
    "native_rules",
    "start_emulator",
]


# Seconds a stopping server lets in-flight calls finish.
_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class EmulatorSpec:
    """What distinguishes one emulated registry."""

    registry_id: str
    programs: frozenset[Program]
    credit_mode: CreditMode
    add_servicer: Callable[[grpc.Server, Store], None]
    """Adds the registry's native servicer, bound to ``store``, to a server."""

    def open_store(
        self, data_dir: Path | None, clock: Clock = utc_now, page_size_cap: int = PAGE_SIZE_CAP
    ) -> Store:
        """Open the registry's store: ``<data_dir>/<registry_id>.sqlite3`` or in memory,
        its :attr:`standing_accounts` open.

        Raises:
            ValueError: ``page_size_cap`` is below 1.
            OSError: ``data_dir`` cannot be made a directory, or its store cannot be
                opened (not an SQLite database, say), naming the path.
        """
        path = None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / f"{self.registry_id}.sqlite3"
        try:
            store = Store(
                self.registry_id, self.programs, self.credit_mode, path, clock, page_size_cap
            )
        except sqlite3.DatabaseError as exc:
            raise OSError(f"{path}: cannot open the {self.registry_id} store: {exc}") from exc
        try:
            store.open_accounts(self.standing_accounts)
        except BaseException:
            store.close()
            raise
        return store

    @property
    def standing_accounts(self) -> tuple[str, ...]:
        """The accounts the registry holds open from its first day: each custody venue's
        account here, which units returned to the venue come back into (the venue's
        clients' units sit there while the venue books them)."""
        return tuple(
            venue_account(venue) for venue in sorted(CUSTODY_VENUES) if venue != self.registry_id
        )


class CallCounter(grpc.ServerInterceptor):  # type: ignore[misc]
    # NOTE(registry-adapters): grpc ships no type stubs, so its base classes are Any.
    """Counts the calls an emulator receives, per native method.

    What a gateway operation costs a registry is part of its contract (reconciliation
    reads each registry a fixed number of times, however large the ledger), and only the
    registry sees every call, retries and refused ones included.  Counting happens before
    the call is dispatched, so it costs a lock and an increment, not a wrapped handler.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """Count the call under its method's name, then dispatch it unchanged."""
        name = str(handler_call_details.method).rsplit("/", 1)[-1]
        with self._lock:
            self._calls[name] += 1
        return continuation(handler_call_details)

    def snapshot(self) -> Counter[str]:
        """Calls received so far per method name (``ListAccountHoldings``), a copy."""
        with self._lock:
            return Counter(self._calls)


@dataclass
class RunningEmulator:
    """A started emulator: its address, its store, the calls it received, how to stop it."""

    spec: EmulatorSpec
    server: grpc.Server
    store: Store
    port: int
    host: str
    calls: CallCounter = field(default_factory=CallCounter)
    """The calls the emulator received (see :class:`CallCounter`)."""

    @property
    def target(self) -> str:
        """The ``host:port`` a client channel connects to."""
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = _GRACE_SECONDS) -> None:
        """Stop serving, let in-flight calls finish, and close the store."""
        self.server.stop(grace).wait()
        self.store.close()


def start_emulator(
    spec: EmulatorSpec,
    listen: str = "127.0.0.1:0",
    data_dir: Path | None = None,
    faults: FaultConfig | None = None,
    clock: Clock = utc_now,
    max_workers: int = 8,
    credentials: grpc.ServerCredentials | None = None,
    page_size_cap: int = PAGE_SIZE_CAP,
    accounts: Iterable[str] = (),
) -> RunningEmulator:
    """Start an emulator in the background.

    Args:
        spec: The registry to emulate.
        listen: ``HOST:PORT``; port 0 picks a free port (tests).
        data_dir: Directory of the persistent store; ``None`` keeps it in memory.
        faults: Faults to inject; none by default.
        clock: The registry's clock (tests inject one to expire locks).
        max_workers: Threads serving calls.
        credentials: TLS server credentials (requiring a client certificate, as a real
            registry does); ``None`` serves plaintext (tests of the adapters alone).
        page_size_cap: Rows per page of a holdings listing at most (tests lower it to
            page small listings).
        accounts: Accounts the registry holds open from the start (its seed data),
            besides those its store has opened already.

    Returns:
        The running emulator; call ``stop()`` when done.

    Raises:
        OSError: The address could not be bound.
        ValueError: ``page_size_cap`` is below 1.
        Rejection: ``INVALID_ACCOUNT``: an account of ``accounts`` cannot be opened.
    """
    store = spec.open_store(data_dir, clock, page_size_cap)
    try:
        store.open_accounts(accounts)
    except BaseException:
        store.close()
        raise
    calls = CallCounter()
    # Outermost, so a call a fault refuses is counted too: the client made it.
    interceptors: list[grpc.ServerInterceptor] = [calls]
    if faults is not None and faults.active:
        interceptors.append(FaultInterceptor(faults))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        # gRPC binds with SO_REUSEPORT by default: a second emulator on a served port
        # would start, and the two take turns answering, each from its own store.
        options=[("grpc.so_reuseport", 0)],
    )
    spec.add_servicer(server, store)
    # The registry's back office (its accounts), the same service at every emulator.
    add_admin_servicer(server, store)
    # The standard health service lets the gateway (and operators) probe the registry.
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = (
            server.add_insecure_port(listen)
            if credentials is None
            else server.add_secure_port(listen, credentials)
        )
    except RuntimeError as exc:  # grpcio raises where it once returned port 0
        store.close()
        raise OSError(f"could not listen on {listen}: {exc}") from exc
    if port == 0:
        store.close()
        raise OSError(f"could not listen on {listen}")
    server.start()
    host = listen.rsplit(":", 1)[0] or "127.0.0.1"
    _logger.info("emulator_started", registry=spec.registry_id, host=host, port=port)
    return RunningEmulator(spec, server, store, port, host, calls)
