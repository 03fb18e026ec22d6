"""Fixtures of the registry contract suite: emulators in-process on port 0, and blocks.

Each registry gets blocks its own serial format can spell (the Verra and Gold Standard
adapters move blocks as serials), a foreign block to credit, and a clock the test moves.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from adapters import serials
from adapters.emulator_core import PAGE_SIZE_CAP, FaultConfig, RunningEmulator, start_emulator
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from registry_bridge.model import Authorization, CorrespondingAdjustment, Program, UnitBlock
from registry_bridge.port import RegistryPort
from tests.integration.accounts import WELL_KNOWN_ACCOUNTS
from tests.loopback import ANY_PORT

ALL_REGISTRIES = tuple(REGISTRIES)

# Fast backoff: the suite exercises retries, not waiting.
FAST_RETRY = RetryPolicy(attempts=25, initial_wait_s=0.001, max_wait_s=0.005, jitter_s=0.001)


class TestClock:
    """A registry clock the test moves forward."""

    __test__ = False

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


def _with_extras(block: UnitBlock) -> UnitBlock:
    return dataclasses.replace(
        block,
        region=block.region or "CN-GD",
        project_type="Energy industries",
        methodology="ACM0002",
        gwp_basis="AR5",
        labels=frozenset({"CCB"}),
    )


def _vcs(start: int, end: int) -> UnitBlock:
    return serials.parse_serial(
        "verra", f"19385-{start}-{end}-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
    )


def _gs(start: int, end: int) -> UnitBlock:
    return serials.parse_serial("gold-standard", f"GS1-1-KE-GS7495-16-2025-30645-{start}-{end}")


def _structured(program: Program, start: int, end: int) -> UnitBlock:
    return _with_extras(
        UnitBlock(
            id=dataclasses.replace(
                _vcs(1, 1).id, program=program, serial_start=start, serial_end=end
            ),
            project_id="P0042",
            country="CN",
            vintage_start=date(2024, 1, 1),
            vintage_end=date(2024, 12, 31),
            issuance_id="ISS-7",
            native_attributes=(("origin_note", "test"),),
        )
    )


def _itmo(start: int, end: int) -> UnitBlock:
    return dataclasses.replace(
        _structured(Program.BRI_ITMO, start, end),
        country="KE",
        authorization=Authorization(
            "LOA-KE-2025-3", "KE", frozenset({"ndc", "oimp"}), date(2025, 2, 1)
        ),
        corresponding_adjustment=CorrespondingAdjustment.PENDING,
    )


# How each registry's own units look: a maker of blocks over a serial range.
OWN_BLOCK: dict[str, Callable[[int, int], UnitBlock]] = {
    "verra": lambda s, e: _with_extras(_vcs(s, e)),
    "gold-standard": lambda s, e: _with_extras(_gs(s, e)),
    "national": lambda s, e: _structured(Program.CCER, s, e),
    "shenzhen": lambda s, e: _structured(Program.SZ_CI, s, e),
    "guangdong": lambda s, e: _structured(Program.GD_PHCER, s, e),
    "hkmo": lambda s, e: _with_extras(_vcs(s, e)),
    "bri": _itmo,
}

# A block of another program arriving from another registry.
FOREIGN_BLOCK: dict[str, tuple[str, UnitBlock]] = {
    "verra": ("gold-standard", _with_extras(_gs(1, 500))),
    "gold-standard": ("verra", _with_extras(_vcs(7001, 7500))),
    "national": ("verra", _with_extras(_vcs(7001, 7500))),
    "shenzhen": ("national", _structured(Program.CCER, 9001, 9500)),
    "guangdong": ("national", _structured(Program.CCER, 9001, 9500)),
    "hkmo": ("national", _structured(Program.CCER, 9001, 9500)),
    "bri": ("verra", _with_extras(_vcs(7001, 7500))),
}


@dataclasses.dataclass
class Harness:
    """One emulator and an adapter talking to it over a real socket."""

    registry_id: str
    running: RunningEmulator
    adapter: RegistryPort
    clock: TestClock
    _ids: Iterator[int] = dataclasses.field(default_factory=itertools.count)

    def op(self, label: str = "op") -> str:
        """A fresh operation id."""
        return f"{label}-{next(self._ids)}"

    def block(self, start: int, end: int) -> UnitBlock:
        """One of this registry's own blocks."""
        return OWN_BLOCK[self.registry_id](start, end)


def start_harness(
    registry_id: str,
    faults: FaultConfig | None = None,
    data_dir: Path | None = None,
    clock: TestClock | None = None,
    page_size_cap: int = PAGE_SIZE_CAP,
) -> Harness:
    """Start ``registry_id``'s emulator on port 0 and build its adapter."""
    clock = clock or TestClock()
    running = start_emulator(
        REGISTRIES[registry_id].emulator(),
        listen=ANY_PORT,
        data_dir=data_dir,
        faults=faults,
        clock=clock,
        page_size_cap=page_size_cap,
        accounts=WELL_KNOWN_ACCOUNTS,
    )
    adapter = build_adapter(registry_id, running.target, FAST_RETRY, timeout_s=5.0)
    return Harness(registry_id, running, adapter, clock)


@pytest.fixture(params=ALL_REGISTRIES)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A fault-free emulator of each registry, with its adapter."""
    started = start_harness(str(request.param))
    yield started
    started.running.stop(grace=None)


def later(harness: Harness, minutes: int = 30) -> datetime:
    """A lock expiry ``minutes`` after the registry's now."""
    return harness.clock() + timedelta(minutes=minutes)
