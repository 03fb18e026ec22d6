"""A NUL or control character in any string of a request: a typed refusal, never INTERNAL.

PostgreSQL cannot hold a NUL in a text value: the driver raises on it, in a query as in an
insert, so a NUL that reaches SQL answers INTERNAL there while SQLite takes it. Each case
starts from a request the gateway accepts and puts a NUL into one of its strings at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from tests.integration.gateway.conftest import VERRA_SERIAL, LiveGateway

_NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_HKMO = model_pb2.AccountRef(registry="hkmo", account="hk-seller")
_UNITS = [
    model_pb2.UnitSelector(
        block=model_pb2.BlockId(program="VCS", serial_start=115597313, serial_end=115597322)
    )
]
_INSTRUCTION = model_pb2.TransferInstruction(
    source=_HKMO,
    destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
    units=_UNITS,
    settlement=model_pb2.Settlement(currency="HKD", amount="10", trade_reference="t-1"),
)
_PLAN = gateway_pb2.PlanMigrationRequest(
    entity_id="steelco", from_jurisdiction="shenzhen", to_jurisdiction="national", first_year=2025
)
_ENTITY = gateway_pb2.CoveredEntity(
    entity_id="steelco",
    display_name="Steel Co",
    sector="steel",
    gases=["CO2"],
    accounts=[model_pb2.AccountRef(registry="shenzhen", account="steel-sz")],
    years=[
        gateway_pb2.ComplianceYear(
            jurisdiction="shenzhen", compliance_year=2024, verified_emissions=1, allowances_due=1
        )
    ],
)

# One request each method accepts (or refuses for a reason of its own), in which every
# string is set.
BASELINES: dict[str, Message] = {
    "ParseSerial": gateway_pb2.ParseSerialRequest(registry="verra", serial=VERRA_SERIAL),
    "ListProject": gateway_pb2.ListProjectRequest(
        request_id="list-1",
        project=model_pb2.Project(
            program="VCS",
            project_id="1060",
            display_name="Wind",
            project_type="wind",
            methodology="ACM0002",
            country="US",
            region="TX",
            start_date="2019-01-01",
            crediting_period_start="2019-01-01",
            crediting_period_end="2028-12-31",
        ),
        jurisdiction="hkmo",
        as_of="2024-06-01",
    ),
    "EvaluateTransfer": gateway_pb2.EvaluateTransferRequest(instruction=_INSTRUCTION),
    "SubmitTransfer": gateway_pb2.SubmitTransferRequest(
        request_id="trade-1", instruction=_INSTRUCTION
    ),
    "SubmitTransfers": gateway_pb2.SubmitTransfersRequest(
        request_id="batch-1",
        transfers=[gateway_pb2.SubmitTransferRequest(request_id="t-1", instruction=_INSTRUCTION)],
    ),
    "GetTransfer": gateway_pb2.GetTransferRequest(name="transfers/abc"),
    "GetListing": gateway_pb2.GetListingRequest(name="listings/abc"),
    "ListTransfers": gateway_pb2.ListTransfersRequest(registry="hkmo"),
    "WatchTransfer": gateway_pb2.WatchTransferRequest(name="transfers/abc"),
    "Retire": gateway_pb2.RetireRequest(
        request_id="retire-1",
        account=_HKMO,
        units=_UNITS,
        beneficiary="Acme",
        claim_text="offsetting 2024",
    ),
    "Surrender": gateway_pb2.SurrenderRequest(
        request_id="surrender-1",
        account=_HKMO,
        units=_UNITS,
        entity_id="steelco",
        compliance_year=2024,
        jurisdiction="shenzhen",
    ),
    "GetUse": gateway_pb2.GetUseRequest(name="uses/abc"),
    "ListUses": gateway_pb2.ListUsesRequest(
        kind="retirement", holder=model_pb2.AccountRef(registry="hkmo", account="hk-seller")
    ),
    "ResolveUse": gateway_pb2.ResolveUseRequest(
        request_id="resolve-1",
        name="uses/abc",
        action=model_pb2.USE_RESOLUTION_ACTION_SETTLE_MANUALLY,
        reason="settled at the venue, ticket HK-1",
    ),
    "PlanMigration": _PLAN,
    "ExecuteMigration": gateway_pb2.ExecuteMigrationRequest(request_id="move-1", plan=_PLAN),
    "GetMigration": gateway_pb2.GetMigrationRequest(name="migrations/abc"),
    "UpsertCoveredEntity": gateway_pb2.UpsertCoveredEntityRequest(
        request_id="entity-1", entity=_ENTITY
    ),
    "TraceUnits": gateway_pb2.TraceUnitsRequest(
        block=model_pb2.BlockId(
            program="VCS", serial_series="s", serial_start=115597313, serial_end=115597322
        )
    ),
    "Reconcile": gateway_pb2.ReconcileRequest(request_id="rec-1", registries=["verra"]),
}


def _string_paths(message: Message, prefix: str = "") -> Iterator[str]:
    """The path of every string set in ``message``, e.g. ``instruction.units[0].serial``."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        for i, item in enumerate(items):
            here = f"{path}[{i}]" if repeated else path
            if field.type == FieldDescriptor.TYPE_STRING:
                yield here
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _string_paths(item, f"{here}.")


def _with(message: Message, path: str, suffix: str) -> Message:
    """A copy of ``message`` with ``suffix`` appended to the string at ``path``, and every
    other request id made new (a request id used before answers before any other check)."""
    copy = type(message)()
    copy.CopyFrom(message)
    for other in _string_paths(message):
        if other != path and other.rsplit(".", 1)[-1] == "request_id":
            _append(copy, other, f"-{uuid.uuid4().hex}")
    _append(copy, path, suffix)
    return copy


def _append(message: Message, path: str, suffix: str) -> None:
    change_string(message, path, lambda value: value + suffix)


def change_string(message: Message, path: str, change: Callable[[str], str]) -> None:
    """Replace the string at ``path`` (``a.b[2].c``) in ``message`` by ``change`` of it."""
    *parents, leaf = path.split(".")
    target: Message = message
    for part in parents:
        name, _, index = part.partition("[")
        child = getattr(target, name)
        target = child[int(index[:-1])] if index else child
    name, _, index = leaf.partition("[")
    if index:
        values = getattr(target, name)
        values[int(index[:-1])] = change(values[int(index[:-1])])
    else:
        setattr(target, name, change(getattr(target, name)))


def _rows(gateway: LiveGateway) -> dict[str, int]:
    with gateway.server.engine.connect() as connection:
        return {
            table: int(connection.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())
            for table in sa.inspect(connection).get_table_names()
            # Filled lazily from the provenance log on a read: a cache, not state.
            if table != "merkle_nodes"
        }


def _code(gateway: LiveGateway, method: str, request: Message) -> grpc.StatusCode:
    service = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"]
    path = f"/{service.full_name}/{method}"
    serializer = type(request).SerializeToString
    try:
        if service.methods_by_name[method].server_streaming:
            for _ in gateway.channel.unary_stream(path, request_serializer=serializer)(
                request, timeout=30
            ):
                pass
        else:
            gateway.channel.unary_unary(path, request_serializer=serializer)(request, timeout=30)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_a_nul_in_any_string_is_refused_as_bad_input(
    live_gateway: LiveGateway, method: str
) -> None:
    baseline = BASELINES[method]
    failures = []
    for path in _string_paths(baseline):
        before = _rows(live_gateway)
        code = _code(live_gateway, method, _with(baseline, path, "\x00"))
        if code in _NEVER:
            failures.append(f"{path}: {code.name}")
        elif code != grpc.StatusCode.OK and _rows(live_gateway) != before:
            failures.append(f"{path}: refused ({code.name}) yet changed rows")
    assert failures == []


@pytest.mark.parametrize("method", ["SubmitTransfer", "Retire", "ExecuteMigration"])
def test_a_request_id_with_a_control_character_is_refused_by_name(
    live_gateway: LiveGateway, method: str
) -> None:
    request = _with(BASELINES[method], "request_id", "\n")
    service = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"]
    call = live_gateway.channel.unary_unary(
        f"/{service.full_name}/{method}", request_serializer=type(request).SerializeToString
    )
    before = _rows(live_gateway)
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id: contains control characters" in (caught.value.details() or "")
    assert _rows(live_gateway) == before


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_a_string_far_too_long_anywhere_is_refused_by_its_field(
    live_gateway: LiveGateway, method: str
) -> None:
    """A refusal that repeated the whole bad value outgrew what a client reads of a
    status (gRPC's metadata limit: 8 KiB taken, 16 KiB refused), and the client got
    RESOURCE_EXHAUSTED naming nothing; the batch's own request id was not checked at all."""
    baseline = BASELINES[method]
    failures = []
    for path in _string_paths(baseline):
        request = _with(baseline, path, "x" * 20_000)
        before = _rows(live_gateway)
        try:
            reply = _call(live_gateway, method, request)
            if method == "SubmitTransfers":
                # Each instruction of a batch is answered on its own, in the reply.
                (result,) = gateway_pb2.SubmitTransfersResponse.FromString(reply).results
                if result.WhichOneof("outcome") != "error":
                    failures.append(f"{path}: accepted")
                elif result.error.code != grpc.StatusCode.INVALID_ARGUMENT.value[0]:
                    failures.append(f"{path}: {result.error.code} in the batch's reply")
                elif len(result.error.message) > 1024:
                    failures.append(f"{path}: a {len(result.error.message)}-character error")
            else:
                failures.append(f"{path}: accepted")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                failures.append(f"{path}: {exc.code().name}")
            else:
                status = rpc_status.from_call(exc)
                assert status is not None
                named = [
                    v.field
                    for detail in status.details
                    if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
                    for v in _unpacked_bad_request(detail).field_violations
                ]
                if not any(path.startswith(field) for field in named):
                    failures.append(f"{path}: refused naming {named}")
        if _rows(live_gateway) != before:
            failures.append(f"{path}: changed rows")
    assert failures == []


def _call(gateway: LiveGateway, method: str, request: Message) -> Any:
    """The serialized reply of ``method`` (the last message of a stream)."""
    service = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"]
    path = f"/{service.full_name}/{method}"
    serializer = type(request).SerializeToString
    if service.methods_by_name[method].server_streaming:
        return list(gateway.channel.unary_stream(path, request_serializer=serializer)(request))[-1]
    return gateway.channel.unary_unary(path, request_serializer=serializer)(request, timeout=30)


def _unpacked_bad_request(detail: Any) -> error_details_pb2.BadRequest:
    bad_request = error_details_pb2.BadRequest()
    detail.Unpack(bad_request)
    return bad_request


@pytest.mark.parametrize(
    ("beneficiary", "says"),
    [
        ("   ", "beneficiary: is blank"),
        # Printed by `carbonlink use get` and every listing: a line of the attacker's.
        ("Acme\nretired for: Someone Else", "beneficiary: contains control characters"),
        ("Acme\x1b[2J", "beneficiary: contains control characters"),
    ],
)
def test_a_retirement_for_no_one_is_refused_by_name(
    live_gateway: LiveGateway, beneficiary: str, says: str
) -> None:
    # A retirement cannot be undone: one recorded for a blank beneficiary, or for a name
    # that rewrites the terminal it is read on, stands as the claim for good.
    request = gateway_pb2.RetireRequest.FromString(BASELINES["Retire"].SerializeToString())
    request.request_id = f"retire-{uuid.uuid4().hex}"
    request.beneficiary = beneficiary
    before = _rows(live_gateway)
    with pytest.raises(grpc.RpcError) as caught:
        live_gateway.stub.Retire(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (caught.value.details() or "")
    assert _rows(live_gateway) == before
