"""Settling accepted transfers in the background (SubmitTransfer's REPLY_WHEN_ACCEPTED).

A transfer accepted is recorded and checked before its caller hears of it; what is left
is its registry calls and their steps.  The settler drives those in groups: the
transfers accepted while one group settles queue and are taken together by the next, so
under load each step's transaction and each registry's batch call serve many transfers,
as a batch's do, instead of one round per handful of callers.

The backlog (transfers queued or being settled) is bounded: acceptance waits for room,
so a gateway cannot answer faster than it settles for longer than its backlog lasts, and
a transfer accepted is never older than the backlog's time to settle when its step runs.
Nothing here is the only copy of anything: an accepted transfer is committed, with this
gateway's lease, before it queues, so a crash (or a stop that gives up on a group) leaves
it to the recovery loop of whichever gateway runs next.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence

import structlog

_logger = structlog.get_logger(__name__)


class Settler:
    """Drives accepted transfers to their end, in groups, on a thread of its own.

    One thread, one group at a time: the transfers accepted while a group settles build
    the next one, which is what makes settling them cheaper than settling each call's
    own.  With two or three threads (as a batch's parts run), an idle one took each
    acceptance alone as it arrived and no group formed (docs/performance.md, item 49).
    """

    def __init__(
        self, drive: Callable[[list[str]], None], *, backlog: int, group_size: int
    ) -> None:
        """Build a settler; its thread starts with the first transfer added.

        Args:
            drive: Drives a group of transfers as far as the registries let them go and
                gives up their lease (``Bridge._settle_accepted``).
            backlog: How many transfers may be queued or settling at once.
            group_size: The most transfers one group takes.
        """
        if backlog < 1 or group_size < 1:
            raise ValueError("backlog and group_size must each be at least 1")
        self._drive = drive
        self._backlog = backlog
        self._group_size = group_size
        self._changed = threading.Condition(threading.Lock())
        self._queue: deque[str] = deque()
        self._settling = 0
        """Transfers the thread took and has not finished with."""
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def backlog(self) -> int:
        """How many transfers may be queued or settling at once."""
        return self._backlog

    @property
    def pending(self) -> int:
        """Transfers queued or being settled."""
        with self._changed:
            return len(self._queue) + self._settling

    def make_room(self, count: int) -> None:
        """Wait until ``count`` more transfers fit in the backlog.

        An empty backlog takes any count (a round of more callers than the backlog holds
        is not refused, only not joined by more); a stopping settler waits for nothing,
        as what it is given then is left to recovery (see ``add``).
        """
        with self._changed:
            while not self._stopping:
                pending = len(self._queue) + self._settling
                if pending == 0 or pending + count <= self._backlog:
                    return
                self._changed.wait()

    def add(self, transfer_ids: Sequence[str]) -> bool:
        """Queue transfers for settling; False (nothing queued) once the settler stops.

        The caller holds their lease and has marked them as driven by this gateway; when
        this answers False it must give both up, for recovery to settle them.
        """
        if not transfer_ids:
            return True
        with self._changed:
            if self._stopping:
                return False
            self._queue.extend(transfer_ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="settler", daemon=True)
                self._thread.start()
            self._changed.notify_all()
        return True

    def stop(self, timeout: float) -> list[str]:
        """Take no more groups; wait up to ``timeout`` seconds for those settling.

        Returns:
            The transfers still queued, never taken: the caller gives up their lease so
            that the next gateway's recovery settles them at once.  A group still
            settling when the time is up keeps its lease until it runs out, as after a
            crash.
        """
        with self._changed:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=max(timeout, 0.0))
        return left

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                taken = min(len(self._queue), self._group_size)
                group = [self._queue.popleft() for _ in range(taken)]
                self._settling += taken
            try:
                self._drive(group)
            except Exception:  # the group's transfers stay committed; recovery resumes them
                _logger.exception("accepted_transfers_not_settled", transfers=len(group))
            finally:
                with self._changed:
                    self._settling -= taken
                    self._changed.notify_all()
