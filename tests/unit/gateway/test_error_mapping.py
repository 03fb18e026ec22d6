from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from gateway.error_mapping import (
    MAX_MESSAGE_BYTES,
    MAX_STATUS_BYTES,
    internal_status,
    status_code_for,
    to_rpc_status,
)
from registry_bridge.errors import (
    Abandoned,
    CarbonlinkError,
    DatabaseUnavailable,
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    LedgerConflict,
    NotFound,
    NotYetImplemented,
    PreconditionViolation,
    RegistryRejected,
    RegistryUnavailable,
    RequestIdConflict,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("transfers/x"), grpc.StatusCode.NOT_FOUND),
        (RequestIdConflict("reused"), grpc.StatusCode.ALREADY_EXISTS),
        (FailedPrecondition("no"), grpc.StatusCode.FAILED_PRECONDITION),
        (
            RegistryRejected("verra", "RETIRED", "units retired"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (LedgerConflict("raced"), grpc.StatusCode.ABORTED),
        (RegistryUnavailable("verra", "timeout"), grpc.StatusCode.UNAVAILABLE),
        (DatabaseUnavailable("connection lost"), grpc.StatusCode.UNAVAILABLE),
        (NotYetImplemented("X", issue=6), grpc.StatusCode.UNIMPLEMENTED),
        (Abandoned("caller gone"), grpc.StatusCode.CANCELLED),
    ],
)
def test_each_error_has_its_code(error: CarbonlinkError, code: grpc.StatusCode) -> None:
    assert status_code_for(error) == code
    assert to_rpc_status(error).code == code.value[0]


def test_invalid_request_carries_field_violations() -> None:
    error = InvalidRequest(
        "two bad fields",
        [
            FieldViolation("instruction.source.registry", "unknown registry 'x'"),
            FieldViolation("instruction.units", "must not be empty"),
        ],
    )
    status = to_rpc_status(error)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == [
        "instruction.source.registry",
        "instruction.units",
    ]


def test_failed_precondition_carries_violations() -> None:
    error = FailedPrecondition(
        "denied", [PreconditionViolation("RULE", "CR-NAT-0001", "offset limit exceeded")]
    )
    failure = error_details_pb2.PreconditionFailure()
    assert to_rpc_status(error).details[0].Unpack(failure)
    assert failure.violations[0].subject == "CR-NAT-0001"


def test_internal_status_leaks_nothing() -> None:
    status = internal_status()
    assert status.code == code_pb2.INTERNAL
    assert "Traceback" not in status.message
    assert not status.details


def test_a_status_fits_what_a_client_reads_however_much_it_refuses() -> None:
    """Each text clipped, the violations past the budget left out and counted: a client
    refuses trailers past 8 KiB, and the status travels in them twice (once in base64)."""
    long = "é" * 10_000
    many = InvalidRequest(
        f"units: {long}",
        [
            FieldViolation(f"units[{i}].block", f"{long!r} is not a valid Program")
            for i in range(999)
        ],
    )
    status = to_rpc_status(many)
    assert status.ByteSize() <= MAX_STATUS_BYTES
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    kept = len(bad_request.field_violations)
    assert 1 <= kept < 999
    assert bad_request.field_violations[0].field == "units[0].block"
    assert status.message.endswith(f"({999 - kept} more violations left out)")
    one = to_rpc_status(FailedPrecondition(long, [PreconditionViolation("T", long, long)]))
    assert one.ByteSize() <= MAX_STATUS_BYTES
    assert len(one.details) == 1
    # What fits is sent as it is.
    short = to_rpc_status(InvalidRequest.field("serial", "is required"))
    assert short.message == "serial: is required"
