"""An airline's CORSIA transfers over gRPC in March 2027, in CORSIA's second phase.

The pack has no second-phase list of eligible units, so CORSIA use with no obligation year
(or for a second-phase year) is refused; airlines still cancel units for their 2024-2026
obligations until about January 2028, and those transfers are decided under the first
phase's rules. The gateway and the registries run on one clock set to 1 March 2027.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.cli import main
from registry_bridge.bridge import venue_account
from registry_bridge.model import Authorization, CorrespondingAdjustment, UnitBlock
from registry_bridge.port import CreditRequest, IssueRequest
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)

ORIGIN = parse_serial("verra", VERRA_SERIAL)
START = ORIGIN.id.serial_start
ELIGIBLE = dataclasses.replace(
    ORIGIN.with_range(START, START + 999),
    authorization=Authorization("LOA-US-14", "US", frozenset({"corsia"}), date(2024, 6, 3)),
    corresponding_adjustment=CorrespondingAdjustment.APPLIED,
    labels=frozenset({"corsia_eligible"}),
)
"""VCUs meeting every first-phase condition: host letter, adjustment, registry tag."""
PLAIN = ORIGIN.with_range(START + 1000, START + 1999)
"""VCUs with none of them."""


class SecondPhaseClock:
    """Real time, moved to 10:00 market time (UTC+8) on 1 March 2027."""

    def __init__(self) -> None:
        self._start = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
        self._began = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=time.monotonic() - self._began)


def _seed(registries: LinkedRegistries, block: UnitBlock, label: str) -> None:
    """Verra issues ``block`` into the HK venue's account; the venue books it for the seller."""
    registries.ports["verra"].issue(IssueRequest(f"seed-{label}", venue_account("hkmo"), block))
    registries.ports["hkmo"].credit(
        CreditRequest(f"deposit-{label}", "hk-seller", block, "verra", "seed")
    )


@pytest.fixture
def march_2027(database_url: str) -> Iterator[LiveGateway]:
    clock = SecondPhaseClock()
    with linked_registries(clock=clock) as registries:
        _seed(registries, ELIGIBLE, "eligible")
        _seed(registries, PLAIN, "plain")
        with running_gateway(database_url, registries, clock=clock) as gateway:
            yield gateway


def _corsia(
    start: int, end: int, compliance_year: int = 0, use: str = "corsia"
) -> model_pb2.TransferInstruction:
    return model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        destination=model_pb2.AccountRef(registry="shenzhen", account="airline"),
        units=[
            model_pb2.UnitSelector(
                block=model_pb2.BlockId(program="VCS", serial_start=start, serial_end=end)
            )
        ],
        intended_use=use,
        compliance_year=compliance_year,
    )


def _submit(
    gateway: LiveGateway, request_id: str, instruction: model_pb2.TransferInstruction
) -> model_pb2.Transfer:
    transfer: model_pb2.Transfer = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(request_id=request_id, instruction=instruction),
        timeout=60,
    )
    return transfer


def _rule_ids(transfer: model_pb2.Transfer) -> set[str]:
    return {v.rule_id for v in transfer.decision.violations}


def test_a_first_phase_obligation_is_decided_under_the_first_phase(
    march_2027: LiveGateway,
) -> None:
    moved = _submit(march_2027, "airline-2026", _corsia(START, START + 99, 2026))
    assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
    assert "corsia@2024-10-31" in moved.decision.pack_versions
    assert moved.instruction.compliance_year == 2026
    read = march_2027.stub.GetTransfer(gateway_pb2.GetTransferRequest(name=moved.name), timeout=30)
    assert read.instruction.compliance_year == 2026
    assert read.instruction.intended_use == "corsia"

    # Units without a letter, an adjustment or the registry's tag fail the first phase's
    # own rules, not the second phase's missing list.
    refused = _submit(march_2027, "airline-2026-plain", _corsia(START + 1000, START + 1099, 2026))
    assert refused.state == model_pb2.TRANSFER_STATE_REJECTED
    assert _rule_ids(refused) == {"CR-CORSIA-0005", "CR-CORSIA-0006", "CR-CORSIA-0007"}


@pytest.mark.parametrize("compliance_year", [0, 2027])
def test_a_second_phase_or_unnamed_obligation_is_refused_for_the_missing_list(
    march_2027: LiveGateway, compliance_year: int
) -> None:
    refused = _submit(
        march_2027, f"airline-{compliance_year}", _corsia(START, START + 99, compliance_year)
    )
    assert refused.state == model_pb2.TRANSFER_STATE_REJECTED
    assert _rule_ids(refused) == {"CR-CORSIA-0008"}
    assert "corsia@2027-01-01" in refused.decision.pack_versions
    assert refused.instruction.compliance_year == compliance_year


def _field_violations(error: grpc.RpcError | status_pb2.Status) -> list[tuple[str, str]]:
    status = error if isinstance(error, status_pb2.Status) else rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [(v.field, v.description) for v in bad_request.field_violations]


@pytest.mark.parametrize(
    ("use", "year", "problem"),
    [
        ("holding", 2026, "only for intended use 'corsia', not 'holding'"),
        ("corsia", 2020, "2020 is not a CORSIA compliance year"),
        ("corsia", 2101, "2101 is not a CORSIA compliance year"),
    ],
)
def test_a_bad_compliance_year_is_invalid_and_changes_nothing(
    march_2027: LiveGateway, use: str, year: int, problem: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _submit(march_2027, "airline-bad", _corsia(START, START + 99, year, use))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = _field_violations(caught.value)
    assert field == "instruction.compliance_year"
    assert problem in description
    batch = march_2027.stub.SubmitTransfers(
        gateway_pb2.SubmitTransfersRequest(
            transfers=[
                gateway_pb2.SubmitTransferRequest(
                    request_id="airline-bad", instruction=_corsia(START, START + 99, year, use)
                )
            ]
        ),
        timeout=60,
    )
    (result,) = batch.results
    assert result.WhichOneof("outcome") == "error"
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [f for f, _ in _field_violations(result.error)] == [
        "transfers[0].instruction.compliance_year"
    ]
    listed = march_2027.stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=30)
    assert list(listed.transfers) == []
    # The request id was not taken.
    moved = _submit(march_2027, "airline-bad", _corsia(START, START + 99, 2026))
    assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--insecure"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_names_the_obligation_year(
    march_2027: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    submit = (
        "transfer",
        "submit",
        "--target",
        march_2027.target,
        "--from",
        "hkmo:hk-seller",
        "--to",
        "shenzhen:airline",
        "--block",
        f"VCS:{START}-{START + 9}",
        "--compliance-year",
        "2026",
    )
    code, out, err = _cli(capsys, *submit)
    assert code == 2
    assert out == ""
    assert "carbonlink transfer submit: --compliance-year" in err
    assert "needs --use corsia, not --use holding" in err

    code, out, err = _cli(capsys, *submit, "--use", "corsia", "--json")
    assert code == 0, err
    transfer = json.loads(out)
    assert transfer["state"] == "TRANSFER_STATE_COMPLETED"
    assert transfer["instruction"]["complianceYear"] == 2026

    code, out, err = _cli(
        capsys, "transfer", "get", transfer["name"], "--target", march_2027.target, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["instruction"]["complianceYear"] == 2026
