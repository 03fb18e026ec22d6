"""Fixtures of the bridge tests: every registry emulator in-process over real gRPC, a ledger
database of each kind, and a :class:`~registry_bridge.bridge.Bridge` over both.

One clock drives the gateway and every emulator, so a test that moves it expires the
gateway's locks and the registries' together, as wall time would.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import grpc
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from adapters import serials
from adapters.emulator_core import FaultConfig, RunningEmulator, start_emulator
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from registry_bridge import db, invariants, ledger
from registry_bridge.bridge import (
    CUSTODY_VENUES,
    ORIGIN_REGISTRY,
    Bridge,
    TransferCheck,
    UseCheck,
    venue_account,
)
from registry_bridge.errors import RegistryUnavailable
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.port import (
    BlockStatusRequest,
    CreditRequest,
    IssueRequest,
    RegistryPort,
)
from registry_bridge.transfers import RulesDecision
from tests.integration.accounts import WELL_KNOWN_ACCOUNTS
from tests.loopback import ANY_PORT

# Fast backoff: the tests exercise retries, not waiting.  Enough attempts that a fault
# fraction of 0.3 almost never exhausts them, few enough that a registry that is down
# answers RegistryUnavailable quickly.
FAST_RETRY = RetryPolicy(attempts=12, initial_wait_s=0.001, max_wait_s=0.004, jitter_s=0.001)


class PermitAllRules:
    """Allows every transfer and use: these tests exercise the state machine, not the rules."""

    def check_transfer(self, check: TransferCheck) -> RulesDecision:
        """Allow."""
        return RulesDecision(allowed=True)

    def check_use(self, check: UseCheck) -> RulesDecision:
        """Allow."""
        return RulesDecision(allowed=True)


class SharedClock:
    """The one clock of the gateway and the emulators; tests move it forward."""

    def __init__(self) -> None:
        self._now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward."""
        with self._lock:
            self._now += delta


def vcs_block(start: int, end: int) -> UnitBlock:
    """A Verra VCU block over ``start..end``."""
    return serials.parse_serial(
        "verra", f"19385-{start}-{end}-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
    )


def gs_block(start: int, end: int) -> UnitBlock:
    """A Gold Standard VER block over ``start..end`` (series of issuance batch 30645)."""
    return serials.parse_serial("gold-standard", f"GS1-1-KE-GS7495-16-2025-30645-{start}-{end}")


def ccer_block(start: int, end: int) -> UnitBlock:
    """A CCER block over ``start..end``."""
    return UnitBlock(
        id=BlockId(Program.CCER, "", start, end),
        project_id="CCER-P0042",
        country="CN",
        vintage_start=date(2024, 1, 1),
        vintage_end=date(2024, 12, 31),
        region="CN-GD",
        issuance_id="ISS-7",
    )


MAKERS = {Program.VCS: vcs_block, Program.GS: gs_block, Program.CCER: ccer_block}


@dataclass
class World:
    """The registries, the ledger and the bridge of one test."""

    bridge: Bridge
    engine: Engine
    sessions: sessionmaker[Session]
    ports: dict[str, RegistryPort]
    emulators: dict[str, RunningEmulator]
    clock: SharedClock
    faults: Mapping[str, FaultConfig]
    down: set[str] = field(default_factory=set)
    """Registries taken down by the test."""
    _ops: Iterator[int] = field(default_factory=itertools.count)

    def op(self, label: str) -> str:
        """A fresh operation id for seeding the registries."""
        return f"seed-{label}-{next(self._ops)}"

    def seed(self, registry: str, account: str, block: UnitBlock) -> None:
        """Put ``block`` at ``registry``/``account`` in the registries and the ledger.

        At the block's origin registry it is issued; at a custody venue it is issued at
        the origin registry into the venue's account and deposited at the venue.
        """
        origin = ORIGIN_REGISTRY[block.program]
        if registry == origin:
            self.ports[origin].issue(IssueRequest(self.op("issue"), account, block))
        else:
            assert registry in CUSTODY_VENUES, f"{registry} holds no origin units"
            self.ports[origin].issue(IssueRequest(self.op("issue"), venue_account(registry), block))
            self.ports[registry].credit(
                CreditRequest(self.op("deposit"), account, block, origin, "seed")
            )
        with db.unit_of_work(self.sessions) as session:
            ledger.issue(session, registry, account, block, self.clock())

    def violations(self, *, registries: bool = True, blocks: bool = True) -> list[str]:
        """Every broken invariant now (reconciliation too, unless told otherwise)."""
        with db.unit_of_work(self.sessions) as session:
            problems = invariants.check_ledger(session)
            if registries:
                problems += invariants.check_registries(session, self.ports, blocks=blocks)
        return problems

    def at_registry(self, registry: str, block: BlockId) -> list[tuple[int, int, str, str]]:
        """(start, end, account, status) of every holding ``registry`` reports over ``block``."""
        return sorted(
            (h.block.id.serial_start, h.block.id.serial_end, h.account, h.status.value)
            for h in self.ports[registry].block_status(BlockStatusRequest(block))
        )

    def live(self) -> list[ledger.LedgerHolding]:
        """Every live ledger row."""
        with db.unit_of_work(self.sessions) as session:
            return ledger.all_live(session)

    def statuses(self, registry: str, account: str, block: BlockId) -> set[HoldingStatus]:
        """Statuses of the live ledger rows of ``registry``/``account`` over ``block``."""
        with db.unit_of_work(self.sessions) as session:
            return {h.status for h in ledger.live_at(session, registry, account, block)}

    def take_down(self, registry: str) -> None:
        """Stop serving ``registry`` (its store survives): calls fail UNAVAILABLE."""
        self.emulators[registry].server.stop(None).wait()
        self.down.add(registry)

    def bring_up(self, registry: str) -> None:
        """Serve ``registry`` again on the same port, from the same store."""
        old = self.emulators[registry]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        old.spec.add_servicer(server, old.store)
        if server.add_insecure_port(old.target) == 0:
            raise OSError(f"cannot listen on {old.target} again")
        server.start()
        self.emulators[registry] = RunningEmulator(old.spec, server, old.store, old.port, old.host)
        self.down.discard(registry)
        # The adapter's channel waits out gRPC's reconnect backoff (about a second) before
        # it dials again; wait for it here so the test's next call meets a live registry.
        deadline = time.monotonic() + 15
        while True:
            try:
                self.ports[registry].totals()
                return
            except RegistryUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        """Stop every emulator and release the database."""
        for registry, running in self.emulators.items():
            if registry in self.down:
                running.store.close()
            else:
                running.stop(grace=None)
        self.engine.dispose()


def make_world(
    database_url: str,
    faults: Mapping[str, FaultConfig] | None = None,
    *,
    lock_ttl: timedelta = timedelta(minutes=5),
    registries: tuple[str, ...] | None = None,
) -> World:
    """Start the emulators (with ``faults`` per registry), migrate the database, build a bridge."""
    clock = SharedClock()
    faults = dict(faults or {})
    emulators: dict[str, RunningEmulator] = {}
    try:
        for registry_id in registries or tuple(REGISTRIES):
            emulators[registry_id] = start_emulator(
                REGISTRIES[registry_id].emulator(),
                listen=ANY_PORT,
                faults=faults.get(registry_id),
                clock=clock,
                accounts=WELL_KNOWN_ACCOUNTS,
            )
    except BaseException:
        for running in emulators.values():
            running.stop(grace=None)
        raise
    ports = {
        registry_id: build_adapter(registry_id, running.target, FAST_RETRY, timeout_s=5.0)
        for registry_id, running in emulators.items()
    }
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    bridge = Bridge(sessions, ports, PermitAllRules(), clock=clock, lock_ttl=lock_ttl)
    return World(bridge, engine, sessions, ports, emulators, clock, faults)


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    """A fault-free world on each database kind."""
    built = make_world(database_url)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """An SQLite database only (tests too slow or too random to repeat on PostgreSQL)."""
    return f"sqlite:///{tmp_path}/carbonlink.db"
