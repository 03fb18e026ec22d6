"""Wrapping a gRPC method handler's behaviour, as the gateway's server interceptors do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

UnaryBehavior = Callable[[Any, grpc.ServicerContext], Any]
"""A unary-unary handler's behaviour: request and context in, response out."""
StreamBehavior = Callable[[Any, grpc.ServicerContext], Iterator[Any]]
"""A unary-stream handler's behaviour: request and context in, responses out."""
SERVICE_PREFIX = "/carbonlink.v1.LinkageGateway/"
"""The start of every full method name of the gateway service."""


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


class GatewayCallInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    # NOTE(carbonlink): grpc ships no type stubs here, so its base class is Any.
    """Wraps the behaviour of each call of the gateway service with ``_unary`` or
    ``_stream``; health and reflection calls pass as they are."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or not full_method.startswith(SERVICE_PREFIX):
            return handler
        return wrap_behavior(handler, full_method, self._unary, self._stream)

    def _unary(self, behavior: UnaryBehavior, full_method: str) -> UnaryBehavior:
        raise NotImplementedError  # each interceptor wraps both kinds of call

    def _stream(self, behavior: StreamBehavior, full_method: str) -> StreamBehavior:
        raise NotImplementedError
