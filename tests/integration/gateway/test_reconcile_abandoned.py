"""A reconciliation whose caller is gone stops asking the registries.

Its caller may cancel, let its deadline pass, or be cut off by a stopping server; the
reconciliation then stops before its next registry read, instead of reading every
registry for an answer no one reads (which also kept ``carbonlink serve`` from stopping
on SIGTERM).  Verra's totals, the first read, are held until the caller is gone; the
emulators count every call the gateway makes afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import grpc
import pytest
from sqlalchemy.orm import Session

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters.serials import parse_serial
from adapters.verra import client as verra_client
from gateway import servicer
from registry_bridge.port import IssueRequest, RegistryPort
from registry_bridge.reconcile import ReconcileReport, reconcile
from tests.integration.gateway.conftest import (
    LinkedRegistries,
    LiveGateway,
    hold_calls,
    logged_events,
)


def _deadline_passes(gateway: LiveGateway, reply: grpc.Future) -> None:
    with pytest.raises(grpc.RpcError) as expired:
        reply.result(timeout=30)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _caller_cancels(gateway: LiveGateway, reply: grpc.Future) -> None:
    assert reply.cancel()


def _server_stops(gateway: LiveGateway, reply: grpc.Future) -> None:
    # As on SIGTERM with its grace spent: the server cancels the calls still running.
    stopping = threading.Thread(target=gateway.server.stop, kwargs={"grace_seconds": 0})
    stopping.start()
    with pytest.raises(grpc.RpcError):
        reply.result(timeout=30)
    stopping.join(timeout=30)
    assert not stopping.is_alive()


@pytest.fixture
def still_wanted(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], bool]]:
    """Each reconciliation's ``still_wanted``, as the servicer passes it."""
    seen: list[Callable[[], bool]] = []

    def recording(
        session: Session,
        ports: Mapping[str, RegistryPort],
        registries: Iterable[str],
        still_wanted: Callable[[], bool],
    ) -> ReconcileReport:
        seen.append(still_wanted)
        return reconcile(session, ports, registries, still_wanted)

    monkeypatch.setattr(servicer, "reconcile", recording)
    return seen


def _until_the_server_knows(still_wanted: list[Callable[[], bool]]) -> None:
    """Wait until the server sees the caller gone: a cancellation reaches it over the wire
    after the client has it, and a registry answering before that would be read on."""
    waited = time.monotonic() + 15
    while still_wanted[0]():
        assert time.monotonic() < waited, "the server never saw the caller gone"
        time.sleep(0.01)


def _stopped(logs: Sequence[MutableMapping[str, Any]]) -> bool:
    return any(e["event"] == "rpc_failed" and e.get("code") == "CANCELLED" for e in logs)


def _reconcile_until_gone(
    gateway: LiveGateway,
    still_wanted: list[Callable[[], bool]],
    asked: threading.Event,
    answer: threading.Event,
    gone: Callable[[LiveGateway, grpc.Future], None],
    deadline_seconds: float,
) -> None:
    """Reconcile; once the registry read held on ``answer`` is ``asked``, let the caller be
    ``gone``, release the read when the server knows, and see the reconciliation stop."""
    with logged_events() as logs:
        reply = gateway.stub.Reconcile.future(
            gateway_pb2.ReconcileRequest(), timeout=deadline_seconds
        )
        try:
            assert asked.wait(timeout=30)
            gone(gateway, reply)
            _until_the_server_knows(still_wanted)
        finally:
            answer.set()
        waited = time.monotonic() + 15
        while not _stopped(logs) and time.monotonic() < waited:
            time.sleep(0.05)
        assert _stopped(logs), "the reconciliation did not stop"


@pytest.mark.parametrize(
    ("gone", "deadline_seconds"),
    [(_deadline_passes, 2.0), (_caller_cancels, 60.0), (_server_stops, 60.0)],
    ids=["deadline-passes", "caller-cancels", "server-stops"],
)
def test_a_reconciliation_whose_caller_is_gone_makes_no_further_registry_call(
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
    monkeypatch: pytest.MonkeyPatch,
    still_wanted: list[Callable[[], bool]],
    gone: Callable[[LiveGateway, grpc.Future], None],
    deadline_seconds: float,
) -> None:
    # Held within the adapter's own deadline (5 s), which would retry the read.
    asked, answer = hold_calls(monkeypatch, registries.emulators["verra"].store, "totals", 4)
    before = {r: e.calls.snapshot() for r, e in registries.emulators.items()}
    _reconcile_until_gone(live_gateway, still_wanted, asked, answer, gone, deadline_seconds)
    made = {}
    for registry, emulator in registries.emulators.items():
        since = emulator.calls.snapshot() - before[registry]
        del since["Check"]
        made[registry] = since
    assert made == {
        "verra": Counter({"GetRegistryTotals": 1}),
        "hkmo": Counter(),
        "shenzhen": Counter(),
    }


SECOND_SERIAL = "9660-300000001-300000010-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"


def test_a_reconciliation_whose_caller_is_gone_stops_between_two_pages_of_a_listing(
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
    monkeypatch: pytest.MonkeyPatch,
    still_wanted: list[Callable[[], bool]],
) -> None:
    """A registry's holdings may take many pages: the reconciliation asks before each."""
    monkeypatch.setattr(verra_client, "LISTING_PAGE_SIZE", 1)  # a page per holding
    second = parse_serial("verra", SECOND_SERIAL)
    registries.ports["verra"].issue(IssueRequest("issue-second", "verra-issuer", second))
    store = registries.emulators["verra"].store
    # The first page is held (within the adapter's deadline); the next would not be.
    asked, answer = hold_calls(monkeypatch, store, "listing_page", 4)
    before = registries.emulators["verra"].calls.snapshot()
    _reconcile_until_gone(live_gateway, still_wanted, asked, answer, _caller_cancels, 60.0)
    made = registries.emulators["verra"].calls.snapshot() - before
    del made["Check"]
    assert made == Counter({"GetRegistryTotals": 1, "ListAccountHoldings": 1})
