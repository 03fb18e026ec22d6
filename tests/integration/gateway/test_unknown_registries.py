"""A registry id that names no registry is refused by its field, naming it and every known id.

One wording wherever a registry id enters the API (ParseSerial, TraceUnits, transfer
instructions, retirements, surrenders, covered entities, the transfer and use filters,
reconciliation), the ``serial`` command's own: a caller who mistyped a registry reads which
field held it and what to type instead, and nothing changes.
"""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.message import Message

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import REGISTRY_IDS
from gateway.convert import MAX_LIST_ENTRIES
from tests.integration.gateway.conftest import VERRA_SERIAL, LiveGateway
from tests.integration.gateway.test_hostile_strings import (
    BASELINES,
    _string_paths,
    change_string,
)

UNKNOWN = "vera"
REASON = f"unknown registry {UNKNOWN!r}; known registries: {', '.join(REGISTRY_IDS)}"

# ParseSerial and TraceUnits take a registry with a serial; the baselines' TraceUnits asks
# by block, so it is asked by serial here.
REQUESTS: dict[str, Message] = {
    **BASELINES,
    "TraceUnits": gateway_pb2.TraceUnitsRequest(registry="verra", serial=VERRA_SERIAL),
}


def _registry_paths(message: Message) -> list[str]:
    """The path of every registry id in ``message``: ``registry``, ``registries[0]``,
    ``instruction.source.registry``..."""
    return [
        path
        for path in _string_paths(message)
        if path.rsplit(".", 1)[-1].partition("[")[0] in ("registry", "registries")
    ]


def _with_value(message: Message, path: str, value: str) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    change_string(copy, path, lambda _: value)
    return copy


def _rows(gateway: LiveGateway) -> dict[str, int]:
    with gateway.server.engine.connect() as connection:
        return {
            table: int(connection.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())
            for table in sa.inspect(connection).get_table_names()
            if table != "merkle_nodes"
        }


def _refusal(gateway: LiveGateway, method: str, request: Message) -> tuple[grpc.StatusCode, str]:
    """The code and message a call is refused with (OK and '' if it is not)."""
    service = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"]
    call = gateway.channel.unary_unary(
        f"/{service.full_name}/{method}", request_serializer=type(request).SerializeToString
    )
    try:
        reply = call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    if method == "SubmitTransfers":
        # Refused item by item, each with its status.
        answer = gateway_pb2.SubmitTransfersResponse.FromString(reply)
        error = answer.results[0].error
        return grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == error.code)), (
            error.message
        )
    return grpc.StatusCode.OK, ""


def test_every_registry_field_names_an_unknown_registry_and_the_known_ones(
    live_gateway: LiveGateway,
) -> None:
    cases = [
        (method, path) for method in sorted(REQUESTS) for path in _registry_paths(REQUESTS[method])
    ]
    # Every place a registry id enters the API is covered.
    assert {method for method, _ in cases} == {
        "EvaluateTransfer",
        "ListTransfers",
        "ListUses",
        "ParseSerial",
        "Reconcile",
        "Retire",
        "SubmitTransfer",
        "SubmitTransfers",
        "Surrender",
        "TraceUnits",
        "UpsertCoveredEntity",
    }
    failures = []
    for method, path in cases:
        before = _rows(live_gateway)
        code, message = _refusal(live_gateway, method, _with_value(REQUESTS[method], path, UNKNOWN))
        field = path.removeprefix("transfers[0].") if method == "SubmitTransfers" else path
        if code != grpc.StatusCode.INVALID_ARGUMENT or f"{field}: {REASON}" not in message:
            failures.append(f"{method} {path}: {code.name} {message!r}")
        if _rows(live_gateway) != before:
            failures.append(f"{method} {path}: refused, yet changed rows")
    assert failures == []


def test_an_unknown_source_registry_is_named_once_not_against_each_serial(
    live_gateway: LiveGateway,
) -> None:
    instruction = model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry=UNKNOWN, account="hk-seller"),
        destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
        units=[model_pb2.UnitSelector(serial=VERRA_SERIAL)] * 3,
    )

    with pytest.raises(grpc.RpcError) as refused:
        live_gateway.stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=instruction), timeout=30
        )

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"instruction.source.registry: {REASON}"


def test_a_known_registry_the_gateway_is_not_wired_to_is_named_with_the_wired_ones(
    live_gateway: LiveGateway,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        live_gateway.stub.Reconcile(
            gateway_pb2.ReconcileRequest(registries=["verra", "national"]), timeout=30
        )

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "registries[1]: registry 'national' is not wired in this gateway; "
        "wired registries: hkmo, shenzhen, verra"
    )


def test_a_reconciliation_of_more_registries_than_its_cap_is_refused_once(
    live_gateway: LiveGateway,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        live_gateway.stub.Reconcile(
            gateway_pb2.ReconcileRequest(registries=[UNKNOWN] * 100_000), timeout=30
        )

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (f"registries: holds more than {MAX_LIST_ENTRIES} registries")


def test_a_transfer_or_use_at_a_registry_not_wired_names_the_wired_ones(
    live_gateway: LiveGateway,
) -> None:
    wired = (
        "registry 'national' is not wired in this gateway; wired registries: hkmo, shenzhen, verra"
    )
    instruction = model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        destination=model_pb2.AccountRef(registry="national", account="buyer"),
        units=[model_pb2.UnitSelector(serial=VERRA_SERIAL)],
    )
    with pytest.raises(grpc.RpcError) as refused:
        live_gateway.stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=instruction), timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"instruction.destination.registry: {wired}"
    with pytest.raises(grpc.RpcError) as refused:
        live_gateway.stub.Retire(
            gateway_pb2.RetireRequest(
                request_id="retire-national",
                account=model_pb2.AccountRef(registry="national", account="cn-holder"),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(program="CCER", serial_start=1, serial_end=9)
                    )
                ],
                beneficiary="someone",
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"account.registry: {wired}" in (refused.value.details() or "")
