"""The typed port every registry adapter implements.

The bridge speaks only this interface; each adapter under ``adapters/<registry>/``
translates it to its registry's native API and back.  Every mutating request carries an
``operation_id``: a registry must apply an operation at most once, and answer a repeat of
the same operation id with the first result, so the bridge can retry freely after a
timeout or a crash.

Failures are typed (see ``registry_bridge.errors``): ``RegistryUnavailable`` is transient
and may be retried; ``RegistryRejected`` is the registry's final word (a retired unit, a
unit held by someone else, a duplicate issuance) and is never retried.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeAlias, runtime_checkable

from registry_bridge.errors import RegistryRejected
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock


class FinalizeDisposition(enum.StrEnum):
    """What finalizing a locked block does at the source registry."""

    IMMOBILIZE = "immobilize"
    """The origin block stays, immobilized, while a mirror exists elsewhere (Verra, 2022)."""
    EXPORT = "export"
    """The block leaves the registry: a venue position or a mirror being returned."""


@dataclass(frozen=True)
class RegistryHolding:
    """A block as one registry reports it."""

    block: UnitBlock
    account: str
    status: HoldingStatus
    lock_expires_at: datetime | None = None
    mirror_of: BlockId | None = None
    """For a mirror block issued by this registry: the origin block it stands for."""
    mirror_origin_registry: str = ""


@dataclass(frozen=True)
class ProgramTotal:
    """Units of one program in one status at one registry (ITL reconciliation, phase 1)."""

    program: Program
    status: HoldingStatus
    quantity: int


@dataclass(frozen=True)
class IssueRequest:
    """Issue a new block into an account (registry-side issuance, import, demo seeding)."""

    operation_id: str
    account: str
    block: UnitBlock


@dataclass(frozen=True)
class BlockStatusRequest:
    block: BlockId


@dataclass(frozen=True)
class LockRequest:
    """Lock ``block`` in ``account`` until ``expires_at``; a sub-range splits the holding."""

    operation_id: str
    account: str
    block: BlockId
    expires_at: datetime
    transfer: str
    """The transfer the lock is for, recorded by the registry for its audit trail."""


@dataclass(frozen=True)
class UnlockRequest:
    operation_id: str
    account: str
    block: BlockId
    transfer: str


@dataclass(frozen=True)
class FinalizeRequest:
    operation_id: str
    account: str
    block: BlockId
    disposition: FinalizeDisposition
    transfer: str
    destination_registry: str


@dataclass(frozen=True)
class CreditRequest:
    """Credit units arriving from another registry into ``account``.

    A registry that issues local serials answers with a mirror block of its own that
    references ``origin``; a venue that holds foreign units natively (Hong Kong, Macau)
    credits the origin block as it is.  Returning a mirror to the registry that issued
    it re-activates that registry's immobilized origin block instead.
    """

    operation_id: str
    account: str
    origin: UnitBlock
    origin_registry: str
    transfer: str
    deadline: datetime | None = None
    """A registry must refuse the credit after this instant (the source lock's expiry), so
    a transfer rolled back for an expired lock can never be credited late.  A transfer's
    later credits, sent once its first was applied (it can no longer roll back), carry the
    registries' own lock expiry instead, which is later."""


@dataclass(frozen=True)
class RetireRequest:
    operation_id: str
    account: str
    block: BlockId
    beneficiary: str
    claim_text: str


@dataclass(frozen=True)
class SurrenderRequest:
    operation_id: str
    account: str
    block: BlockId
    entity_id: str
    compliance_year: int


@dataclass(frozen=True)
class CancelRequest:
    operation_id: str
    account: str
    block: BlockId
    reason: str


StillWanted: TypeAlias = Callable[[], bool]
"""Whether whoever waits for a registry read is still there (a gRPC call's
``context.is_active``).  A read given one asks it before it starts and while the registry
has not answered; false stops the read: the adapter cancels its call, so the registry sees
it cancelled, and raises :class:`~registry_bridge.errors.Abandoned` (never retried).  Only
reads take one: a read stopped half-way changes nothing, a mutating call would leave the
registry's answer unknown."""


@dataclass(frozen=True)
class ListHoldingsRequest:
    """All holdings, or those of one account when ``account`` is set."""

    account: str = ""


@runtime_checkable
class RegistryPort(Protocol):
    """One registry, seen through the canonical operations the bridge needs."""

    @property
    def registry_id(self) -> str:
        """The registry's id, e.g. ``"verra"``."""
        ...

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """Issue a block; a duplicate or overlapping issuance is rejected."""
        ...

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """Every holding at this registry that overlaps the block."""
        ...

    def lock(self, request: LockRequest) -> RegistryHolding:
        """Lock units for a pending transfer (Verra: immobilize pending)."""
        ...

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """Release a lock: the units are active again."""
        ...

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """Complete the source side of a transfer: immobilize or export the locked units."""
        ...

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """Credit arriving units (a mirror block, or the origin block itself)."""
        ...

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """Retire units for a voluntary claim; terminal."""
        ...

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """Surrender units for compliance; terminal."""
        ...

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """Cancel units; terminal."""
        ...

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """Holdings at this registry (reconciliation phase 2).

        Raises:
            Abandoned: ``still_wanted`` answered false (see :data:`StillWanted`).
        """
        ...

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """Quantities per program and status (reconciliation phase 1).

        Raises:
            Abandoned: ``still_wanted`` answered false (see :data:`StillWanted`).
        """
        ...

    # -- batches of the settlement steps ------------------------------------------------
    #
    # A settlement batch of many transfers costs one call per registry per step instead
    # of one per transfer.  The contract, the same for all three:
    #
    # * one result per request, in request order: the holding the single call would have
    #   returned, or the ``RegistryRejected`` it would have raised (same code, same
    #   message), returned as a value and never raised;
    # * each item is applied on its own, exactly as its single call (same rules, same
    #   operation-id idempotency), in request order: an item sees the effects of the items
    #   before it, and a refused item never undoes or blocks another;
    # * ``RegistryUnavailable`` is raised when the call as a whole failed in transit: some
    #   items may have been applied, and repeating the whole batch is safe because every
    #   item carries its operation id (a repeat answers the first results);
    # * ``RegistryRejected`` is raised only when the registry refused the call as a whole
    #   (it answered the batch itself with an error), never for one item;
    # * an empty sequence returns an empty result without calling the registry;
    # * a batch larger than one call may carry is split into several calls by the adapter.

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Lock many blocks, each as :meth:`lock` would, in one call where possible.

        Args:
            requests: The locks, applied in this order.

        Returns:
            Per request, in order: the locked holding, or the refusal :meth:`lock` raises.

        Raises:
            RegistryUnavailable: The call failed in transit; repeat the whole batch.
            RegistryRejected: The registry refused the batch call as a whole.
        """
        ...

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Credit many arriving blocks, each as :meth:`credit` would, in one call where possible.

        Args:
            requests: The credits, applied in this order.

        Returns:
            Per request, in order: the credited holding, or the refusal :meth:`credit` raises.

        Raises:
            RegistryUnavailable: The call failed in transit; repeat the whole batch.
            RegistryRejected: The registry refused the batch call as a whole.
        """
        ...

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """Finalize many locked blocks, each as :meth:`finalize` would, in one call where possible.

        Args:
            requests: The finalizations, applied in this order.

        Returns:
            Per request, in order: the finalized holding, or the refusal :meth:`finalize`
            raises.

        Raises:
            RegistryUnavailable: The call failed in transit; repeat the whole batch.
            RegistryRejected: The registry refused the batch call as a whole.
        """
        ...
