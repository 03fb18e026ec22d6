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
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters.emulator_core import UnitState
from registry_bridge.model import Program
from tests.integration.gateway.conftest import LinkedRegistries, LiveGateway, logged_events


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


def _stopped(logs: Sequence[MutableMapping[str, Any]]) -> bool:
    return any(e["event"] == "rpc_failed" and e.get("code") == "CANCELLED" for e in logs)


@pytest.mark.parametrize(
    ("gone", "deadline_seconds"),
    [(_deadline_passes, 2.0), (_caller_cancels, 60.0), (_server_stops, 60.0)],
    ids=["deadline-passes", "caller-cancels", "server-stops"],
)
def test_a_reconciliation_whose_caller_is_gone_makes_no_further_registry_call(
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
    monkeypatch: pytest.MonkeyPatch,
    gone: Callable[[LiveGateway, grpc.Future], None],
    deadline_seconds: float,
) -> None:
    store = registries.emulators["verra"].store
    asked, answer = threading.Event(), threading.Event()
    totals = store.totals

    def held_totals() -> list[tuple[Program, UnitState, int]]:
        asked.set()
        # Held within the adapter's own deadline (5 s), which would retry the read.
        answer.wait(timeout=4)
        return totals()

    monkeypatch.setattr(store, "totals", held_totals)
    before = {r: e.calls.snapshot() for r, e in registries.emulators.items()}
    with logged_events() as logs:
        reply = live_gateway.stub.Reconcile.future(
            gateway_pb2.ReconcileRequest(), timeout=deadline_seconds
        )
        try:
            assert asked.wait(timeout=30)
            gone(live_gateway, reply)
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
        "verra": Counter({"GetRegistryTotals": 1}),
        "hkmo": Counter(),
        "shenzhen": Counter(),
    }
