"""The calls a gateway is serving, so that a stop can wait for them and name those it leaves.

gRPC's ``server.stop(grace)`` cancels the calls still running when the grace period ends,
but it cannot stop the handler threads that serve them: a handler waiting on a registry
that does not answer runs on until its own deadlines pass. Python joins those threads
when the process exits, so such a handler held ``carbonlink serve`` up long after the
grace period a supervisor allows. Counting calls lets the stop wait exactly until they
are done, or until its deadline, and then say which calls it gives up on.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from gateway.handlers import StreamBehavior, UnaryBehavior, wrap_behavior


class InFlightCalls(grpc.ServerInterceptor):  # type: ignore[misc]
    # NOTE(carbonlink): grpc ships no type stubs here, so its base class is Any.
    """Counts the calls being served, per method, from a handler's start to its end."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: Counter[str] = Counter()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_behavior(
            handler, handler_call_details.method, self._count_unary, self._count_stream
        )

    def wait_until_idle(self, timeout_seconds: float) -> dict[str, int]:
        """Wait until no call is being served, for at most ``timeout_seconds``.

        Returns:
            The calls, by full method name, still being served when the wait ended (empty
            when none); with a timeout of 0, those being served now.
        """
        deadline = time.monotonic() + max(timeout_seconds, 0.0)
        with self._changed:
            while +self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return dict(+self._running)

    def _enter(self, method: str) -> None:
        with self._changed:
            self._running[method] += 1

    def _leave(self, method: str) -> None:
        with self._changed:
            self._running[method] -= 1
            self._changed.notify_all()

    def _count_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            self._enter(method)
            try:
                return behavior(request, context)
            finally:
                self._leave(method)

        return counted

    def _count_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        def counted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # Counted from the first item asked for: a generator's body runs only then.
            self._enter(method)
            try:
                yield from behavior(request, context)
            finally:
                # Also when gRPC drops a cancelled stream: the generator is closed then.
                self._leave(method)

        return counted
