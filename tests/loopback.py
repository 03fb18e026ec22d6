"""The loopback address this test process serves on: one of its own per pytest-xdist worker.

Test processes running side by side would otherwise share 127.0.0.1's ports. A port one
process picked free and then released (to start a gateway process on it, or as an address
nothing answers at) can be bound by another process's emulator in between; and gRPC
servers bind with SO_REUSEPORT, so a registry restarted on its old port can end up
serving beside another process's server on that port, each taking half the connections.
All of 127.0.0.0/8 is loopback on Linux: worker N serves on 127.0.0.(N + 2), where no other
test process binds, and a run without workers on 127.0.0.1.

Servers presenting TLS certificates stay on 127.0.0.1: the test PKI names only localhost
and 127.0.0.1 (``gateway.security.certs``), and none of them is restarted on a fixed port.
"""

from __future__ import annotations

import os
import re
import socket


def _worker_host() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    match = re.fullmatch(r"gw(\d+)", worker)
    if match is None:
        return "127.0.0.1"
    number = int(match.group(1)) + 2
    if number > 254:
        raise RuntimeError(f"xdist worker {worker} has no loopback address of its own")
    return f"127.0.0.{number}"


HOST = _worker_host()
"""This process's loopback address."""

ANY_PORT = f"{HOST}:0"
"""A listen address on this process's loopback address; the server picks its port."""


def free_port() -> int:
    """A TCP port on this process's loopback address that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port
