"""Channels to a gateway process that is starting or restarting, dialled again at once.

A gRPC channel refused by an address waits before it dials again: 1 s, then 1.6 times
longer each time (jittered). A gateway process takes about a second to start, so a
channel opened with it was most often told it is ready one to two seconds after it
served, and a client's channel to a gateway killed and restarted, as long again. These
channels dial every 50 ms (up to 200 ms apart): a test sees a gateway as soon as it
serves, and waits for nothing else.

They leave gRPC's minimum reconnect backoff alone: gRPC core also takes it as the least
time it gives a connection attempt (the connection-backoff protocol's MIN_CONNECT_TIMEOUT),
and with it at 50 ms a test's channel was seen to stop dialling for good on a busy
machine: the chaos test waited 90 s on a restarted gateway that a new process's channel
reached at once, with no connection attempt from the test in that time. Each channel also
keeps its subchannels to itself, so one stuck channel cannot stall every other channel to
the same address.
"""

from __future__ import annotations

import grpc

BACKGROUND_END_S = 10.0
"""How long a test gateway's teardown waits for a background pass under way to end
(``GatewayServer.wait_background``)."""

QUICK_REDIAL: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
    ("grpc.use_local_subchannel_pool", 1),
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
