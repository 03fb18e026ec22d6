"""SubmitTransfer answering at acceptance (REPLY_WHEN_ACCEPTED), settled in the background.

Over real gRPC, with the registry emulators: the answer comes once the transfer is
recorded and checked, before any registry is asked; the settlement that follows is the
same state machine, and a gateway stopped with accepted transfers unsettled leaves them
to the next one's recovery.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format

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


def _completed_by_the_next_gateway(
    database_url: str, registries: LinkedRegistries, names: list[str], answer: threading.Event
) -> None:
    """The transfers ``names``, accepted by a gateway stopped with each settlement held
    at its credit (until ``answer``) or still queued, are each where acceptance or its
    last committed step left them, none lost; a next gateway completes them all."""
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


def _refused_naming_reply_when(live_gateway: LiveGateway, submit: Callable[[], object]) -> None:
    """``submit`` is refused INVALID_ARGUMENT naming reply_when, and no transfer is made."""
    with pytest.raises(grpc.RpcError) as caught:
        submit()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reply_when" in (caught.value.details() or "")
    listed = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert list(listed.transfers) == []


def test_an_unknown_reply_when_is_refused_by_name_and_changes_nothing(
    live_gateway: LiveGateway,
) -> None:
    request = _request("odd", START, START + 4)
    request.reply_when = 7  # type: ignore[assignment]  # a value a newer client might send
    _refused_naming_reply_when(
        live_gateway, lambda: live_gateway.stub.SubmitTransfer(request, timeout=30)
    )


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
    _completed_by_the_next_gateway(database_url, registries, names, answer)


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


def _batch(
    request_id: str,
    *items: gateway_pb2.SubmitTransferRequest,
    reply_when: gateway_pb2.ReplyWhen.ValueType = gateway_pb2.REPLY_WHEN_ACCEPTED,
) -> gateway_pb2.SubmitTransfersRequest:
    """A batch of ``items``, each without a reply_when of its own (the batch's decides)."""
    for item in items:
        item.reply_when = gateway_pb2.REPLY_WHEN_UNSPECIFIED
    return gateway_pb2.SubmitTransfersRequest(
        request_id=request_id, transfers=list(items), reply_when=reply_when
    )


def _tens(prefix: str, count: int, offset: int = 0) -> list[gateway_pb2.SubmitTransferRequest]:
    """``count`` instructions of ten units each, from ``START + offset`` on, with request
    ids ``PREFIX-INDEX`` (none without a prefix)."""
    first = START + offset
    return [
        _request(f"{prefix}-{i}" if prefix else "", first + 10 * i, first + 10 * i + 9)
        for i in range(count)
    ]


def _states(reply: gateway_pb2.SubmitTransfersResponse) -> list[str]:
    return [
        model_pb2.TransferState.Name(r.transfer.state)
        if r.HasField("transfer")
        else next(c.name for c in grpc.StatusCode if c.value[0] == r.error.code)
        for r in reply.results
    ]


def test_a_batch_answered_at_acceptance_is_checked_or_rejected_then_settled(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
) -> None:
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    refused = _request("batch-not-mine", START + 100, START + 109, source="someone-else")
    reply = live_gateway.stub.SubmitTransfers(
        _batch("batch-1", *_tens("batch-1", 3), refused), timeout=30
    )
    # Answered while every credit is held: nothing of the batch has settled yet.
    assert _states(reply) == [
        "TRANSFER_STATE_CHECKED",
        "TRANSFER_STATE_CHECKED",
        "TRANSFER_STATE_CHECKED",
        "TRANSFER_STATE_REJECTED",
    ]
    assert [r.request_id for r in reply.results] == [
        "batch-1-0",
        "batch-1-1",
        "batch-1-2",
        "batch-not-mine",
    ]
    assert {v.rule_id for v in reply.results[3].transfer.decision.violations} == {
        "CL-LEDGER-HOLDER"
    }
    for result in reply.results[:3]:
        assert [s.state for s in result.transfer.history] == [
            model_pb2.TRANSFER_STATE_PROPOSED,
            model_pb2.TRANSFER_STATE_CHECKED,
        ]
    assert asked.wait(30), "the settlement never asked Shenzhen for a credit"
    answer.set()
    for result in reply.results[:3]:
        settled = _end_of(live_gateway, result.transfer.name)
        assert settled.state == model_pb2.TRANSFER_STATE_COMPLETED, settled.failure_reason
        assert sum(b.quantity for b in settled.credited_blocks) == 10
    check_invariants(database_url, registries.ports)


def test_a_batch_answered_at_acceptance_repeated_answers_its_transfers_as_they_now_are(
    database_url: str, live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    refused = _request("again-not-mine", START + 100, START + 109, source="someone-else")
    batch = _batch("again", *_tens("again", 2), refused)
    first = live_gateway.stub.SubmitTransfers(batch, timeout=30)
    names = [r.transfer.name for r in first.results]
    for name in names[:2]:
        assert _end_of(live_gateway, name).state == model_pb2.TRANSFER_STATE_COMPLETED
    again = live_gateway.stub.SubmitTransfers(batch, timeout=30)
    assert [r.transfer.name for r in again.results] == names
    assert _states(again) == [
        "TRANSFER_STATE_COMPLETED",
        "TRANSFER_STATE_COMPLETED",
        "TRANSFER_STATE_REJECTED",
    ]
    # Asked to wait for settlement this time: the same transfers, as they are.
    settled = live_gateway.stub.SubmitTransfers(
        _batch("again", *_tens("again", 2), reply_when=gateway_pb2.REPLY_WHEN_SETTLED),
        timeout=30,
    )
    assert [r.transfer.name for r in settled.results] == names[:2]
    # A request id of the batch with another instruction: that one refused, on its own.
    changed = _batch(
        "again", _request("again-0", START + 50, START + 59), *_tens("again-new", 1, 200)
    )
    reply = live_gateway.stub.SubmitTransfers(changed, timeout=30)
    assert reply.results[0].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert reply.results[1].transfer.state == model_pb2.TRANSFER_STATE_CHECKED
    listed = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert len(listed.transfers) == len(names) + 1
    assert _end_of(live_gateway, reply.results[1].transfer.name).state == (
        model_pb2.TRANSFER_STATE_COMPLETED
    )
    check_invariants(database_url, registries.ports)


def test_a_batch_with_an_unknown_reply_when_is_refused_by_name_and_changes_nothing(
    live_gateway: LiveGateway,
) -> None:
    request = _batch("odd-batch", *_tens("odd", 2))
    request.reply_when = 7  # type: ignore[assignment]  # a value a newer client might send
    _refused_naming_reply_when(
        live_gateway, lambda: live_gateway.stub.SubmitTransfers(request, timeout=30)
    )


def test_an_instruction_asking_for_another_answer_than_its_batch_is_refused_alone(
    live_gateway: LiveGateway,
) -> None:
    request = _batch("mixed", *_tens("mixed", 2))
    request.transfers[1].reply_when = gateway_pb2.REPLY_WHEN_SETTLED
    reply = live_gateway.stub.SubmitTransfers(request, timeout=30)
    assert reply.results[0].transfer.state == model_pb2.TRANSFER_STATE_CHECKED
    assert reply.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "transfers[1].reply_when" in reply.results[1].error.message
    listed = live_gateway.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert [t.name for t in listed.transfers] == [reply.results[0].transfer.name]
    # Its own value, the batch's, is no contradiction.
    request.transfers[1].reply_when = gateway_pb2.REPLY_WHEN_ACCEPTED
    reply = live_gateway.stub.SubmitTransfers(request, timeout=30)
    assert reply.results[1].transfer.state == model_pb2.TRANSFER_STATE_CHECKED
    for result in reply.results:
        assert _end_of(live_gateway, result.transfer.name).state == (
            model_pb2.TRANSFER_STATE_COMPLETED
        )


def test_a_batch_larger_than_the_backlog_is_accepted_part_by_part_as_room_is_made(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    with (
        running_gateway(database_url, registries, accepted_backlog_transfers=2) as gateway,
        ThreadPoolExecutor(max_workers=1) as client,
    ):
        sent = client.submit(
            gateway.stub.SubmitTransfers, _batch("large", *_tens("large", 5)), timeout=60
        )
        assert asked.wait(30)
        # The first part (two, the backlog) settles, held at its credit; the rest of the
        # batch waits for room, never past the backlog.
        assert not threading.Event().wait(0.5)
        assert not sent.done()
        assert gateway.server.bridge.accepted_pending == 2
        answer.set()
        reply = sent.result(timeout=60)
        assert _states(reply) == ["TRANSFER_STATE_CHECKED"] * 5
        for result in reply.results:
            assert _end_of(gateway, result.transfer.name).state == (
                model_pb2.TRANSFER_STATE_COMPLETED
            )
    check_invariants(database_url, registries.ports)


def test_accepted_batch_transfers_a_stopped_gateway_left_are_settled_by_the_next(
    monkeypatch: pytest.MonkeyPatch, database_url: str, registries: LinkedRegistries
) -> None:
    registries.seed_venue()
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    with running_gateway(database_url, registries, transfer_lease_seconds=1.0) as first:
        reply = first.stub.SubmitTransfers(_batch("left-batch", *_tens("left", 6)), timeout=30)
        assert _states(reply) == ["TRANSFER_STATE_CHECKED"] * 6
        names = [r.transfer.name for r in reply.results]
        assert asked.wait(30)
    _completed_by_the_next_gateway(database_url, registries, names, answer)


def test_the_cli_submits_a_batch_accept_only_and_exits_0_once_all_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
    live_gateway: LiveGateway,
    registries: LinkedRegistries,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    asked, answer = hold_calls(
        monkeypatch, registries.emulators["shenzhen"].store, "credit", HELD_S
    )
    batch = tmp_path / "batch.json"
    batch.write_text(
        json_format.MessageToJson(
            _batch("", *_tens("", 2), reply_when=gateway_pb2.REPLY_WHEN_UNSPECIFIED)
        ),
        encoding="utf-8",
    )
    target = ["--target", live_gateway.target, "--insecure"]
    argv = ["transfer", "batch", str(batch), "--request-id", "cli-batch", *target]
    code = main([*argv, "--accept-only"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 2 and all(line.endswith(" CHECKED") for line in lines), captured.out
    assert "carbonlink transfer get" in captured.err
    assert asked.wait(30)
    answer.set()
    for line in lines:
        assert _end_of(live_gateway, line.split()[2]).state == model_pb2.TRANSFER_STATE_COMPLETED
    # Refused by the rules: final at acceptance, and the exit says so.
    refused = tmp_path / "refused.json"
    refused.write_text(
        json_format.MessageToJson(
            _batch(
                "",
                _request("", START, START + 9, source="someone-else"),
                reply_when=gateway_pb2.REPLY_WHEN_UNSPECIFIED,
            )
        ),
        encoding="utf-8",
    )
    code = main(["transfer", "batch", str(refused), "--accept-only", *target])
    captured = capsys.readouterr()
    assert code == 1
    assert "REJECTED" in captured.out
    # A file asking for the answer at settlement contradicts --accept-only.
    settled = tmp_path / "settled.json"
    settled.write_text(
        json_format.MessageToJson(
            _batch("", *_tens("", 1), reply_when=gateway_pb2.REPLY_WHEN_SETTLED)
        ),
        encoding="utf-8",
    )
    code = main(["transfer", "batch", str(settled), "--accept-only", *target])
    assert code == 2
    assert "--accept-only" in capsys.readouterr().err
