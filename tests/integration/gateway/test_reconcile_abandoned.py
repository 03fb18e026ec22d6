"""A reconciliation whose caller is gone stops asking the registries.

Its caller may cancel, let its deadline pass, or be cut off by a stopping server; the
reconciliation then stops before its next registry read, instead of reading every
registry for an answer no one reads (which also kept ``carbonlink serve`` from stopping
on SIGTERM).  Verra's totals, the first read, are held until the caller is gone; the
emulators count every call the gateway makes afterwards.

A read under way is cancelled, not waited for: a registry slow to answer would otherwise
keep the worker, and the stopping server, until its answer or the read's deadline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from sqlalchemy.orm import Session

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters._pb.registries.verra.v1 import verra_pb2
from adapters.serials import parse_serial
from adapters.verra import client as verra_client
from adapters.verra import emulator as verra_emulator
from registry_bridge import reconcile as reconcile_module
from registry_bridge.port import IssueRequest, RegistryPort
from registry_bridge.reconcile import ReconcileReport, reconcile
from tests.integration.gateway.conftest import (
    LinkedRegistries,
    LiveGateway,
    hold_calls,
    linked_registries,
    running_gateway,
)
from tests.logs import logged_events

SHORT_DEADLINE_S = 1.0
"""The deadline of a call let pass: the gateway asks its first registry within
milliseconds of the call, well inside it, and the test waits it out."""


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
    """Each reconciliation's ``still_wanted``, as the servicer passes it (through the
    gateway's Reconciler)."""
    seen: list[Callable[[], bool]] = []

    def recording(
        session: Session,
        ports: Mapping[str, RegistryPort],
        registries: Iterable[str],
        still_wanted: Callable[[], bool],
    ) -> ReconcileReport:
        seen.append(still_wanted)
        return reconcile(session, ports, registries, still_wanted)

    monkeypatch.setattr(reconcile_module, "reconcile", recording)
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
    [(_deadline_passes, SHORT_DEADLINE_S), (_caller_cancels, 60.0), (_server_stops, 60.0)],
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


ADAPTER_DEADLINE_S = 30.0
"""The gateway's deadline of each registry call, in this test: far longer than a caller
takes to go, so a read let run to its deadline is told from one cancelled."""

HELD_S = 20.0
"""How long the registry holds the listing unless released: below the adapter deadline,
so a read let run ends when the hold does."""

CANCELLED_WITHIN_S = 5.0
"""How soon after it started the registry must see the held read end: the caller goes
within 1 s (:data:`SHORT_DEADLINE_S`), and a cancelled read ends at once."""


@dataclass
class ListingCall:
    """The Verra emulator's view of the first holdings listing call it serves once
    ``watching`` is set (the gateway lists every registry as it starts)."""

    watching: threading.Event = field(default_factory=threading.Event)
    started_at: float = 0.0
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0


@pytest.fixture
def verra_listing(monkeypatch: pytest.MonkeyPatch) -> ListingCall:
    """Watch, from the emulator, when Verra's listing call starts and ends; patched before
    any emulator starts, as a servicer's methods are bound when it is added to a server."""
    seen = ListingCall()
    original = verra_emulator.VerraServicer.ListAccountHoldings

    def watched(
        self: verra_emulator.VerraServicer,
        request: verra_pb2.ListAccountHoldingsRequest,
        context: grpc.ServicerContext,
    ) -> verra_pb2.ListAccountHoldingsResponse:
        def ended() -> None:
            seen.ended_at = time.monotonic()
            seen.ended.set()

        # gRPC runs a call's callbacks when the call ends: a cancelled one at once, while
        # its handler may still be busy.
        if seen.watching.is_set() and not seen.started_at:
            seen.started_at = time.monotonic()
            context.add_callback(ended)
        return original(self, request, context)

    monkeypatch.setattr(verra_emulator.VerraServicer, "ListAccountHoldings", watched)
    return seen


@pytest.fixture
def patient_gateway(
    database_url: str, verra_listing: ListingCall
) -> Iterator[tuple[LiveGateway, LinkedRegistries]]:
    """A gateway whose registry calls have a deadline of :data:`ADAPTER_DEADLINE_S`."""
    with (
        linked_registries() as linked,
        running_gateway(
            database_url, linked, registry_timeout_seconds=ADAPTER_DEADLINE_S
        ) as gateway,
    ):
        yield gateway, linked


@pytest.mark.parametrize(
    ("gone", "deadline_seconds"),
    [(_deadline_passes, SHORT_DEADLINE_S), (_caller_cancels, 60.0), (_server_stops, 60.0)],
    ids=["deadline-passes", "caller-cancels", "server-stops"],
)
def test_a_registry_read_under_way_is_cancelled_when_the_caller_goes(
    patient_gateway: tuple[LiveGateway, LinkedRegistries],
    verra_listing: ListingCall,
    monkeypatch: pytest.MonkeyPatch,
    gone: Callable[[LiveGateway, grpc.Future], None],
    deadline_seconds: float,
) -> None:
    """The registry sees the read cancelled as soon as the caller goes, not when the read's
    own deadline passes; the read is not retried, and no other registry is asked."""
    gateway, registries = patient_gateway
    store = registries.emulators["verra"].store
    asked, answer = hold_calls(monkeypatch, store, "listing_page", HELD_S)
    before = {r: e.calls.snapshot() for r, e in registries.emulators.items()}
    verra_listing.watching.set()
    with logged_events() as logs:
        reply = gateway.stub.Reconcile.future(
            gateway_pb2.ReconcileRequest(), timeout=deadline_seconds
        )
        try:
            assert asked.wait(timeout=30)
            gone(gateway, reply)
            assert verra_listing.ended.wait(timeout=HELD_S), "the listing never ended"
            took = verra_listing.ended_at - verra_listing.started_at
            assert took < CANCELLED_WITHIN_S, f"the registry saw the read end after {took:.1f} s"
            assert not answer.is_set()
        finally:
            answer.set()
        waited = time.monotonic() + 15
        while not _stopped(logs) and time.monotonic() < waited:
            time.sleep(0.05)
        assert _stopped(logs), "the reconciliation did not stop"
    made = {}
    for registry, emulator in registries.emulators.items():
        since = emulator.calls.snapshot() - before[registry]
        del since["Check"]
        made[registry] = since
    assert made == {
        "verra": Counter({"GetRegistryTotals": 1, "ListAccountHoldings": 1}),
        "hkmo": Counter(),
        "shenzhen": Counter(),
    }
