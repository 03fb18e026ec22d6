"""The one retry policy of every registry adapter, applied where the adapter is built.

Only :class:`RegistryUnavailable` is retried: a registry that answered (even with a
refusal) has spoken, and every mutating call carries an operation id, so repeating it
after a lost reply returns the first result instead of applying it twice.

A paged holdings listing is retried a page at a time: the page that failed is asked
again with its token, and the pages already read are kept.  Starting over would read
them again, and a listing of many pages would then need every page of one pass to
succeed in a row, which a registry failing now and then may never grant.  The token
names the last holding read, not a count of rows, so a page asked again later resumes
where the listing stood (``adapters.emulator_core.paging``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from adapters.client_core import PagedListing, read_pages
from registry_bridge.errors import Abandoned, RegistryRejected, RegistryUnavailable
from registry_bridge.port import (
    BlockStatusRequest,
    CancelRequest,
    CreditRequest,
    FinalizeRequest,
    IssueRequest,
    ListHoldingsRequest,
    LockRequest,
    ProgramTotal,
    RegistryHolding,
    RegistryPort,
    RetireRequest,
    StillWanted,
    SurrenderRequest,
    UnlockRequest,
)

T = TypeVar("T")

CallObserver = Callable[[str, str, str, float], None]
"""Told of every attempt at a registry call: registry id, operation (the port's method),
outcome (``ok``, ``rejected``, ``unavailable``, ``abandoned`` by its caller, or ``error``)
and seconds taken."""


@dataclass(frozen=True)
class RetryPolicy:
    """How transient registry failures are retried."""

    attempts: int = 5
    """Calls in all, the first included."""
    initial_wait_s: float = 0.1
    """First backoff, in seconds; it doubles per attempt."""
    max_wait_s: float = 2.0
    """Cap of one backoff, in seconds."""
    jitter_s: float = 0.1
    """Random extra per backoff, in seconds, so retrying clients spread out."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.initial_wait_s < 0 or self.max_wait_s < 0 or self.jitter_s < 0:
            raise ValueError("retry waits must be >= 0")

    def retrying(self) -> Retrying:
        """A tenacity controller for this policy (re-raises the last error when spent)."""
        return Retrying(
            retry=retry_if_exception_type(RegistryUnavailable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.initial_wait_s, max=self.max_wait_s, jitter=self.jitter_s
            ),
            reraise=True,
        )


class RetryingRegistry:
    """A :class:`RegistryPort` that retries another one's transient failures.

    Args:
        inner: The adapter to wrap.
        policy: The retry policy.
        observer: Told of every attempt (for metrics); None: nobody.
    """

    def __init__(
        self, inner: RegistryPort, policy: RetryPolicy, observer: CallObserver | None = None
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._observer = observer

    @property
    def registry_id(self) -> str:
        """The wrapped registry's id."""
        return self._inner.registry_id

    @property
    def inner(self) -> RegistryPort:
        """The wrapped adapter."""
        return self._inner

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy it applies."""
        return self._policy

    def _call(self, name: str, call: Callable[[], T]) -> T:
        observer = self._observer
        if observer is None:
            operation = call
        else:

            def operation() -> T:
                began = time.perf_counter()
                outcome = "error"  # neither an answer nor a registry's failure: a bug
                try:
                    answer = call()
                    outcome = "ok"
                    return answer
                except RegistryRejected:
                    outcome = "rejected"
                    raise
                except RegistryUnavailable:
                    outcome = "unavailable"
                    raise
                except Abandoned:
                    outcome = "abandoned"
                    raise
                finally:
                    observer(self._inner.registry_id, name, outcome, time.perf_counter() - began)

        # The first attempt is made here: tenacity's controller costs ~10 us a call, as
        # much as a call's own client-side work, and most calls succeed at once.
        try:
            return operation()
        except RegistryUnavailable as exc:
            failed: RegistryUnavailable | None = exc

        def attempt() -> T:
            # The controller's first attempt is the one already made (it raises its
            # failure again), so the backoff between attempts and their count are the
            # policy's, as if the controller had made every attempt.
            nonlocal failed
            if failed is not None:
                first, failed = failed, None
                raise first
            return operation()

        return self._policy.retrying()(attempt)

    def issue(self, request: IssueRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.issue`."""
        return self._call("issue", lambda: self._inner.issue(request))

    def block_status(self, request: BlockStatusRequest) -> Sequence[RegistryHolding]:
        """See :meth:`RegistryPort.block_status`."""
        return self._call("block_status", lambda: self._inner.block_status(request))

    def lock(self, request: LockRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.lock`."""
        return self._call("lock", lambda: self._inner.lock(request))

    def unlock(self, request: UnlockRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.unlock`."""
        return self._call("unlock", lambda: self._inner.unlock(request))

    def finalize(self, request: FinalizeRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.finalize`."""
        return self._call("finalize", lambda: self._inner.finalize(request))

    def credit(self, request: CreditRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.credit`."""
        return self._call("credit", lambda: self._inner.credit(request))

    def retire(self, request: RetireRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.retire`."""
        return self._call("retire", lambda: self._inner.retire(request))

    def surrender(self, request: SurrenderRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.surrender`."""
        return self._call("surrender", lambda: self._inner.surrender(request))

    def cancel(self, request: CancelRequest) -> RegistryHolding:
        """See :meth:`RegistryPort.cancel`."""
        return self._call("cancel", lambda: self._inner.cancel(request))

    # A read given a ``still_wanted`` that answers false raises Abandoned, which is not a
    # RegistryUnavailable: it is never retried, and a retry due is not sent (the client
    # asks ``still_wanted`` before each call).

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> Sequence[RegistryHolding]:
        """See :meth:`RegistryPort.list_holdings`; a paged listing is retried per page, and
        a registry whose client does not page answers in one."""
        inner = self._inner
        if not isinstance(inner, PagedListing):
            return self._call("list_holdings", lambda: inner.list_holdings(request, still_wanted))
        return read_pages(
            inner.registry_id,
            lambda page: self._call(
                "list_holdings", lambda: inner.list_holdings_page(request, page, still_wanted)
            ),
        )

    def totals(self, still_wanted: StillWanted | None = None) -> Sequence[ProgramTotal]:
        """See :meth:`RegistryPort.totals`."""
        return self._call("totals", lambda: self._inner.totals(still_wanted))

    # A batch is retried whole: a transient failure may have come after some items were
    # applied, and every item carries its operation id, so the repeat answers those from
    # the registry's operation log and applies only the rest.  Refused items are results,
    # not exceptions, so they are never retried.

    def lock_many(
        self, requests: Sequence[LockRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """See :meth:`RegistryPort.lock_many`; the whole batch is retried."""
        return self._call("lock_many", lambda: self._inner.lock_many(requests))

    def credit_many(
        self, requests: Sequence[CreditRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """See :meth:`RegistryPort.credit_many`; the whole batch is retried."""
        return self._call("credit_many", lambda: self._inner.credit_many(requests))

    def finalize_many(
        self, requests: Sequence[FinalizeRequest]
    ) -> Sequence[RegistryHolding | RegistryRejected]:
        """See :meth:`RegistryPort.finalize_many`; the whole batch is retried."""
        return self._call("finalize_many", lambda: self._inner.finalize_many(requests))
