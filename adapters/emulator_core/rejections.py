"""How an emulated registry answers a refusal: a gRPC status plus its own rejection code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import grpc

from adapters.client_core import REJECTION_CODE_KEY
from adapters.emulator_core.store import Rejection

_STATUS_OF_CODE: dict[str, grpc.StatusCode] = {
    "UNITS_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "DUPLICATE_ISSUANCE": grpc.StatusCode.ALREADY_EXISTS,
    "DUPLICATE_MIRROR": grpc.StatusCode.ALREADY_EXISTS,
    "DUPLICATE_CREDIT": grpc.StatusCode.ALREADY_EXISTS,
    "OPERATION_ID_REUSED": grpc.StatusCode.ALREADY_EXISTS,
    "INVALID_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_ACCOUNT": grpc.StatusCode.INVALID_ARGUMENT,
    "OPERATION_ID_REQUIRED": grpc.StatusCode.INVALID_ARGUMENT,
    "BATCH_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "INVALID_PAGE_SIZE": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_PAGE_TOKEN": grpc.StatusCode.INVALID_ARGUMENT,
}


def abort_rejected(context: grpc.ServicerContext, rejection: Rejection) -> NoReturn:
    """End a call with the registry's rejection: a gRPC status plus its own code."""
    context.set_trailing_metadata(((REJECTION_CODE_KEY, rejection.code),))
    context.abort(
        _STATUS_OF_CODE.get(rejection.code, grpc.StatusCode.FAILED_PRECONDITION),
        rejection.message,
    )
    raise AssertionError("context.abort returned")  # pragma: no cover


@contextmanager
def native_rules(context: grpc.ServicerContext) -> Iterator[None]:
    """Answer a :class:`Rejection` (or a malformed native value) as a rejected call."""
    try:
        yield
    except Rejection as rejection:
        abort_rejected(context, rejection)
    except ValueError as exc:
        # A native message that does not translate (a bad date, an unknown program).
        abort_rejected(context, Rejection("INVALID_REQUEST", str(exc)))
