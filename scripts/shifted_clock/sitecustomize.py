"""Runs every Python process of a test run on a later (or earlier) date.

Python imports ``sitecustomize`` at start-up from its path: ``scripts/test-on`` puts this
directory on ``PYTHONPATH`` with ``SHIFTED_CLOCK_NOW`` set, so the test process and
every process it starts (a served gateway, the bench's registry emulators) read the same
shifted wall clock.  What it shifts is ``datetime.now``/``utcnow``/``today`` and
``date.today`` as the project's and the tests' modules see them (each module's
``datetime`` and ``date`` names, replaced as it is imported); ``time.time`` and the
monotonic clocks stay true, so timeouts, gRPC deadlines and token lifetimes run as they
would, and so do certificates' validity (TLS checks it on the true clock).  A test that
passes today and fails on a shifted date reads the day's rules, a deadline or a fixed
date where it should name its own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from types import ModuleType
from typing import Any

SHIFTED_NOW = "SHIFTED_CLOCK_NOW"
"""The environment variable naming the moment (ISO 8601, UTC) the run starts at."""

SHIFT_SECONDS = "SHIFTED_CLOCK_SECONDS"
"""The shift, in seconds, set by the first process that reads ``SHIFTED_NOW`` so that its
children inherit it: each process computing its own from ``SHIFTED_NOW`` would start its
clock at that moment again, later processes behind earlier ones."""

_PACKAGES = frozenset(
    {"gateway", "adapters", "registry_bridge", "compliance_rules", "bench", "tests", "conftest"}
)
"""Top-level packages whose modules read the shifted clock."""

_TRUE_CLOCK_MODULES = frozenset({"gateway.security.certs"})
"""Modules left on the true clock: certificates are checked by TLS, which reads it."""


def _offset() -> timedelta | None:
    inherited = os.environ.get(SHIFT_SECONDS)
    if inherited:
        return timedelta(seconds=float(inherited))
    when = os.environ.get(SHIFTED_NOW)
    if not when:
        return None
    start = datetime.fromisoformat(when)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    offset = start - datetime.now(UTC)
    os.environ[SHIFT_SECONDS] = repr(offset.total_seconds())
    return offset


_OFFSET = _offset()


class _AnyDatetime(type):
    # A true datetime is an instance of the shifted class too: modules that test
    # isinstance(value, datetime) keep working on values from other modules.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, datetime)


class _AnyDate(type):
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, date)


class ShiftedDatetime(datetime, metaclass=_AnyDatetime):
    """``datetime`` whose "now" is the shifted clock's."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> ShiftedDatetime:
        moment = datetime.now(tz) + (_OFFSET or timedelta())
        return cls.combine(moment.date(), moment.timetz())

    @classmethod
    def utcnow(cls) -> ShiftedDatetime:
        return cls.now(UTC).replace(tzinfo=None)

    @classmethod
    def today(cls) -> ShiftedDatetime:
        return cls.now()


class ShiftedDate(date, metaclass=_AnyDate):
    """``date`` whose "today" is the shifted clock's."""

    @classmethod
    def today(cls) -> ShiftedDate:
        # Local, as date.today is.
        moment = ShiftedDatetime.now()
        return cls(moment.year, moment.month, moment.day)


def shift(module: ModuleType) -> None:
    """Give ``module`` the shifted ``datetime`` and ``date`` if it imported the true ones."""
    if module.__name__ in _TRUE_CLOCK_MODULES:
        return
    if getattr(module, "datetime", None) is datetime:
        module.datetime = ShiftedDatetime  # type: ignore[attr-defined]
    if getattr(module, "date", None) is date:
        module.date = ShiftedDate  # type: ignore[attr-defined]


def shift_loaded() -> None:
    """Shift every project module already imported (pytest imports the test modules
    through its own import hook, ahead of this one)."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in _PACKAGES and module is not None:
            shift(module)


class _ShiftingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        shift(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ShiftingFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] not in _PACKAGES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None:
                spec.loader = _ShiftingLoader(spec.loader)
            return spec
        return None


if _OFFSET is not None:
    sys.meta_path.insert(0, _ShiftingFinder())
