"""The benchmarks' registry emulators, served from a process of their own.

``python -P -m bench.registry_process verra hkmo shenzhen`` starts one in-memory
emulator per registry named, writes one JSON line to stdout -- ``{"targets": {registry:
"host:port"}}``, or ``{"error": "..."}`` -- then serves until its stdin reaches end of
file or a line arrives, and exits.  Its parent (:func:`bench.stack.registries`) holds
that stdin: however the parent ends, even killed, the pipe closes and the emulators stop,
so a failed or interrupted benchmark leaves no process behind.
"""

from __future__ import annotations

import json
import signal
import sys

from adapters.emulator_core import RunningEmulator, start_emulator
from adapters.registry import REGISTRIES
from gateway.logging_setup import configure_logging


def main(registry_ids: list[str]) -> int:
    """Serve ``registry_ids`` until stdin closes; the process exit code."""
    # Ctrl-C reaches the whole process group; the parent's clean-up closes stdin, which
    # stops this process in order, rather than a KeyboardInterrupt mid-call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging("error", "console")
    running: list[RunningEmulator] = []
    try:
        try:
            for registry_id in registry_ids:
                running.append(start_emulator(REGISTRIES[registry_id].emulator()))
        except Exception as exc:  # any failure to start: the parent reports it
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            return 1
        targets = {e.spec.registry_id: e.target for e in running}
        print(json.dumps({"targets": targets}), flush=True)
        sys.stdin.readline()  # returns at end of file too: the parent is gone
        return 0
    finally:
        for emulator in running:
            emulator.stop(grace=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
