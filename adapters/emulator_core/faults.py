"""Fault injection for emulated registries, configured by a dataclass or a YAML file.

Faults are applied by a server interceptor around every unary call, so every native API
gets the same faults without its servicer knowing:

* ``latency_ms``: added before the call is handled;
* ``unavailable_fraction``: the call is refused with UNAVAILABLE before it is handled;
* ``crash_after_commit_fraction``: the call is handled (its effect committed), then the
  reply is lost: in-process the call aborts with UNAVAILABLE, standalone the process may
  exit at once (``crash_exits_process``), as a registry that dies mid-reply would;
* ``duplicate_delivery_fraction``: the request is handled twice, as when a network
  delivers it twice; the second delivery must be answered from the operation log;
* ``crash_mid_batch_fraction``: a batch call commits only a leading part of its items
  (cut at a random item), then its reply is lost as with a crash after commit, as a
  registry that commits item by item and dies mid-batch would; calls that are not
  batches are left alone;
* ``refusals``: chosen calls of a named method are refused with a chosen status before
  they are handled (say, the first two ``ListAccountHoldings`` with UNAVAILABLE), for a
  test that needs one read to fail exactly so many times and then answer.

Draws come from one RNG seeded by ``seed``, so a test's faults repeat exactly.  A call a
scripted refusal answers draws nothing, so the fractions meet the same draws with or
without refusals configured.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml

# Exit status of a standalone emulator killed by an injected crash (EX_SOFTWARE).
_CRASH_EXIT_STATUS = 70


_Settings = TypeVar("_Settings")


def _build(cls: type[_Settings], data: Mapping[Any, Any], what: str) -> _Settings:
    """``cls`` from the mapping of its fields ``data``, refusing unknown keys (a typo must
    not disable a fault) and values its fields refuse.

    Raises:
        ValueError: An unknown key or a bad value, named as ``what`` settings.
    """
    known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ValueError(f"unknown {what} settings: {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ValueError(f"bad {what} settings: {exc}") from exc


@dataclass(frozen=True)
class ScriptedRefusal:
    """Calls ``after + 1`` to ``after + calls`` of one method, refused with one status."""

    method: str
    """The native RPC's name, as in its service (``ListAccountHoldings``)."""
    code: str = "UNAVAILABLE"
    """The gRPC status name the calls are refused with (``DEADLINE_EXCEEDED``...)."""
    calls: int = 1
    """How many consecutive calls of the method are refused."""
    after: int = 0
    """Calls of the method answered before the first refused one (counted from start)."""

    def __post_init__(self) -> None:
        if not self.method or "/" in self.method:
            raise ValueError(
                f"refusal method must be an RPC name without its service, got {self.method!r}"
            )
        if self.code == "OK" or self.code not in grpc.StatusCode.__members__:
            raise ValueError(f"refusal code must name a gRPC error status, got {self.code!r}")
        if self.calls < 1:
            raise ValueError(f"refusal calls must be >= 1, got {self.calls}")
        if self.after < 0:
            raise ValueError(f"refusal after must be >= 0, got {self.after}")

    @property
    def status(self) -> grpc.StatusCode:
        """The status the calls are refused with."""
        return grpc.StatusCode[self.code]

    def refuses(self, number: int) -> bool:
        """True when the method's ``number``-th call (from 1) is refused."""
        return self.after < number <= self.after + self.calls

    @classmethod
    def from_mapping(cls, data: object) -> ScriptedRefusal:
        """Build from a mapping, refusing unknown keys.

        Raises:
            ValueError: Not a mapping, an unknown key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a refusal must be a mapping, got {data!r}")
        return _build(cls, data, "refusal")


@dataclass(frozen=True)
class FaultConfig:
    """Which faults an emulator injects; all off by default."""

    latency_ms: int = 0
    """Added to every call, in milliseconds."""
    unavailable_fraction: float = 0.0
    """Share of calls refused with UNAVAILABLE before they are handled (0..1)."""
    crash_after_commit_fraction: float = 0.0
    """Share of calls whose reply is lost after their effect is committed (0..1)."""
    duplicate_delivery_fraction: float = 0.0
    """Share of calls delivered (applied) twice (0..1)."""
    crash_mid_batch_fraction: float = 0.0
    """Share of batch calls that commit only their first items, then lose the reply (0..1)."""
    crash_exits_process: bool = False
    """Standalone only: an injected crash exits the process instead of failing the call."""
    seed: int = 0
    """Seed of the fault RNG."""
    refusals: tuple[ScriptedRefusal, ...] = ()
    """Calls refused by method and number, whatever the RNG draws (see the module)."""

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        for name in (
            "unavailable_fraction",
            "crash_after_commit_fraction",
            "duplicate_delivery_fraction",
            "crash_mid_batch_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")

    @property
    def active(self) -> bool:
        """True when any fault is configured."""
        return bool(
            self.latency_ms
            or self.unavailable_fraction
            or self.crash_after_commit_fraction
            or self.duplicate_delivery_fraction
            or self.crash_mid_batch_fraction
            or self.refusals
        )

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> FaultConfig:
        """Build from a mapping, refusing unknown keys (a typo must not disable a fault).

        Raises:
            ValueError: An unknown key or a value out of range.
        """
        settings = dict(data)
        if "refusals" in settings:
            listed = settings["refusals"]
            if not isinstance(listed, list):
                raise ValueError(f"refusals must be a list, got {listed!r}")
            settings["refusals"] = tuple(ScriptedRefusal.from_mapping(item) for item in listed)
        return _build(cls, settings, "fault")

    @classmethod
    def from_yaml(cls, path: Path) -> FaultConfig:
        """Load a YAML mapping of the fields above.

        Raises:
            OSError: The file cannot be read.
            ValueError: The file is not YAML text, not a mapping, or a setting is unknown
                or out of range.
        """
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: fault settings must be a mapping")
        return cls.from_mapping(data)


@dataclass
class _BatchCrash:
    """A mid-batch crash drawn for the call being handled."""

    share: float
    """Share of the batch's items committed before the crash, in [0, 1)."""
    cut: bool = False
    """Set once a batch was cut: the call must then lose its reply."""


# The crash drawn for the call this thread is handling: the interceptor draws it, the
# batch servicing (which alone knows the items) applies it.  A context variable rather
# than an argument, so no servicer has to carry fault plumbing.
_BATCH_CRASH: ContextVar[_BatchCrash | None] = ContextVar("batch_crash", default=None)


def batch_cut(items: int) -> int | None:
    """How many leading items of a batch to apply before an injected mid-batch crash.

    Called by the batch servicing before it applies a batch of ``items`` items.

    Returns:
        ``None`` when no crash was drawn for this call (apply every item); else a count
        below ``items``, after which the batch is committed and its reply lost.
    """
    crash = _BATCH_CRASH.get()
    if crash is None or items == 0:
        return None
    crash.cut = True
    return int(crash.share * items)


class FaultInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    # NOTE(registry-adapters): grpc ships no type stubs, so its base classes are Any.
    """Applies a :class:`FaultConfig` around every unary-unary handler."""

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        """Calls so far per method with a scripted refusal (guarded by ``_rng_lock``)."""

    def _draw(self) -> tuple[float, float, float]:
        with self._rng_lock:
            return self._rng.random(), self._rng.random(), self._rng.random()

    def _scripted(self, method: str) -> ScriptedRefusal | None:
        """The refusal scripted for this call of ``method`` (``/service/Name``), if any."""
        name = method.rsplit("/", 1)[-1]
        scripted = [r for r in self._config.refusals if r.method == name]
        if not scripted:
            return None
        with self._rng_lock:
            self._calls[name] += 1
            number = self._calls[name]
        return next((r for r in scripted if r.refuses(number)), None)

    def _draw_batch_crash(self) -> _BatchCrash | None:
        # Drawn only when configured, so configurations without it see the same fault
        # sequence for their seed as before it existed.
        if not self._config.crash_mid_batch_fraction:
            return None
        with self._rng_lock:
            crash, share = self._rng.random(), self._rng.random()
        return _BatchCrash(share) if crash < self._config.crash_mid_batch_fraction else None

    def intercept_service(
        self,
        continuation: Callable[[Any], Any],
        handler_call_details: Any,
    ) -> Any:
        """Wrap the handler of one call with the configured faults."""
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not self._config.active:
            return handler
        inner = handler.unary_unary
        config = self._config
        method = str(handler_call_details.method)

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            if config.latency_ms:
                time.sleep(config.latency_ms / 1000)
            refusal = self._scripted(method)
            if refusal is not None:
                context.abort(refusal.status, f"injected fault: scripted {refusal.code}")
            unavailable, duplicate, crash = self._draw()
            if unavailable < config.unavailable_fraction:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault: unavailable")
            batch_crash = self._draw_batch_crash()
            token = _BATCH_CRASH.set(batch_crash)
            try:
                response = inner(request, context)
            finally:
                _BATCH_CRASH.reset(token)
            if batch_crash is not None and batch_crash.cut:
                if config.crash_exits_process:
                    os._exit(_CRASH_EXIT_STATUS)
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault: crash mid-batch")
            if duplicate < config.duplicate_delivery_fraction:
                response = inner(request, context)
            if crash < config.crash_after_commit_fraction:
                if config.crash_exits_process:
                    os._exit(_CRASH_EXIT_STATUS)
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault: crash after commit")
            return response

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
