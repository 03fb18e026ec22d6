"""carbonlink's error tree: one root, one subclass per failure domain.

Every layer raises these (chained with ``raise ... from``) and never lets a raw library
error escape; the gateway maps them to gRPC status codes in one table
(``gateway.error_mapping``).  They live here, not in the gateway, because the bridge and
the adapters raise them and the dependency direction is gateway -> adapters ->
registry_bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``instruction.source.registry``) and why."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition: its kind (``RULE``, ``LOCK``...), subject and why."""

    type: str
    subject: str
    description: str


class CarbonlinkError(Exception):
    """Root of every error carbonlink raises on purpose."""


class InvalidRequest(CarbonlinkError):
    """The request is malformed; nothing was changed."""

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidRequest:
        """An error about a single field, with the message naming it."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFound(CarbonlinkError):
    """The named resource does not exist."""

    def __init__(self, resource: str) -> None:
        super().__init__(f"{resource} not found")
        self.resource = resource


class RequestIdConflict(CarbonlinkError):
    """A request id was reused with a different request body."""


class FailedPrecondition(CarbonlinkError):
    """The request is well formed but the system is not in a state that allows it."""

    def __init__(self, message: str, violations: Sequence[PreconditionViolation] = ()) -> None:
        super().__init__(message)
        self.violations: tuple[PreconditionViolation, ...] = tuple(violations)


class LedgerConflict(CarbonlinkError):
    """A concurrent change won a race for the same units; the caller may retry."""


class TransactionAborted(LedgerConflict):
    """The database aborted a transaction to break a deadlock or a serialization conflict.

    Nothing the transaction did was kept, and running it again is safe.  A LedgerConflict,
    so every caller that retries a lost race retries this too.
    """


class RegistryUnavailable(CarbonlinkError):
    """A registry could not be reached or timed out: transient, safe to retry."""

    def __init__(self, registry: str, message: str) -> None:
        super().__init__(f"registry {registry} unavailable: {message}")
        self.registry = registry


class DatabaseUnavailable(CarbonlinkError):
    """The database could not be reached, or dropped the connection, mid-request.

    Transient: what the request committed before stays committed, a transfer left
    unfinished is resumed by the recovery loop, and a retry with the same request id is
    answered as the first try would have been.
    """


ACCOUNT_NOT_OPEN = "ACCOUNT_NOT_OPEN"
"""The code of a :class:`RegistryRejected` for units sent to an account the registry has
not opened (a mistyped destination, say): final, as any refusal is, so a transfer
refused so at its destination rolls back."""


class RegistryRejected(CarbonlinkError):
    """A registry refused an operation for good (e.g. the units are retired)."""

    def __init__(self, registry: str, code: str, message: str) -> None:
        super().__init__(f"registry {registry} rejected the operation ({code}): {message}")
        self.registry = registry
        self.code = code


class Abandoned(CarbonlinkError):
    """Work stopped part-way because no one waits for it any more.

    Raised by long read-only work (a reconciliation) when its caller cancelled, its
    deadline passed, or the server is stopping: going on would only keep a worker thread,
    and the server's shutdown, waiting on registries for an answer no one will read.
    """


class Unauthenticated(CarbonlinkError):
    """The caller's credentials are missing or invalid."""


class PermissionDenied(CarbonlinkError):
    """The caller is known but may not do this."""


class ResourceExhausted(CarbonlinkError):
    """A rate limit or size cap was hit."""


class NotYetImplemented(CarbonlinkError):
    """A capability planned for a later issue; answered as UNIMPLEMENTED, never faked."""

    def __init__(self, capability: str, issue: int) -> None:
        super().__init__(f"{capability} is not implemented yet (tracked in issue #{issue})")
        self.capability = capability
        self.issue = issue
