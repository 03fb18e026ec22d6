"""``HOST:PORT`` addresses, as the gateway's settings and the command line take them.

gRPC takes a port past 65535 and dials or binds it modulo 65536 (``:99999`` is port
34463, perhaps another service's), and an empty or port-less target fails deep in its
C core with a stack trace on stderr.  So an address is checked here, before gRPC sees
it.  This module loads nothing else: parsing a command's flags uses it.
"""

from __future__ import annotations

import argparse
import re

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


def is_host_port(address: str, *, any_port: bool = False) -> bool:
    """Whether ``address`` is ``HOST:PORT`` with a port of 1-65535 (0 too, "any free
    port", when ``any_port``: an address to listen on)."""
    match = _HOST_PORT.match(address)
    if match is None:
        return False
    port = int(match.group("port"))
    return (0 if any_port else 1) <= port <= 65535


def target(text: str) -> str:
    """An address to call, an argparse type (``--target``)."""
    if not is_host_port(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (a port of 1-65535)")
    return text


def listen(text: str) -> str:
    """An address to serve on, an argparse type (``--listen``): port 0 picks a free one."""
    if not is_host_port(text, any_port=True):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (a port of 1-65535, or 0 for any free one)"
        )
    return text
