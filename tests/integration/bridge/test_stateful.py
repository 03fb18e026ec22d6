"""A Hypothesis state machine over random issuances, transfers, splits, retirements and
returns across every registry, checking every invariant after every step.

The transfers are random on purpose, routes the bridge refuses and destinations that
refuse the units included: whatever is asked, each transfer must end in a final state
(no registry faults here), a refused one must change nothing, and the ledger must
reconcile with every registry, totals and blocks, after each step.  SQLite only: the
sequence, not the database, is what varies.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from adapters.registry import REGISTRIES
from registry_bridge import db, invariants
from registry_bridge.errors import FailedPrecondition, InvalidRequest
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.transfers import AccountRef, TransferInstruction, TransferState, UseRequest
from tests.integration.bridge.conftest import MAKERS, World, make_world

# Where new units may appear: (registry, program).  VCS and GS also at the HK/Macau venue.
ISSUERS = [
    ("verra", Program.VCS),
    ("hkmo", Program.VCS),
    ("gold-standard", Program.GS),
    ("hkmo", Program.GS),
    ("national", Program.CCER),
]
ACCOUNTS = ("a", "b")


def _covered_active(rows: list[LedgerHolding], registry: str, account: str, unit: BlockId) -> bool:
    """True when ``registry``/``account`` holds every serial of ``unit`` active."""
    spans = sorted(
        (
            max(r.block.id.serial_start, unit.serial_start),
            min(r.block.id.serial_end, unit.serial_end),
        )
        for r in rows
        if r.block.id.overlaps(unit)
        and r.registry == registry
        and r.account == account
        and r.status is HoldingStatus.ACTIVE
    )
    at = unit.serial_start
    for start, end in spans:
        if start > at:
            return False
        at = end + 1
    return at > unit.serial_end


def _active(rows: list[LedgerHolding], registry: str, account: str) -> int:
    """Active units of ``registry``/``account`` (a bridged origin stays put but is not active)."""
    return sum(
        r.block.quantity
        for r in rows
        if r.registry == registry and r.account == account and r.status is HoldingStatus.ACTIVE
    )


def _where(rows: list[LedgerHolding]) -> set[tuple[str, str, str, str, str, bool, int]]:
    """Every serial's (program, series, registry, account, status, mirror, serial)."""
    return {
        (
            r.block.id.program.value,
            r.block.id.serial_series,
            r.registry,
            r.account,
            r.status.value,
            r.is_mirror,
            serial,
        )
        for r in rows
        for serial in range(r.block.id.serial_start, r.block.id.serial_end + 1)
    }


@functools.cache
def _migrated_ledger() -> Path:
    """An SQLite ledger migrated to the head schema once, for every example to copy:
    migrating each example's own took about as long as the steps of a short example."""
    folder = Path(tempfile.mkdtemp(prefix="carbonlink-stateful-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "ledger.db"
    engine = db.create_engine(f"sqlite:///{path}")
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    return path


class BridgeMachine(RuleBasedStateMachine):
    """Random traffic through a Bridge over every registry emulator."""

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        ledger = Path(self._tmp.name) / "ledger.db"
        shutil.copyfile(_migrated_ledger(), ledger)
        self.world: World = make_world(f"sqlite:///{ledger}")
        self.next_serial: Counter[Program] = Counter()
        self.requests = 0
        with db.unit_of_work(self.world.sessions) as session:
            self.earlier = invariants.snapshot(session)

    def teardown(self) -> None:
        self.world.close()
        self._tmp.cleanup()

    def _request_id(self) -> str:
        self.requests += 1
        return f"req-{self.requests}"

    @rule(
        where=st.sampled_from(ISSUERS),
        account=st.sampled_from(ACCOUNTS),
        size=st.integers(1, 12),
    )
    def issue(self, where: tuple[str, Program], account: str, size: int) -> None:
        registry, program = where
        start = self.next_serial[program] + 1
        self.next_serial[program] += size
        self.world.seed(registry, account, MAKERS[program](start, start + size - 1))

    @precondition(lambda self: bool(self.world.live()))
    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        rows = self.world.live()
        row = data.draw(st.sampled_from(rows), label="row")
        block = row.block.id
        start = data.draw(st.integers(block.serial_start, block.serial_end), label="start")
        end = data.draw(st.integers(start, block.serial_end), label="end")
        unit = BlockId(block.program, block.serial_series, start, end)
        destination = AccountRef(
            data.draw(st.sampled_from(sorted(REGISTRIES)), label="to"),
            data.draw(st.sampled_from(ACCOUNTS), label="account"),
        )
        source = AccountRef(row.registry, row.account)
        instruction = TransferInstruction(source, destination, (unit,))
        if destination.registry == source.registry:
            try:
                self.world.bridge.submit(self._request_id(), instruction)
            except InvalidRequest:
                return
            raise AssertionError("a transfer inside one registry must be refused")
        movable = _covered_active(rows, source.registry, source.account, unit)
        before_source = _active(rows, source.registry, source.account)
        before_destination = _active(rows, destination.registry, destination.account)
        transfer = self.world.bridge.submit(self._request_id(), instruction)
        assert transfer.state.is_final, (transfer.state, transfer.failure_reason)
        if not movable:
            assert transfer.state is TransferState.REJECTED, transfer
        after = self.world.live()
        if transfer.state is TransferState.COMPLETED:
            # The moved units leave the source's active units and arrive, active.
            assert _active(after, destination.registry, destination.account) == (
                before_destination + unit.quantity
            )
            assert _active(after, source.registry, source.account) == before_source - unit.quantity
        else:
            # Splitting a block is no change of where units are; anything else is.
            assert _where(after) == _where(rows), (
                f"a {transfer.state.value} transfer changed the ledger: {transfer.failure_reason}"
            )

    @precondition(lambda self: bool(self.world.live()))
    @rule(data=st.data())
    def retire(self, data: st.DataObject) -> None:
        rows = self.world.live()
        row = data.draw(st.sampled_from(rows), label="row")
        block = row.block.id
        start = data.draw(st.integers(block.serial_start, block.serial_end), label="start")
        end = data.draw(st.integers(start, block.serial_end), label="end")
        unit = BlockId(block.program, block.serial_series, start, end)
        owner = AccountRef(row.registry, row.account)
        request = UseRequest("retirement", owner, (unit,), beneficiary="ACME", claim_text="2026")
        if _covered_active(rows, owner.registry, owner.account, unit):
            assert self.world.bridge.use(self._request_id(), request).state == "completed"
        else:
            try:
                self.world.bridge.use(self._request_id(), request)
            except FailedPrecondition:
                return
            raise AssertionError(f"retired units that are not active: {row}")

    @invariant()
    def every_invariant_holds(self) -> None:
        assert self.world.violations() == []
        with db.unit_of_work(self.world.sessions) as session:
            assert invariants.check_unchanged(session, self.earlier) == []
            self.earlier = invariants.snapshot(session)


BridgeMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBridgeStateMachine = BridgeMachine.TestCase
