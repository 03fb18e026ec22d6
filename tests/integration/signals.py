"""Signals sent to one thread of a process, as the kernel may deliver a process's own.

A process-wide signal goes to any thread that does not block it. Python runs the
handler on the main thread only, when that thread next runs: a server's main thread that
sleeps until told to stop must still wake for a signal another thread took.
"""

from __future__ import annotations

import ctypes
import os


def signal_another_thread(pid: int, signum: int) -> None:
    """Send ``signum`` to a thread of process ``pid`` other than its main one.

    Raises:
        AssertionError: The process runs no other thread.
        OSError: The signal could not be sent.
    """
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, f"process {pid} runs no thread besides its main one"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, others[0], signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill of a thread of process {pid} failed")
