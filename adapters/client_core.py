"""What every registry client shares: calling a native RPC and typing its failures.

A native call either answers, or fails with a gRPC status.  UNAVAILABLE and
DEADLINE_EXCEEDED mean the registry may not have seen the call (or its answer was lost):
they become :class:`RegistryUnavailable`, which the retry policy retries with the same
operation id.  Every other status is the registry's answer and becomes
:class:`RegistryRejected`, carrying the registry's own rejection code when it sent one in
the trailing metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Protocol, TypeVar

import grpc

from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import Authorization, CorrespondingAdjustment, HoldingStatus, Program
from registry_bridge.port import ProgramTotal

# Trailing-metadata key carrying a registry's own rejection code (set by the emulators).
REJECTION_CODE_KEY = "registry-rejection-code"

_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Msg = TypeVar("Msg")


class NativeAuthorization(Protocol):
    """A native authorization message spelled in the common way (all registries but BRI)."""

    @property
    def letter_id(self) -> str: ...
    @property
    def host_country(self) -> str: ...
    @property
    def authorized_uses(self) -> Iterable[str]: ...
    @property
    def issued_on(self) -> str: ...


def rejection_code(error: grpc.RpcError) -> str:
    """The registry's own rejection code of a failed call, else the gRPC status name."""
    for key, value in error.trailing_metadata() or ():
        if key == REJECTION_CODE_KEY:
            return str(value)
    return str(error.code().name)


def invoke(
    registry_id: str,
    method: Callable[..., Resp],
    request: Req,
    timeout_s: float,
) -> Resp:
    """Call one native RPC, typing its failure.

    Args:
        registry_id: The registry, named in the errors.
        method: A stub method.
        request: The native request.
        timeout_s: The call's deadline, in seconds.

    Returns:
        The native response.

    Raises:
        RegistryUnavailable: The registry was unreachable or too slow (transient).
        RegistryRejected: The registry refused the call (final).
    """
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        status = exc.code()
        if status in _TRANSIENT:
            raise RegistryUnavailable(registry_id, f"{status.name}: {exc.details()}") from exc
        raise RegistryRejected(registry_id, rejection_code(exc), str(exc.details())) from exc


def not_supported(registry_id: str, operation: str) -> RegistryRejected:
    """The error for a canonical operation the registry has no native counterpart of."""
    return RegistryRejected(
        registry_id, "NOT_SUPPORTED", f"{registry_id} has no native {operation} operation"
    )


def canonical_status(
    registry_id: str, statuses: Mapping[int, HoldingStatus], native: int
) -> HoldingStatus:
    """The canonical status of a registry's native state.

    Args:
        registry_id: The registry, named in the error.
        statuses: The registry's native state -> canonical status table.
        native: The native state the registry answered.

    Returns:
        The canonical status.

    Raises:
        RegistryRejected: ``UNKNOWN_STATE``: the registry answered a state the adapter
            cannot translate (unset, or newer than the adapter); guessing one would
            misreport where the units are.
    """
    status = statuses.get(native)
    if status is None:
        raise RegistryRejected(
            registry_id, "UNKNOWN_STATE", f"{registry_id} answered an unknown state {native}"
        )
    return status


def authorization_to_native(message: Callable[..., Msg], auth: Authorization | None) -> Msg | None:
    """An authorization as a registry's native message of the common spelling (``None`` for none).

    Args:
        message: The native message type, with fields ``letter_id``, ``host_country``,
            ``authorized_uses`` and ``issued_on`` (ISO date).
        auth: The canonical authorization, if any.
    """
    if auth is None:
        return None
    return message(
        letter_id=auth.letter_id,
        host_country=auth.host_country,
        authorized_uses=sorted(auth.authorized_uses),
        issued_on=auth.issued_on.isoformat(),
    )


def authorization_from_native(native: NativeAuthorization) -> Authorization:
    """The canonical authorization of a native message of the common spelling.

    Raises:
        ValueError: ``issued_on`` is not an ISO date.
    """
    return Authorization(
        letter_id=native.letter_id,
        host_country=native.host_country,
        authorized_uses=frozenset(native.authorized_uses),
        issued_on=date.fromisoformat(native.issued_on),
    )


def adjustment_from_native(text: str) -> CorrespondingAdjustment:
    """The corresponding-adjustment status of its native text ('' is not applicable).

    Raises:
        ValueError: An unknown status.
    """
    return CorrespondingAdjustment(text or CorrespondingAdjustment.NOT_APPLICABLE.value)


def program_totals(
    statuses: Mapping[int, HoldingStatus], rows: Iterable[tuple[str, int, int]]
) -> tuple[ProgramTotal, ...]:
    """A registry's totals in canonical terms, native states it has no canonical name for left out.

    Args:
        statuses: The registry's native state -> canonical status table.
        rows: ``(program, native state, quantity)`` per native total row.

    Returns:
        One total per row whose state the table names.

    Raises:
        ValueError: A kept row names an unknown program.
    """
    return tuple(
        ProgramTotal(Program(program), statuses[state], quantity)
        for program, state, quantity in rows
        if state in statuses
    )


def to_rfc3339(moment: datetime | None) -> str:
    """A timezone-aware moment as RFC 3339 in UTC ('' for none)."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        raise ValueError(f"moment {moment} has no time zone")
    return moment.astimezone(UTC).isoformat()


def from_rfc3339(text: str) -> datetime | None:
    """The moment of an RFC 3339 string (``None`` for '')."""
    return datetime.fromisoformat(text) if text else None


def to_ddmmyyyy(day: date) -> str:
    """Verra's date form, DDMMYYYY."""
    return day.strftime("%d%m%Y")


def from_iso_date(text: str) -> date:
    """A YYYY-MM-DD date."""
    return date.fromisoformat(text)
