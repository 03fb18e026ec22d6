"""Wrapping a gRPC method handler's behaviour, as the gateway's server interceptors do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

UnaryBehavior = Callable[[Any, grpc.ServicerContext], Any]
"""A unary-unary handler's behaviour: request and context in, response out."""
StreamBehavior = Callable[[Any, grpc.ServicerContext], Iterator[Any]]
"""A unary-stream handler's behaviour: request and context in, responses out."""


def wrap_behavior(
    handler: grpc.RpcMethodHandler,
    method: str,
    unary: Callable[[UnaryBehavior, str], UnaryBehavior],
    stream: Callable[[StreamBehavior, str], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped by ``unary`` or ``stream`` (given ``method``).

    The gateway serves only unary-unary and unary-stream calls; a handler of another kind
    is returned as it is.
    """
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary(handler.unary_unary, method))
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=stream(handler.unary_stream, method))
    return handler
