"""Waiting on a process's main thread for SIGTERM or SIGINT, to stop it gracefully.

Two traps of Python's signals, both met by ``carbonlink serve``:

- The kernel hands a signal sent to the process to any thread that does not block it
  (gRPC runs many), while Python runs the handler on the main thread, and only when
  that thread next runs. A main thread asleep until woken (``Event.wait()`` without a
  timeout) slept through such a SIGTERM. Here it wakes a few times a second.
- The handler runs between two bytecodes of whatever the main thread was doing. A
  handler that takes a lock the main thread holds at that moment (an ``Event``'s, or a
  log writer's) waits for itself forever. Here the handler only records the signal.
"""

from __future__ import annotations

import signal
import time
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# How often the main thread wakes to look for a signal: the most a stop waits to begin.
_POLL_SECONDS = 0.2


class StopSignals:
    """SIGTERM and SIGINT recorded from entry to exit, for the main thread to wait on.

    Entered before the server starts, so that a stop asked during the start is not
    lost; the previous handlers are back on exit.
    """

    def __init__(self) -> None:
        self._received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        # Appending takes no lock (see the module's docstring).
        self._received.append(signal.Signals(signum))

    def received(self) -> signal.Signals | None:
        """The first stop signal that came, if one has."""
        return self._received[0] if self._received else None

    def wait(self) -> signal.Signals:
        """Sleep until a stop signal has come; the first that came."""
        while not self._received:
            time.sleep(_POLL_SECONDS)
        return self._received[0]
