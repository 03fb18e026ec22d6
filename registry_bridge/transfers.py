"""Transfers, retirements and surrenders as domain values."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from registry_bridge.block_json import block_id_from_dict, block_id_to_dict
from registry_bridge.model import BlockId, UnitBlock


class TransferState(enum.StrEnum):
    """After the IETF SATP stages and the Kyoto ITL flow (DESIGN.md)."""

    PROPOSED = "PROPOSED"
    CHECKED = "CHECKED"
    SOURCE_LOCKED = "SOURCE_LOCKED"
    DESTINATION_CREDITED = "DESTINATION_CREDITED"
    SOURCE_FINALIZED = "SOURCE_FINALIZED"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def is_final(self) -> bool:
        """A final transfer never changes again."""
        return self in (TransferState.COMPLETED, TransferState.REJECTED, TransferState.ROLLED_BACK)


UNFINISHED_TRANSFER_STATES = tuple(s.value for s in TransferState if not s.is_final)
"""The states a transfer may still leave, as stored.  A read of the unfinished transfers
asks for these, each a seek of ``ix_transfers_state_created``: "not a final state" is a
condition no index bounds, and read every transfer ever made."""


class UseState(enum.StrEnum):
    """Where a retirement or surrender stands (``unit_uses.state``)."""

    PENDING = "pending"
    """Recorded, its legs not all done: a registry has not answered yet."""
    COMPLETED = "completed"
    REJECTED = "rejected"
    """Refused before any leg was done (a double use, a registry's refusal of the first)."""
    FAILED = "failed"
    """A registry refused a leg after earlier ones were done, which cannot be undone; its
    units are held (``bridge.HELD_BY_FAILED_USE``) until an operator resolves it."""
    RESOLVED = "resolved"
    """A failed use an operator settled by hand: its remaining legs were done at their
    registries outside the gateway (``Bridge.resolve_use``).  Final; its units are used."""


class UseLegState(enum.StrEnum):
    """Where one registry leg of a use stands."""

    OPEN = "open"
    """Not done yet (the use is pending), or never attempted (an earlier leg was refused)."""
    DONE = "done"
    """Applied by its registry through the gateway."""
    REFUSED = "refused"
    """Refused by its registry: the leg a failed use stopped at."""
    SETTLED = "settled"
    """Settled at its registry outside the gateway, as an operator recorded it."""


class UseResolutionAction(enum.StrEnum):
    """How an operator settles a failed use (``Bridge.resolve_use``)."""

    RETRY = "retry"
    """Ask the refusing registry again, from the refused leg on."""
    SETTLE_MANUALLY = "settle_manually"
    """Record that the remaining legs were settled at their registries outside the gateway."""


class TransferKind(enum.StrEnum):
    BRIDGE_OUT = "bridge_out"
    """Origin units leave for a registry that issues a mirror of them."""
    RETURN = "return"
    """A mirror goes back to its origin side: the origin registry or a custody venue."""


INTENDED_USES = frozenset({"holding", "compliance", "voluntary_retirement", "listing", "corsia"})
"""The intended uses a transfer instruction may name."""


@dataclass(frozen=True)
class AccountRef:
    """A registry account."""

    registry: str
    account: str


@dataclass(frozen=True)
class Settlement:
    """The price leg recorded with a venue settlement (HKD, RMB, MOP)."""

    currency: str
    amount: Decimal
    trade_reference: str = ""


@dataclass(frozen=True)
class TransferInstruction:
    """What a transfer asks for, with units already resolved to canonical block ids."""

    source: AccountRef
    destination: AccountRef
    units: tuple[BlockId, ...]
    intended_use: str = "holding"
    settlement: Settlement | None = None
    compliance_year: int = 0
    """For intended use ``"corsia"``: the year of the offsetting obligation the units are
    for, whose CORSIA rules decide the transfer; 0 = none (decided on the transfer's day)."""

    def canonical(self) -> dict[str, Any]:
        """The instruction as plain data, for hashing and storage.

        ``compliance_year`` appears only when set: an instruction without one keeps the form
        (and so the request digest) it had before the field existed.
        """
        body: dict[str, Any] = {
            "source": {"registry": self.source.registry, "account": self.source.account},
            "destination": {
                "registry": self.destination.registry,
                "account": self.destination.account,
            },
            "units": [block_id_to_dict(u) for u in self.units],
            "intended_use": self.intended_use,
            "settlement": None
            if self.settlement is None
            else {
                "currency": self.settlement.currency,
                "amount": str(self.settlement.amount),
                "trade_reference": self.settlement.trade_reference,
            },
        }
        if self.compliance_year:
            body["compliance_year"] = self.compliance_year
        return body


CORSIA_FIRST_YEAR = 2021
"""CORSIA's first year (pilot phase 2021-2023, RULES-REFERENCE §6): no obligation is older."""
LAST_COMPLIANCE_YEAR = 2100
"""The latest compliance year accepted: a later one is a typo, not an obligation."""


def compliance_year_problem(intended_use: str, compliance_year: int) -> str | None:
    """What is wrong with a transfer instruction's compliance year, if anything.

    One rule for the gateway's edge (which names the field in its request) and the bridge.

    Args:
        intended_use: The instruction's intended use.
        compliance_year: Its compliance year, 0 when none.

    Returns:
        The problem, worded for the ``compliance_year`` field, or None when it is fine.
    """
    if compliance_year == 0:
        return None
    if intended_use != "corsia":
        return (
            f"names a compliance year ({compliance_year}) only for intended use 'corsia', "
            f"not {intended_use!r}"
        )
    if not CORSIA_FIRST_YEAR <= compliance_year <= LAST_COMPLIANCE_YEAR:
        return (
            f"{compliance_year} is not a CORSIA compliance year: it must be between "
            f"{CORSIA_FIRST_YEAR} and {LAST_COMPLIANCE_YEAR}, or 0 for none"
        )
    return None


def body_digest(body: dict[str, Any]) -> bytes:
    """SHA-256 of a request body's canonical JSON: the idempotency fingerprint."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()


@dataclass(frozen=True)
class RuleViolation:
    """One violated rule, as the rules engine reported it."""

    rule_id: str
    message: str
    source: str
    blocks: tuple[BlockId, ...] = ()
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RulesDecision:
    """The rules engine's decision: allowed, or every violation."""

    allowed: bool
    violations: tuple[RuleViolation, ...] = ()
    pack_versions: tuple[str, ...] = ()
    deferred_rules: tuple[str, ...] = ()
    """Rules left to the later surrender (decided on the entity's compliance year)."""


def violation_to_dict(violation: RuleViolation) -> dict[str, Any]:
    """A violation as stored (transfers' decisions, migration plans, listing outcomes)."""
    return {
        "rule_id": violation.rule_id,
        "message": violation.message,
        "source": violation.source,
        "blocks": [block_id_to_dict(b) for b in violation.blocks],
        "details": [list(d) for d in violation.details],
    }


def violation_from_dict(data: dict[str, Any]) -> RuleViolation:
    """The violation of :func:`violation_to_dict`."""
    return RuleViolation(
        rule_id=data["rule_id"],
        message=data["message"],
        source=data["source"],
        blocks=tuple(block_id_from_dict(b) for b in data["blocks"]),
        details=tuple((str(k), str(v)) for k, v in data["details"]),
    )


def decision_to_dict(decision: RulesDecision) -> dict[str, Any]:
    """A decision as stored."""
    return {
        "allowed": decision.allowed,
        "pack_versions": list(decision.pack_versions),
        "deferred_rules": list(decision.deferred_rules),
        "violations": [violation_to_dict(v) for v in decision.violations],
    }


def decision_from_dict(data: dict[str, Any]) -> RulesDecision:
    """The decision of :func:`decision_to_dict`."""
    return RulesDecision(
        allowed=data["allowed"],
        pack_versions=tuple(data["pack_versions"]),
        # Decisions recorded before deferred rules were reported carry none.
        deferred_rules=tuple(data.get("deferred_rules", ())),
        violations=tuple(violation_from_dict(v) for v in data["violations"]),
    )


@dataclass(frozen=True)
class TransferStep:
    state: TransferState
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class Transfer:
    """A transfer as clients see it."""

    transfer_id: str
    request_id: str
    instruction: TransferInstruction
    state: TransferState
    decision: RulesDecision | None
    history: tuple[TransferStep, ...]
    failure_reason: str
    credited_blocks: tuple[UnitBlock, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class UseRequest:
    """A retirement (voluntary) or surrender (compliance) of some units."""

    kind: str
    """``retirement`` or ``surrender``."""
    account: AccountRef
    units: tuple[BlockId, ...]
    beneficiary: str = ""
    claim_text: str = ""
    entity_id: str = ""
    compliance_year: int = 0
    jurisdiction: str = ""

    def canonical(self) -> dict[str, Any]:
        """The request as plain data, for hashing and storage."""
        return {
            "kind": self.kind,
            "account": {"registry": self.account.registry, "account": self.account.account},
            "units": [block_id_to_dict(u) for u in self.units],
            "beneficiary": self.beneficiary,
            "claim_text": self.claim_text,
            "entity_id": self.entity_id,
            "compliance_year": self.compliance_year,
            "jurisdiction": self.jurisdiction,
        }


@dataclass(frozen=True)
class UnitUse:
    """A retirement or surrender, wherever it stands."""

    use_id: str
    request_id: str
    request: UseRequest
    state: UseState
    blocks: tuple[UnitBlock, ...]
    decision: RulesDecision | None
    created_at: datetime
    legs: tuple[UseLeg, ...] = field(default=())
    """Its registry legs, in the order they run (the origin registry's first)."""
    refusal: str = ""
    """Why a rejected or failed use was refused, as recorded when it ended; "" otherwise."""
    resolutions: tuple[UseResolution, ...] = field(default=())
    """Each resolution an operator asked for, oldest first."""


@dataclass(frozen=True)
class UseLeg:
    """One registry's part of a use."""

    registry: str
    account: str
    block: BlockId
    """The units, as ``registry`` holds them."""
    holder: bool
    """The holder's own units; False for the origin units retired behind a mirror or a
    custody venue's position."""
    state: UseLegState
    refusal_code: str = ""
    """For the leg a registry refused (kept after it is retried or settled): its code."""
    refusal: str = ""
    """... and its words."""


@dataclass(frozen=True)
class UseResolution:
    """One resolution of a failed use, as recorded."""

    request_id: str
    action: UseResolutionAction
    reason: str
    resolved_by: str
    """The caller who asked (the token subject; "" on an insecure gateway)."""
    at: datetime
    outcome: UseState
    """Where the use stands after it: pending while a retry is under way, then completed
    or failed (a retry refused again); resolved for a settlement."""
    refusal: str = ""
    """For a retry refused again: the new refusal."""
