"""Channels to a gateway process that is starting or restarting, dialled again at once.

A gRPC channel refused by an address waits before it dials again: 1 s, then 1.6 times
longer each time (jittered). A gateway process takes about a second to start, so a
channel opened with it was most often told it is ready one to two seconds after it
served, and a client's channel to a gateway killed and restarted, as long again. These
channels dial every 50 ms (up to 200 ms apart): a test sees a gateway as soon as it
serves, and waits for nothing else.
"""

from __future__ import annotations

import grpc

QUICK_REDIAL: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
"""Channel options: dial an address that refused again within 50 to 200 ms."""


def quick_redial_channel(target: str) -> grpc.Channel:
    """An insecure channel to ``target`` that dials again soon after a refusal."""
    return grpc.insecure_channel(target, options=QUICK_REDIAL)


def wait_serving(target: str, timeout_s: float) -> None:
    """Return once a gRPC server answers at ``target``.

    Raises:
        grpc.FutureTimeoutError: None answered within ``timeout_s``.
    """
    with quick_redial_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
