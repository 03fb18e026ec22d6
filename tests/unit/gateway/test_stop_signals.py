"""The stop signals of ``carbonlink serve`` and ``carbonlink emulate``."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from gateway.stop_signals import StopSignals


def test_a_stop_signal_is_recorded_and_waited_for() -> None:
    with StopSignals() as stop:
        assert stop.received() is None
        signal.raise_signal(signal.SIGTERM)
        assert stop.wait() is signal.SIGTERM
        signal.raise_signal(signal.SIGINT)
        assert stop.wait() is signal.SIGTERM  # the first that came


def test_the_previous_handlers_are_back_on_exit() -> None:
    caught: list[int] = []

    def previous(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with StopSignals():
            pass
        signal.raise_signal(signal.SIGTERM)
        assert caught == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_signal_taken_by_another_thread_ends_the_wait() -> None:
    """The kernel may give a process's signal to any thread; the handler still runs on
    the main thread, which wakes for it within a poll."""
    with StopSignals() as stop:
        ready = threading.Event()

        def take_the_signal_here() -> None:
            ready.wait()
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        other = threading.Thread(target=take_the_signal_here)
        other.start()
        ready.set()
        deadline = time.monotonic() + 10
        while stop.received() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        other.join()
        assert stop.received() is signal.SIGTERM
        assert stop.wait() is signal.SIGTERM
