"""What every registry client shares: translating native states to canonical ones."""

from __future__ import annotations

import importlib
from typing import Any

import grpc
import pytest

from adapters.client_core import REJECTION_CODE_KEY, canonical_status, invoke
from adapters.registry import REGISTRIES
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import HoldingStatus


def test_a_known_native_state_translates() -> None:
    assert canonical_status("x", {7: HoldingStatus.EXPORTED}, 7) is HoldingStatus.EXPORTED


def test_an_unknown_native_state_is_refused_not_guessed() -> None:
    with pytest.raises(RegistryRejected, match=r"\(UNKNOWN_STATE\)"):
        canonical_status("x", {1: HoldingStatus.ACTIVE}, 0)


# Each registry's native enum of where units stand.
STATE_ENUM = {
    "verra": "VcuStatus",
    "gold-standard": "CreditStatus",
    "national": "BlockState",
    "hkmo": "PositionState",
    "shenzhen": "LotState",
    "guangdong": "BatchStatus",
    "bri": "ItmoStatus",
}


def test_every_registry_names_its_state_enum() -> None:
    assert set(STATE_ENUM) == set(REGISTRIES)


@pytest.mark.parametrize("registry_id", sorted(STATE_ENUM))
def test_every_client_translates_every_native_state(registry_id: str) -> None:
    """A client's table covers its registry's whole state enum but 0 ('unspecified')."""
    client = importlib.import_module(f"adapters.{REGISTRIES[registry_id].package}.client")
    table = getattr(client, "STATE_TO_CANONICAL", None) or client.STATUS_TO_CANONICAL
    enum = client.pb.DESCRIPTOR.enum_types_by_name[STATE_ENUM[registry_id]]
    assert set(table) == {value.number for value in enum.values} - {0}
    assert HoldingStatus.EXPORTED in table.values()


class _Failed(grpc.RpcError):  # type: ignore[misc]  # grpc has no type stubs
    """A failed call as the gRPC client raises it."""

    def __init__(self, status: grpc.StatusCode, rejection: str = "") -> None:
        self._status = status
        self._rejection = rejection

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return f"failed with {self._status.name}"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((REJECTION_CODE_KEY, self._rejection),) if self._rejection else ()


def _failing(error: grpc.RpcError) -> Any:
    def method(request: object, timeout: float) -> object:
        raise error

    return method


@pytest.mark.parametrize(
    "status",
    [
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    ],
)
def test_a_call_that_may_or_may_not_have_been_applied_is_not_a_refusal(
    status: grpc.StatusCode,
) -> None:
    with pytest.raises(RegistryUnavailable, match=status.name):
        invoke("verra", _failing(_Failed(status)), object(), 1.0)


@pytest.mark.parametrize(
    "status",
    [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_a_registrys_answer_is_a_refusal_with_its_own_code(status: grpc.StatusCode) -> None:
    with pytest.raises(RegistryRejected) as caught:
        invoke("verra", _failing(_Failed(status, "NOT_HELD")), object(), 1.0)
    assert caught.value.code == "NOT_HELD"
