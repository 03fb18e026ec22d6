"""Rules: microseconds per decision for a typical transfer, every pack loaded.

The gate the bridge uses (``ComplianceRules``) loads every built-in pack once; a decision
is what the bridge asks at CHECKED: a one-unit Verra block leaving the Hong Kong venue
for Shenzhen, with the ledger row that holds it as the only known block.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from adapters.serials import parse_serial
from bench import stack
from bench.common import Result, Sizes, per_second, percentile, result
from compliance_rules import BUILTIN_PACKS, EntityYear, load_builtin
from registry_bridge.bridge import TransferCheck
from registry_bridge.ledger import LedgerHolding
from registry_bridge.model import HoldingStatus
from registry_bridge.rules_gate import ComplianceRules
from registry_bridge.transfers import AccountRef, TransferInstruction, TransferKind


class _NoEntities:
    """No covered entities: a transfer never asks for one."""

    def get(self, entity_id: str, jurisdiction: str, year: int) -> EntityYear | None:
        return None


def typical_check() -> TransferCheck:
    """The CHECKED-step question of a one-unit HK venue -> Shenzhen transfer."""
    seeded = parse_serial("verra", stack.VERRA_SERIAL)
    unit = seeded.with_range(stack.SERIAL_START, stack.SERIAL_START)
    holding = LedgerHolding(
        row_id=1,
        block=seeded,
        registry="hkmo",
        account="hk-seller",
        status=HoldingStatus.ACTIVE,
        is_mirror=False,
        origin=seeded.id,
    )
    instruction = TransferInstruction(
        AccountRef("hkmo", "hk-seller"), AccountRef("shenzhen", "buyer"), (unit.id,)
    )
    return TransferCheck(
        instruction, TransferKind.BRIDGE_OUT, (unit,), (holding,), datetime.now(UTC)
    )


def run(sizes: Sizes) -> list[Result]:
    """Decision time (gate and packs) and the one-off cost of loading every pack."""
    began = time.perf_counter()
    gate = ComplianceRules(_NoEntities())
    gate_load = time.perf_counter() - began
    loads = []
    for _ in range(sizes.runs):
        began = time.perf_counter()
        for name in BUILTIN_PACKS:
            load_builtin(name)
        loads.append((time.perf_counter() - began) * 1e3)
    check = typical_check()
    decision = gate.check_transfer(check)
    if not decision.allowed:
        raise RuntimeError(f"the typical transfer is refused: {decision.violations}")
    per_run: list[float] = []
    samples: list[float] = []
    for position in range(sizes.runs + 1):
        own: list[float] = []
        for _ in range(sizes.rules_decisions):
            began = time.perf_counter()
            gate.check_transfer(check)
            own.append((time.perf_counter() - began) * 1e6)
        if position:
            per_run.append(sum(own) / len(own))
            samples.extend(own)
    return [
        result(
            "rules",
            "check_transfer",
            "-",
            "us",
            per_run,
            packs=len(BUILTIN_PACKS),
            decisions_per_run=sizes.rules_decisions,
            p50_us=percentile(samples, 0.5),
            p99_us=percentile(samples, 0.99),
            decisions_per_s=per_second(1, statistics_mean(per_run) / 1e6),
            pack_versions=list(decision.pack_versions),
        ),
        result(
            "rules",
            "load_every_pack",
            "-",
            "ms",
            loads,
            packs=len(BUILTIN_PACKS),
            gate_construction_ms=gate_load * 1e3,
        ),
    ]


def statistics_mean(values: list[float]) -> float:
    """The arithmetic mean."""
    return sum(values) / len(values)
