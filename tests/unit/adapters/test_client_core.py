"""What every registry client shares: translating native states to canonical ones."""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

import grpc
import pytest

from adapters.client_core import READ_POLL_S, REJECTION_CODE_KEY, canonical_status, invoke
from adapters.registry import REGISTRIES
from registry_bridge.errors import Abandoned, RegistryRejected, RegistryUnavailable
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


class _Unanswered:
    """A native call under way that the registry never answers: only cancelling ends it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def result(self, timeout: float | None = None) -> object:
        if self.cancelled.wait(timeout):
            raise grpc.FutureCancelledError()
        raise grpc.FutureTimeoutError()

    def cancel(self) -> bool:
        self.cancelled.set()
        return True


class _Unanswering:
    """A stub method whose calls, started as futures, are never answered."""

    def __init__(self) -> None:
        self.started: list[_Unanswered] = []

    def __call__(self, request: object, *, timeout: float) -> object:
        raise AssertionError("a read that can be stopped must be started as a future")

    def future(self, request: object, *, timeout: float) -> _Unanswered:
        call = _Unanswered()
        self.started.append(call)
        return call


def test_a_read_whose_caller_goes_is_cancelled_without_waiting_for_its_deadline() -> None:
    method = _Unanswering()
    asked = 0

    def still_wanted() -> bool:
        nonlocal asked
        asked += 1
        return asked < 3  # before the call, once while waiting, then gone

    began = time.monotonic()
    with pytest.raises(Abandoned, match="verra: read cancelled"):
        invoke("verra", method, object(), 60.0, still_wanted=still_wanted)
    assert time.monotonic() - began < 10 * READ_POLL_S
    assert [call.cancelled.is_set() for call in method.started] == [True]


def test_a_read_whose_caller_has_gone_is_not_sent() -> None:
    method = _Unanswering()
    with pytest.raises(Abandoned, match="verra: read not started"):
        invoke("verra", method, object(), 60.0, still_wanted=lambda: False)
    assert method.started == []
