"""WatchTransfer is woken by each step the gateway commits, not by a timer.

Over real gRPC, with the registry emulators, and a fallback read interval set far longer
than any test waits (60 s): a watcher that still follows each step within seconds was told
of it.  A step another gateway on the same database commits is seen at the fallback read;
a watcher whose client leaves gives its place back at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    check_invariants,
    hold_calls,
    running_gateway,
)

START = parse_serial("verra", VERRA_SERIAL).id.serial_start
HELD_S = 60.0
"""Longest a held registry call waits for the test to let it go."""
NEVER_S = 60.0
"""A fallback read interval no test here waits for."""
PROMPT_S = 5.0
"""How soon a watcher must see a step committed by its own gateway."""


def _accept(gateway: LiveGateway, request_id: str) -> model_pb2.Transfer:
    accepted: model_pb2.Transfer = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id=request_id,
            reply_when=gateway_pb2.REPLY_WHEN_ACCEPTED,
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(
                            program="VCS", serial_start=START, serial_end=START + 9
                        )
                    )
                ],
            ),
        ),
        timeout=30,
    )
    assert accepted.state == model_pb2.TRANSFER_STATE_CHECKED
    return accepted


class _Watcher:
    """Reads a WatchTransfer stream on a thread of its own, noting each state as it comes."""

    def __init__(self, gateway: LiveGateway, name: str) -> None:
        self.states: list[model_pb2.TransferState.ValueType] = []
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._stream = gateway.stub.WatchTransfer(
            gateway_pb2.WatchTransferRequest(name=name), timeout=4 * NEVER_S
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for transfer in self._stream:
                with self._changed:
                    self.states.append(transfer.state)
                    self._changed.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def sees(self, state: model_pb2.TransferState.ValueType, within_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: state in self.states, within_s)

    def started(self, within_s: float) -> bool:
        """Whether the stream's first message (the transfer as it stood) came in time."""
        with self._changed:
            return self._changed.wait_for(lambda: bool(self.states), within_s)

    def cancel(self) -> None:
        self._stream.cancel()
        self._thread.join(30)


@contextmanager
def _watching(gateway: LiveGateway, name: str) -> Iterator[_Watcher]:
    watcher = _Watcher(gateway, name)
    try:
        yield watcher
    finally:
        watcher.cancel()


def test_a_watcher_sees_each_step_of_an_accepted_transfer_as_it_is_committed(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked_lock, lock = hold_calls(monkeypatch, registries.emulators["hkmo"].store, "lock", HELD_S)
    asked_credit, credit = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    with running_gateway(database_url, registries, watch_fallback_seconds=NEVER_S) as gateway:
        accepted = _accept(gateway, "watched-1")
        with _watching(gateway, accepted.name) as watcher:
            assert watcher.sees(model_pb2.TRANSFER_STATE_CHECKED, PROMPT_S)
            assert asked_lock.wait(30), "the settlement never asked the venue for the lock"
            lock.set()
            assert watcher.sees(model_pb2.TRANSFER_STATE_SOURCE_LOCKED, PROMPT_S), watcher.states
            assert asked_credit.wait(30), "the settlement never asked Shenzhen for the credit"
            credit.set()
            assert watcher.ended.wait(PROMPT_S), watcher.states
            assert watcher.error is None
            # Each state once, in the state machine's order (a step committed between two
            # reads shows in the history of the next one, not as a message of its own).
            order = list(model_pb2.TransferState.values())
            assert watcher.states == sorted(set(watcher.states), key=order.index)
            assert watcher.states[-1] == model_pb2.TRANSFER_STATE_COMPLETED
        # The watch ended: nothing is kept for the transfer.
        assert gateway.server.bridge.changes.watched == 0
    check_invariants(database_url, registries.ports)


def test_a_step_another_gateway_commits_is_seen_at_the_fallback_read(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, credit = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    # The watching gateway never drives the transfer itself (its recovery does not come
    # round): only the fallback read can show it the other gateway's steps.
    with (
        running_gateway(
            database_url,
            registries,
            watch_fallback_seconds=0.5,
            recovery_interval_seconds=NEVER_S * 10,
        ) as watching,
        running_gateway(database_url, registries) as settling,
    ):
        accepted = _accept(settling, "elsewhere-1")
        with _watching(watching, accepted.name) as watcher:
            assert watcher.started(PROMPT_S)
            assert asked.wait(30)
            credit.set()
            assert watcher.ended.wait(30), watcher.states
            assert watcher.error is None
            assert watcher.states[-1] == model_pb2.TRANSFER_STATE_COMPLETED
        assert watching.server.bridge.changes.watched == 0
    check_invariants(database_url, registries.ports)


def test_a_watcher_whose_client_leaves_frees_its_place_at_once(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, credit = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    with running_gateway(database_url, registries, watch_fallback_seconds=NEVER_S) as gateway:
        accepted = _accept(gateway, "left-1")
        assert asked.wait(30)
        changes = gateway.server.bridge.changes
        watchers = [_Watcher(gateway, accepted.name) for _ in range(3)]
        for watcher in watchers:
            assert watcher.sees(model_pb2.TRANSFER_STATE_SOURCE_LOCKED, PROMPT_S)
        assert changes.watched == 1
        for watcher in watchers[:2]:
            watcher.cancel()
        # The one left still hears the transfer's end at once.
        credit.set()
        assert watchers[2].ended.wait(PROMPT_S), watchers[2].states
        assert watchers[2].states[-1] == model_pb2.TRANSFER_STATE_COMPLETED
        # Neither the watchers that left nor the one that ended hold anything, and each
        # left well before its fallback read would have come round.
        deadline = time.monotonic() + PROMPT_S
        while changes.watched and time.monotonic() < deadline:
            time.sleep(0.05)
        assert changes.watched == 0


def test_a_watcher_cancelled_while_nothing_moves_frees_its_place_at_once(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, credit = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    with running_gateway(database_url, registries, watch_fallback_seconds=NEVER_S) as gateway:
        accepted = _accept(gateway, "left-2")
        assert asked.wait(30)
        changes = gateway.server.bridge.changes
        watcher = _Watcher(gateway, accepted.name)
        assert watcher.sees(model_pb2.TRANSFER_STATE_SOURCE_LOCKED, PROMPT_S)
        assert changes.watched == 1
        began = time.monotonic()
        watcher.cancel()
        while changes.watched and time.monotonic() - began < PROMPT_S:
            time.sleep(0.05)
        assert changes.watched == 0
        credit.set()
