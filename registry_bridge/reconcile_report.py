"""A reconciliation's report: what it found, and its stored form.

Apart from the reconciliation itself (:mod:`registry_bridge.reconcile`), which reads the
bridge's model of the registries, so that the records of runs and the units they hold
(:mod:`registry_bridge.reconciliations`) can be read by the bridge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry_bridge.block_json import block_id_from_dict, block_id_to_dict
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId, HoldingStatus, Program

TOTALS = "totals"
UNIT_BLOCKS = "unit_blocks"
TRAIL = "trail"
COMPLETED = "completed"


@dataclass(frozen=True)
class Discrepancy:
    """One difference between the ledger and a registry."""

    registry: str
    phase: str
    """``totals``, ``unit_blocks`` or ``trail``."""
    detail: str
    program: Program | None = None
    status: HoldingStatus | None = None
    gateway_quantity: int = 0
    registry_quantity: int = 0
    block: BlockId | None = None
    differing: tuple[BlockId, ...] = ()
    """Of a ledger block a registry does not show as the ledger has it: the serials that
    differ (the rest of ``block`` agrees). Empty: the whole of ``block``."""

    @property
    def differing_blocks(self) -> tuple[BlockId, ...]:
        """The units this difference is about (none for a difference of totals)."""
        if self.differing:
            return self.differing
        return () if self.block is None else (self.block,)


@dataclass(frozen=True)
class UnreadableRegistry:
    """A registry a reconciliation could not read: nothing is said of whether it agrees."""

    registry: str
    error: RegistryUnavailable | RegistryRejected
    """Why: the read's last failure after the adapter's retries, or the registry's refusal."""


@dataclass(frozen=True)
class ReconcileReport:
    """The outcome of a reconciliation."""

    phase: str
    """The last phase reached over the registries read: ``completed`` when none of them
    differs, else ``trail``."""
    discrepancies: tuple[Discrepancy, ...]
    unreadable: tuple[UnreadableRegistry, ...] = ()
    """The registries that could not be read, in the order they were asked."""

    @property
    def consistent(self) -> bool:
        """True when every registry was read and agrees with the ledger."""
        return not self.discrepancies and not self.unreadable


def _discrepancy_json(discrepancy: Discrepancy, persistent: bool) -> dict[str, Any]:
    return {
        "registry": discrepancy.registry,
        "phase": discrepancy.phase,
        "detail": discrepancy.detail,
        "program": None if discrepancy.program is None else discrepancy.program.value,
        "status": None if discrepancy.status is None else discrepancy.status.value,
        "gateway_quantity": discrepancy.gateway_quantity,
        "registry_quantity": discrepancy.registry_quantity,
        "block": None if discrepancy.block is None else block_id_to_dict(discrepancy.block),
        "differing": [block_id_to_dict(b) for b in discrepancy.differing],
        "persistent": persistent,
    }


def _discrepancy_from_json(data: dict[str, Any]) -> Discrepancy:
    return Discrepancy(
        registry=data["registry"],
        phase=data["phase"],
        detail=data["detail"],
        program=None if data["program"] is None else Program(data["program"]),
        status=None if data["status"] is None else HoldingStatus(data["status"]),
        gateway_quantity=int(data["gateway_quantity"]),
        registry_quantity=int(data["registry_quantity"]),
        block=None if data["block"] is None else block_id_from_dict(data["block"]),
        differing=tuple(block_id_from_dict(b) for b in data["differing"]),
    )


def _unreadable_json(unreadable: UnreadableRegistry) -> dict[str, Any]:
    error = unreadable.error
    if isinstance(error, RegistryRejected):
        return {
            "registry": unreadable.registry,
            "error": "rejected",
            "code": error.code,
            "message": str(error),
        }
    return {"registry": unreadable.registry, "error": "unavailable", "message": str(error)}


def _unreadable_from_json(data: dict[str, Any]) -> UnreadableRegistry:
    registry = data["registry"]
    error: RegistryUnavailable | RegistryRejected
    if data["error"] == "rejected":
        error = RegistryRejected(registry, data["code"], "")
    else:
        error = RegistryUnavailable(registry, "")
    # The recorded message is the error's whole text, as it was first said.
    error.args = (data["message"],)
    return UnreadableRegistry(registry, error)


def report_json(report: ReconcileReport, persistent: Sequence[Discrepancy] = ()) -> str:
    """A report as canonical JSON, each difference marked persistent or not."""
    marked = set(persistent)
    return json.dumps(
        {
            "phase": report.phase,
            "discrepancies": [_discrepancy_json(d, d in marked) for d in report.discrepancies],
            "unreadable": [_unreadable_json(u) for u in report.unreadable],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def report_from_json(text: str) -> tuple[ReconcileReport, tuple[Discrepancy, ...]]:
    """The report of :func:`report_json`, and the differences marked persistent."""
    data = json.loads(text)
    found = [(_discrepancy_from_json(d), bool(d["persistent"])) for d in data["discrepancies"]]
    report = ReconcileReport(
        data["phase"],
        tuple(d for d, _ in found),
        tuple(_unreadable_from_json(u) for u in data["unreadable"]),
    )
    return report, tuple(d for d, persistent in found if persistent)
