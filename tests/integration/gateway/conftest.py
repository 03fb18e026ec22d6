"""A gateway wired to in-process registry emulators, over real gRPC sockets."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2_grpc
from adapters.emulator_core import FaultConfig, RunningEmulator, start_emulator, utc_now
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from adapters.serials import parse_serial
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.server import GatewayServer
from registry_bridge import db, invariants, ledger
from registry_bridge.bridge import venue_account
from registry_bridge.model import BlockId, UnitBlock
from registry_bridge.port import CreditRequest, IssueRequest, RegistryPort
from tests.integration.accounts import WELL_KNOWN_ACCOUNTS
from tests.integration.serving import BACKGROUND_END_S
from tests.loopback import ANY_PORT, HOST

WIRED = ("verra", "hkmo", "shenzhen")
VERRA_SERIAL = "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
READER_RETRY = RetryPolicy(attempts=12, initial_wait_s=0.001, max_wait_s=0.004, jitter_s=0.001)
"""Retries of the test's own adapters (seeding the registries, reading them back), which
only registries with faults ever need: many, and short, so that checking the registries
after a test neither gives up on a fault nor waits seconds between attempts."""

COUNTED_CALLS_TIMEOUT_S = 60.0
"""The gateway's registry deadline in tests that script a registry's refusals by call
number (``ScriptedRefusal``), which need each attempt of the gateway to meet exactly the
registry's call it made.  Under the default deadline (5 s) a stall of the test process
(a loaded machine, a full collection of a large heap) can end an attempt while the
registry still handles its call: that call takes the scripted refusal unseen, and the
retry meets the next call's answer.  No run that stalls this long passes anyway."""


@dataclass
class LinkedRegistries:
    """Running emulators and adapters to read their state through their own APIs."""

    emulators: dict[str, RunningEmulator]
    ports: dict[str, RegistryPort]

    def endpoints(self) -> tuple[RegistryEndpoint, ...]:
        return tuple(RegistryEndpoint(r, e.target) for r, e in self.emulators.items())

    def seed_venue(self, account: str = "hk-seller", serial: str = VERRA_SERIAL) -> UnitBlock:
        """Verra issues a block into the HK venue's Verra account; the venue books it."""
        block = parse_serial("verra", serial)
        seed = uuid.uuid4().hex
        self.ports["verra"].issue(IssueRequest(f"seed-{seed}", venue_account("hkmo"), block))
        self.ports["hkmo"].credit(CreditRequest(f"deposit-{seed}", account, block, "verra", "seed"))
        return block


def hold_calls(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, timeout_s: float
) -> tuple[threading.Event, threading.Event]:
    """Make ``target.name`` (say, an emulator store's ``totals``) wait before each call
    until the returned ``answer`` is set, for at most ``timeout_s``; ``asked`` is set at
    the first call.

    Returns:
        ``(asked, answer)``.
    """
    asked, answer = threading.Event(), threading.Event()
    original = getattr(target, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        asked.set()
        answer.wait(timeout=timeout_s)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, held)
    return asked, answer


def lose_answers(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str
) -> tuple[threading.Event, threading.Event]:
    """Make ``target.name`` (say, an emulator store's ``credit``) apply each call, then fail
    it, as a registry whose reply is lost after its commit would, until the returned
    ``answering`` is set; ``asked`` is set at the first call.  The gateway sees a transient
    failure (UNKNOWN) at once, with no deadline to wait for or to race.

    Returns:
        ``(asked, answering)``.
    """
    asked, answering = threading.Event(), threading.Event()
    original = getattr(target, name)

    def applied_unanswered(*args: Any, **kwargs: Any) -> Any:
        asked.set()
        result = original(*args, **kwargs)
        if not answering.is_set():
            raise RuntimeError(f"injected fault: {name} applied, its answer lost")
        return result

    monkeypatch.setattr(target, name, applied_unanswered)
    return asked, answering


@contextmanager
def linked_registries(
    faults: Mapping[str, FaultConfig] | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
    wired: Sequence[str] = WIRED,
) -> Iterator[LinkedRegistries]:
    """The ``wired`` emulators (each with its ``faults``, if any, and ``clock``), stopped
    afterwards."""
    faults = faults or {}
    emulators: dict[str, RunningEmulator] = {}
    try:
        for r in wired:
            emulators[r] = start_emulator(
                REGISTRIES[r].emulator(),
                listen=ANY_PORT,
                faults=faults.get(r),
                clock=clock,
                accounts=WELL_KNOWN_ACCOUNTS,
            )
        yield LinkedRegistries(
            emulators, {r: build_adapter(r, e.target, READER_RETRY) for r, e in emulators.items()}
        )
    finally:
        for emulator in emulators.values():
            emulator.stop()


@pytest.fixture
def registries() -> Iterator[LinkedRegistries]:
    with linked_registries() as linked:
        yield linked


@dataclass
class LiveGateway:
    server: GatewayServer
    channel: grpc.Channel
    stub: gateway_pb2_grpc.LinkageGatewayStub
    target: str


@contextmanager
def running_gateway(
    database_url: str,
    registries: LinkedRegistries,
    *,
    clock: Callable[[], datetime] = utc_now,
    **settings: Any,
) -> Iterator[LiveGateway]:
    """An insecure gateway on ``registries`` with ``settings`` over the defaults, on
    ``clock``; stopped afterwards (the secure path has its own fixtures, test_security*.py)."""
    config = GatewayConfig(
        listen=ANY_PORT,
        database_url=database_url,
        registries=registries.endpoints(),
        insecure=True,
        **settings,
    )
    server = GatewayServer(config, clock=clock)
    target = f"{HOST}:{server.start()}"
    channel = grpc.insecure_channel(target)
    try:
        yield LiveGateway(server, channel, gateway_pb2_grpc.LinkageGatewayStub(channel), target)
    finally:
        channel.close()
        server.stop(grace_seconds=0)
        # A recovery pass still under way would go on against a database the test then
        # drops, and log its failure into a later test's output.
        server.wait_background(BACKGROUND_END_S)


@pytest.fixture
def live_gateway(database_url: str, registries: LinkedRegistries) -> Iterator[LiveGateway]:
    registries.seed_venue()
    with running_gateway(database_url, registries) as gateway:
        yield gateway


def check_invariants(database_url: str, ports: Mapping[str, RegistryPort]) -> None:
    """Every invariant of the ledger at ``database_url`` holds against ``ports``, read
    through an engine of its own (the gateway that wrote it may be gone)."""
    engine = db.create_engine(database_url)
    try:
        with db.session_factory(engine)() as session:
            assert invariants.check_all(session, ports) == []
    finally:
        engine.dispose()


def live_rows_over(
    gateway: LiveGateway, origin: BlockId
) -> dict[tuple[str, str, int, int], tuple[str, str, str, bool]]:
    """The gateway's live ledger rows standing for ``origin``'s units, as
    ``invariants.replay`` rebuilds them from a trace: block -> (registry, account,
    status, mirror)."""
    with db.session_factory(gateway.server.engine)() as session:
        return {
            (
                r.block.id.program.value,
                r.block.id.serial_series,
                r.block.id.serial_start,
                r.block.id.serial_end,
            ): (r.registry, r.account, r.status.value, r.is_mirror)
            for r in ledger.all_live(session)
            if r.origin.overlaps(origin)
        }
