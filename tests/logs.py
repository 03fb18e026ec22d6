"""Capturing log events whatever logging an earlier test of the process configured."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.testing import capture_logs


@contextmanager
def logged_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log event while open, whatever level earlier tests left the process's logging
    at (the benchmarks set ``error``, which filters warnings out before structlog's
    ``capture_logs`` sees them); that logging is restored afterwards."""
    kept = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**kept)
