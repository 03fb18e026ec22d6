"""The benchmarks' registry emulators, served from a process of their own.

``python -P -m bench.registry_process verra hkmo shenzhen`` starts one in-memory
emulator per registry named (``echo``: a bare echo server on the gateway's server stack,
the far end of the transport floor), writes one JSON line to stdout -- ``{"targets": {registry:
"host:port"}}``, or ``{"error": "..."}`` -- then serves until its stdin reaches end of
file or a line arrives, and exits.  Its parent (:func:`bench.stack.registries`) holds
that stdin: however the parent ends, even killed, the pipe closes and the emulators stop,
so a failed or interrupted benchmark leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator

from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES
from bench.stack import ECHO
from bench.transport import echo_server
from gateway.config import GatewayConfig
from gateway.logging_setup import configure_logging


def main(names: list[str]) -> int:
    """Serve what ``names`` names until stdin closes; the process exit code."""
    # Ctrl-C reaches the whole process group; the parent's clean-up closes stdin, which
    # stops this process in order, rather than a KeyboardInterrupt mid-call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging("error", "console")
    with contextlib.ExitStack() as serving:
        targets: dict[str, str] = {}
        try:
            for name in names:
                targets[name] = serving.enter_context(_started(name))
        except Exception as exc:  # any failure to start: the parent reports it
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            return 1
        print(json.dumps({"targets": targets}), flush=True)
        sys.stdin.readline()  # returns at end of file too: the parent is gone
        return 0


@contextlib.contextmanager
def _started(name: str) -> Iterator[str]:
    """The echo server or the registry emulator ``name``, started; yields its target."""
    if name == ECHO:
        config = GatewayConfig(listen="127.0.0.1:0", insecure=True, log_level="error")
        with echo_server(config) as target:
            yield target
        return
    emulator = start_emulator(REGISTRIES[name].emulator())
    try:
        yield emulator.target
    finally:
        emulator.stop(grace=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
