"""Per-client rate limits: a token bucket per token subject, in this gateway process.

A call costs one token, and a batch one per transfer in it: the limit guards the other
clients from one client's load, and a batch of 1,000 transfers is a thousand transfers'
work, not one call's.

Several gateways behind one balancer each keep their own buckets, so a client's
effective ceiling is the per-process rate times the number of gateways; the setting is
a guard against one client starving the others, not a billing quota.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from registry_bridge.errors import ResourceExhausted

_MAX_CLIENTS = 100_000


class RateLimited(ResourceExhausted):
    """One client called faster than its configured rate."""

    def __init__(
        self, subject: str, rate_per_second: float, burst: int, retry_after_seconds: float
    ) -> None:
        super().__init__(
            f"client {subject!r} exceeded {rate_per_second:g} calls per second "
            f"(burst {burst}; a batch counts one call per transfer); "
            f"retry in {retry_after_seconds:.3g} s"
        )
        self.subject = f"clients/{subject}"
        self.description = (
            f"at most {rate_per_second:g} calls/s, burst {burst}, a batch one per transfer"
        )
        self.retry_after_seconds = retry_after_seconds


class RateLimiter:
    """Token buckets keyed by client identity."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_second
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, subject: str, cost: int = 1) -> None:
        """Spend ``cost`` calls of ``subject``'s budget.

        A call is let in while the bucket holds a token, whatever it costs, and the bucket
        then owes the rest: a batch larger than the burst still goes through once, and
        its client waits until the bucket has refilled past what it took.

        Raises:
            RateLimited: The bucket holds less than one token; says how long until it does.
            ValueError: ``cost`` is less than one.
        """
        if cost < 1:
            raise ValueError(f"a call costs at least one token, not {cost}")
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(subject, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[subject] = (tokens, now)
                raise RateLimited(subject, self._rate, self._burst, (1.0 - tokens) / self._rate)
            self._buckets[subject] = (tokens - cost, now)
            if len(self._buckets) > _MAX_CLIENTS:
                # Forget full buckets (idle clients); bounds memory whatever the subjects.
                self._buckets = {
                    s: (t, at) for s, (t, at) in self._buckets.items() if t < self._burst
                }


class TooManyStreams(ResourceExhausted):
    """One client holds as many open streams as it may."""

    def __init__(self, subject: str, limit: int) -> None:
        super().__init__(
            f"client {subject!r} already holds {limit} open streams; end one, or retry later"
        )
        self.subject = f"clients/{subject}"
        self.description = f"at most {limit} open streams"


class StreamSlots:
    """Open streams per client identity, capped.

    A stream holds a server worker for as long as it lasts, so a call rate does not bound
    it: a client opening as many watches as the gateway has workers, well inside its rate,
    would leave none for anyone else.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    @contextlib.contextmanager
    def holding(self, subject: str) -> Iterator[None]:
        """Hold one of ``subject``'s stream slots for the block.

        Raises:
            TooManyStreams: The client already holds its every slot.
        """
        with self._lock:
            held = self._open.get(subject, 0)
            if held >= self._limit:
                raise TooManyStreams(subject, self._limit)
            self._open[subject] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._open[subject] - 1
                if left:
                    self._open[subject] = left
                else:
                    del self._open[subject]
