"""Scripted refusals of an emulator, seen by a client without retries over real gRPC, and
the emulator's count of the calls it received."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from adapters.emulator_core import FaultConfig, RunningEmulator, ScriptedRefusal, start_emulator
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from registry_bridge.errors import Abandoned, RegistryRejected, RegistryUnavailable
from registry_bridge.port import ListHoldingsRequest, RegistryPort
from tests.loopback import ANY_PORT

COUNTED_CALLS_TIMEOUT_S = 60.0
"""Deadline of the scripted emulator's calls (see the fixture)."""


@pytest.fixture
def scripted() -> Iterator[tuple[RunningEmulator, RegistryPort]]:
    """Verra refusing its second and third holdings listings, and its first totals."""
    faults = FaultConfig(
        refusals=(
            ScriptedRefusal("ListAccountHoldings", calls=2, after=1),
            ScriptedRefusal("GetRegistryTotals", "INVALID_ARGUMENT"),
        )
    )
    running = start_emulator(REGISTRIES["verra"].emulator(), listen=ANY_PORT, faults=faults)
    channel = grpc.insecure_channel(running.target)
    try:
        # Each call is counted by the script: one that outlived a 5 s default deadline on a
        # stalled test process would take its scripted refusal unseen.
        yield running, REGISTRIES["verra"].client(channel, timeout_s=COUNTED_CALLS_TIMEOUT_S)
    finally:
        channel.close()
        running.stop(grace=None)


def test_the_scripted_calls_of_a_method_are_refused_and_no_others(
    scripted: tuple[RunningEmulator, RegistryPort],
) -> None:
    _, client = scripted
    listing = ListHoldingsRequest()
    assert list(client.list_holdings(listing)) == []
    for _ in range(2):
        with pytest.raises(RegistryUnavailable, match="injected fault: scripted UNAVAILABLE"):
            client.list_holdings(listing)
    assert list(client.list_holdings(listing)) == []
    assert list(client.list_holdings(listing)) == []


def test_a_refusal_with_a_final_status_is_the_registry_refusing(
    scripted: tuple[RunningEmulator, RegistryPort],
) -> None:
    _, client = scripted
    with pytest.raises(RegistryRejected) as refused:
        client.totals()
    assert refused.value.code == "INVALID_ARGUMENT"
    assert list(client.totals()) == []


def test_an_emulator_counts_every_call_it_receives_refused_ones_included(
    scripted: tuple[RunningEmulator, RegistryPort],
) -> None:
    running, client = scripted
    listing = ListHoldingsRequest()
    client.list_holdings(listing)
    for _ in range(2):
        with pytest.raises(RegistryUnavailable):
            client.list_holdings(listing)
    with pytest.raises(RegistryRejected):
        client.totals()
    calls = running.calls.snapshot()
    assert (calls["ListAccountHoldings"], calls["GetRegistryTotals"]) == (3, 1)
    # A snapshot is a copy: later calls do not change it.
    client.totals()
    assert calls["GetRegistryTotals"] == 1
    assert running.calls.snapshot()["GetRegistryTotals"] == 2


def test_a_read_whose_caller_went_while_it_failed_is_not_retried() -> None:
    """A retry due when the caller has gone is not sent: no one waits for its answer."""
    faults = FaultConfig(refusals=(ScriptedRefusal("GetRegistryTotals", calls=1),))
    running = start_emulator(REGISTRIES["verra"].emulator(), listen=ANY_PORT, faults=faults)
    try:
        port = build_adapter(
            "verra",
            running.target,
            RetryPolicy(attempts=5, initial_wait_s=0.0),
            timeout_s=COUNTED_CALLS_TIMEOUT_S,
        )

        def still_wanted() -> bool:
            # There until the registry has the first call, gone from then on: by the time
            # it has been refused. Asked of the emulator, not counted in asks: the adapter
            # asks again while a call is under way, and on a loaded machine the call may
            # reach the emulator only after several asks.
            return running.calls.snapshot().get("GetRegistryTotals", 0) == 0

        with pytest.raises(Abandoned):
            port.totals(still_wanted)
        assert running.calls.snapshot()["GetRegistryTotals"] == 1
    finally:
        running.stop(grace=None)
