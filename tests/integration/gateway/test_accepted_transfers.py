"""SubmitTransfer answering at acceptance (REPLY_WHEN_ACCEPTED), settled in the background.

Over real gRPC, with the registry emulators: the answer comes once the transfer is
recorded and checked, before any registry is asked; the settlement that follows is the
same state machine, and a gateway stopped with accepted transfers unsettled leaves them
to the next one's recovery.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.cli import main
from registry_bridge import db
from registry_bridge.model import HoldingStatus
from registry_bridge.port import BlockStatusRequest
from registry_bridge.schema import TransferRecord
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    check_invariants,
    hold_calls,
    running_gateway,
)

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
HELD_S = 60.0
"""Longest a held registry call waits for the test to let it go."""


def _request(
    request_id: str,
    first: int,
    last: int,
    *,
    source: str = "hk-seller",
    reply_when: gateway_pb2.ReplyWhen.ValueType = gateway_pb2.REPLY_WHEN_ACCEPTED,
) -> gateway_pb2.SubmitTransferRequest:
    return gateway_pb2.SubmitTransferRequest(
        request_id=request_id,
        reply_when=reply_when,
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account=source),
            destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
            units=[
                model_pb2.UnitSelector(
                    block=model_pb2.BlockId(program="VCS", serial_start=first, serial_end=last)
                )
            ],
        ),
    )


def _end_of(gateway: LiveGateway, name: str) -> model_pb2.Transfer:
    watched = list(
        gateway.stub.WatchTransfer(gateway_pb2.WatchTransferRequest(name=name), timeout=60)
    )
    last: model_pb2.Transfer = watched[-1]
    return last


def test_an_accepted_transfer_is_answered_checked_before_any_registry_settles_it(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
) -> None:
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    accepted = live_gateway.stub.SubmitTransfer(_request("accept-1", START, START + 9), timeout=30)
    # Answered while the destination's credit is held: the settlement has not finished.
    assert accepted.state == model_pb2.TRANSFER_STATE_CHECKED
    assert accepted.decision.allowed
    assert [s.state for s in accepted.history] == [
        model_pb2.TRANSFER_STATE_PROPOSED,
        model_pb2.TRANSFER_STATE_CHECKED,
    ]
    assert asked.wait(30), "the settlement never asked Shenzhen for the credit"
    answer.set()
    settled = _end_of(live_gateway, accepted.name)
    assert settled.state == model_pb2.TRANSFER_STATE_COMPLETED, settled.failure_reason
    assert sum(b.quantity for b in settled.credited_blocks) == 10
    moved = registries.ports["verra"].block_status(
        BlockStatusRequest(dataclasses.replace(ORIGIN, serial_end=START + 9))
    )
    assert {h.status for h in moved} == {HoldingStatus.BRIDGED}
    check_invariants(database_url, registries.ports)


def test_a_transfer_the_rules_refuse_is_answered_rejected_at_acceptance(
    live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    refused = live_gateway.stub.SubmitTransfer(
        _request("not-mine", START, START + 9, source="someone-else"), timeout=30
    )
    assert refused.state == model_pb2.TRANSFER_STATE_REJECTED
    assert {v.rule_id for v in refused.decision.violations} == {"CL-LEDGER-HOLDER"}
    states = {h.status for h in registries.ports["verra"].block_status(BlockStatusRequest(ORIGIN))}
    assert states == {HoldingStatus.ACTIVE}


def test_an_accepted_request_repeated_answers_its_one_transfer(
    live_gateway: LiveGateway,
) -> None:
    first = live_gateway.stub.SubmitTransfer(_request("trade-a", START, START + 4), timeout=30)
    # The same request, asked to wait for settlement this time: the same transfer, settled.
    again = live_gateway.stub.SubmitTransfer(
        _request("trade-a", START, START + 4, reply_when=gateway_pb2.REPLY_WHEN_SETTLED),
        timeout=30,
    )
    assert again.name == first.name
    assert _end_of(live_gateway, first.name).state == model_pb2.TRANSFER_STATE_COMPLETED
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.SubmitTransfer(_request("trade-a", START + 5, START + 9), timeout=30)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert [t.name for t in listed.transfers] == [first.name]


def test_an_unknown_reply_when_is_refused_by_name_and_changes_nothing(
    live_gateway: LiveGateway,
) -> None:
    request = _request("odd", START, START + 4)
    request.reply_when = 7  # type: ignore[assignment]  # a value a newer client might send
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.SubmitTransfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reply_when" in (caught.value.details() or "")
    listed = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert list(listed.transfers) == []


def test_acceptance_waits_while_the_backlog_is_full(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    with (
        running_gateway(database_url, registries, accepted_backlog_transfers=1) as gateway,
        ThreadPoolExecutor(max_workers=1) as client,
    ):
        first = gateway.stub.SubmitTransfer(_request("full-1", START, START + 4), timeout=30)
        assert first.state == model_pb2.TRANSFER_STATE_CHECKED
        assert asked.wait(30)
        second = client.submit(
            gateway.stub.SubmitTransfer, _request("full-2", START + 5, START + 9), timeout=60
        )
        # The first is still settling (its credit is held): the second cannot be taken.
        waited = threading.Event()
        assert not waited.wait(0.5)
        assert not second.done()
        assert gateway.server.bridge.accepted_pending == 1
        answer.set()
        assert second.result(timeout=60).state in (
            model_pb2.TRANSFER_STATE_CHECKED,
            model_pb2.TRANSFER_STATE_COMPLETED,
        )
        for name in (first.name, second.result().name):
            assert _end_of(gateway, name).state == model_pb2.TRANSFER_STATE_COMPLETED
    check_invariants(database_url, registries.ports)


def test_accepted_transfers_a_stopped_gateway_left_are_settled_by_the_next(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    names: list[str] = []
    with running_gateway(database_url, registries, transfer_lease_seconds=1.0) as first:
        for i in range(6):
            accepted = first.stub.SubmitTransfer(
                _request(f"left-{i}", START + 10 * i, START + 10 * i + 9), timeout=30
            )
            assert accepted.state == model_pb2.TRANSFER_STATE_CHECKED
            names.append(accepted.name)
        assert asked.wait(30)
    # Stopped with each settlement held at its credit or still queued: every transfer is
    # where acceptance or its last committed step left it, none lost.
    engine = db.create_engine(database_url)
    try:
        with engine.connect() as connection:
            asked_for = sa.select(TransferRecord.id, TransferRecord.state).where(
                TransferRecord.id.in_([n.removeprefix("transfers/") for n in names])
            )
            states = {row.id: row.state for row in connection.execute(asked_for)}
    finally:
        engine.dispose()
    assert len(states) == len(names)
    assert set(states.values()) <= {"CHECKED", "SOURCE_LOCKED"}, states
    answer.set()
    with running_gateway(
        database_url, registries, transfer_lease_seconds=1.0, recovery_interval_seconds=0.2
    ) as second:
        ends = {name: _end_of(second, name).state for name in names}
    assert set(ends.values()) == {model_pb2.TRANSFER_STATE_COMPLETED}, ends
    check_invariants(database_url, registries.ports)


def test_the_cli_submits_accept_only_and_exits_0_once_accepted(
    monkeypatch: pytest.MonkeyPatch,
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    block = f"VCS:{START}-{START + 9}"
    argv = ["--target", live_gateway.target, "--from", "hkmo:hk-seller", "--to", "shenzhen:buyer"]
    code = main(["transfer", "submit", *argv, "--block", block, "--accept-only", "--insecure"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    name = captured.out.split()[0]
    assert captured.out.split()[1] == "CHECKED"
    assert f"carbonlink transfer get {name}" in captured.err
    assert asked.wait(30)
    answer.set()
    assert _end_of(live_gateway, name).state == model_pb2.TRANSFER_STATE_COMPLETED
    # Refused by the rules: the answer is final at acceptance, and the exit says so.
    code = main(["transfer", "submit", *argv, "--block", block, "--accept-only", "--insecure"])
    captured = capsys.readouterr()
    assert code == 1
    assert "REJECTED" in captured.out
