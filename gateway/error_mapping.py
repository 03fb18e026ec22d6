"""Domain errors to gRPC status codes, in one table, with ``google.rpc`` details.

The interceptor here wraps every RPC handler: it binds the request id and method to the
log context, turns a ``CarbonlinkError`` into its status with rich details, and turns
anything else into INTERNAL with a generic message and one full log line.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.handlers import StreamBehavior, UnaryBehavior, wrap_behavior
from registry_bridge.errors import (
    Abandoned,
    CarbonlinkError,
    DatabaseUnavailable,
    FailedPrecondition,
    InvalidRequest,
    LedgerConflict,
    NotFound,
    NotYetImplemented,
    PermissionDenied,
    RegistryRejected,
    RegistryUnavailable,
    RequestIdConflict,
    ResourceExhausted,
    Unauthenticated,
)

_logger = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "x-request-id"

# The most specific class wins: the first entry the error is an instance of.
_STATUS_TABLE: tuple[tuple[type[CarbonlinkError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (RequestIdConflict, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (LedgerConflict, grpc.StatusCode.ABORTED),
    (RegistryUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotYetImplemented, grpc.StatusCode.UNIMPLEMENTED),
    # The caller is gone and reads no answer; the status is for the server's own log.
    (Abandoned, grpc.StatusCode.CANCELLED),
)

INTERNAL_MESSAGE = "internal error; the gateway logged the details under this request id"

MAX_MESSAGE_BYTES = 1024
"""Longest status message sent (UTF-8 bytes): a message repeats what it refuses, and a
refused value may be as long as the request."""
MAX_DETAIL_TEXT_BYTES = 256
"""Longest field, subject or description of one violation in a status's details."""
MAX_STATUS_BYTES = 3072
"""Largest serialized status, details and all. A status travels in the trailers, twice
(``grpc-message``, and ``grpc-status-details-bin`` in base64), and a client refuses
trailers past 8 KiB (gRPC's default metadata limit: RESOURCE_EXHAUSTED naming nothing)."""


def status_code_for(error: CarbonlinkError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    for kind, code in _STATUS_TABLE:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (and a marker) when longer."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 5].decode(errors="ignore") + " [..]"


def to_rpc_status(error: CarbonlinkError) -> status_pb2.Status:
    """A ``google.rpc.Status`` for the error, with BadRequest or PreconditionFailure details,
    within ``MAX_STATUS_BYTES``: every text clipped, and the violations past the budget
    left out (the message says how many)."""
    code = status_code_for(error)
    message = str(error)
    text = MAX_DETAIL_TEXT_BYTES
    detail: Message | None = None
    violations: Any = ()
    if isinstance(error, InvalidRequest) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clipped(v.field, text), description=clipped(v.description, text)
                )
                for v in error.violations
            ]
        )
        detail, violations = bad_request, bad_request.field_violations
    elif isinstance(error, FailedPrecondition) and error.violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=clipped(v.type, text),
                    subject=clipped(v.subject, text),
                    description=clipped(v.description, text),
                )
                for v in error.violations
            ]
        )
        detail, violations = failure, failure.violations
    elif isinstance(error, RegistryRejected):
        detail = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=clipped(f"REGISTRY_{error.code}", text),
                    subject=clipped(error.registry, text),
                    description=clipped(message, text),
                )
            ]
        )
    # What the message may take leaves the rest of the budget to the violations, the
    # first ones kept (each violation costs its size and a few bytes of framing).
    room = MAX_STATUS_BYTES - MAX_MESSAGE_BYTES - 64
    kept = 0
    for violation in violations:
        room -= violation.ByteSize() + 4
        if room < 0 and kept:
            break
        kept += 1
    left_out = len(violations) - kept
    if left_out:
        del violations[kept:]
        note = f" ({left_out} more violations left out)"
        message = clipped(message, MAX_MESSAGE_BYTES - len(note)) + note
    status = status_pb2.Status(code=code.value[0], message=clipped(message, MAX_MESSAGE_BYTES))
    if detail is not None:
        status.details.append(_pack(detail))
    if isinstance(error, ResourceExhausted):
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=clipped(getattr(error, "subject", ""), text),
                    description=clipped(getattr(error, "description", message), text),
                )
            ]
        )
        status.details.append(_pack(quota))
        retry_after = getattr(error, "retry_after_seconds", None)
        if retry_after is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromNanoseconds(math.ceil(retry_after * 1e9))
            status.details.append(_pack(retry))
    return status


def internal_status() -> status_pb2.Status:
    """The status every unexpected error becomes: INTERNAL, with nothing leaked."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    # NOTE(carbonlink): grpc ships no type stubs here, so its base class is Any.
    """Binds request context to logs and maps every error leaving a handler."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_behavior(handler, handler_call_details.method, _wrap_unary, _wrap_stream)


def _enter(context: grpc.ServicerContext, method: str) -> str:
    request_id = _request_id(context)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
    context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
    return request_id


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, CarbonlinkError):
        status = to_rpc_status(exc)
        # As sent: a refused value may be as long as the request, and is the caller's.
        _logger.info("rpc_failed", code=status_code_for(exc).name, error=status.message)
    else:
        status = internal_status()
        _logger.exception("rpc_internal_error", error_type=type(exc).__name__)
    context.abort_with_status(rpc_status.to_status(status))


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    # A handler that aborted on purpose raises a bare Exception after setting the code.
    return type(exc) is Exception and context.code() is not None


def _wrap_unary(behavior: UnaryBehavior, method: str) -> UnaryBehavior:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        _enter(context, method)
        try:
            return behavior(request, context)
        except Exception as exc:
            if _is_abort(exc, context):
                raise
            _abort(context, exc)
            raise  # unreachable: abort_with_status raises
        finally:
            structlog.contextvars.clear_contextvars()

    return wrapped


def _wrap_stream(behavior: StreamBehavior, method: str) -> StreamBehavior:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        request_id = _enter(context, method)
        try:
            for item in behavior(request, context):
                structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
                yield item
        except Exception as exc:
            if _is_abort(exc, context):
                raise
            _abort(context, exc)
            raise
        finally:
            structlog.contextvars.clear_contextvars()

    return wrapped
