"""In-process news of transfers' committed state changes, for those following them.

A WatchTransfer stream used to read its transfer every tenth of a second, whether it had
moved or not: a database read per watcher ten times a second, and up to a tenth of a
second late.  The bridge now announces here every step it commits (``Bridge._entered``,
the one place each committed step passes), and a watcher waits to be told.

Only what this process commits is heard: another gateway sharing the database moves
transfers unannounced here, so a watcher still reads its transfer at a longer interval
as well (``GatewayConfig.watch_fallback_seconds``).

A change is never missed between a watcher's read and its wait: the watcher takes the
transfer's version *before* it reads the transfer, and its wait returns at once if the
version has moved since.  The bridge announces only after the commit, so a change the read
did not see is announced after the version was taken.  Memory is bounded by the watchers:
a transfer nobody watches is not remembered, and a transfer's entry goes with its last
watcher.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(eq=False)
class _Watched:
    """A transfer someone watches."""

    changed: threading.Condition
    """Notified at each announced change (and when one of its watches is cancelled)."""
    version: int = 0
    """How many changes were announced since its first watcher came."""
    watchers: int = 0


class TransferWatch:
    """One watcher's hold on a transfer's news (``TransferChanges.watch``)."""

    def __init__(self, lock: threading.Lock, watched: _Watched) -> None:
        self._lock = lock
        self._watched = watched
        self._cancelled = False

    @property
    def version(self) -> int:
        """The transfer's version now: take it before reading the transfer."""
        with self._lock:
            return self._watched.version

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        with self._lock:
            return self._cancelled

    def wait(self, seen: int, timeout_s: float) -> bool:
        """Wait until the version moves past ``seen``, the watch is cancelled, or the time is up.

        Returns:
            True when a change was announced since ``seen`` (or the watch was cancelled);
            False when the time ran out first.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._watched.version == seen and not self._cancelled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._watched.changed.wait(remaining)
            return True

    def cancel(self) -> None:
        """Wake the watcher (its caller is gone): every wait from now on returns at once."""
        with self._lock:
            self._cancelled = True
            # Shared with the transfer's other watchers: they wake, see no change of
            # theirs, and wait again.
            self._watched.changed.notify_all()


class TransferChanges:
    """Announces committed transfer state changes to the watchers in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}

    @property
    def watched(self) -> int:
        """How many transfers have a watcher now."""
        with self._lock:
            return len(self._watched)

    def announce(self, transfer_ids: Iterable[str]) -> None:
        """Tell the watchers of ``transfer_ids`` that they changed (call after the commit)."""
        with self._lock:
            if not self._watched:
                return
            for transfer_id in transfer_ids:
                watched = self._watched.get(transfer_id)
                if watched is not None:
                    watched.version += 1
                    watched.changed.notify_all()

    @contextmanager
    def watch(self, transfer_id: str) -> Iterator[TransferWatch]:
        """Follow ``transfer_id``'s changes for the time of the ``with`` block."""
        with self._lock:
            watched = self._watched.get(transfer_id)
            if watched is None:
                watched = self._watched[transfer_id] = _Watched(threading.Condition(self._lock))
            watched.watchers += 1
        try:
            yield TransferWatch(self._lock, watched)
        finally:
            with self._lock:
                watched.watchers -= 1
                if watched.watchers == 0:
                    del self._watched[transfer_id]
