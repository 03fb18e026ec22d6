"""Structured logging, configured once by the entrypoint.

Modules log through ``structlog.get_logger(__name__)``; the server interceptor binds
``request_id`` and ``method`` to the context of each call, so every line an RPC causes
carries them.  Output is one JSON object per line on stderr.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_REDACTED = "[redacted]"
# Keys whose values must never reach a log line, whatever logs them.
_SECRET_KEYS = frozenset({"authorization", "token", "password", "private_key", "secret", "jwt"})


def _redact_secrets(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = _REDACTED
    return event


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the process.

    Args:
        level: Lowest level written: debug, info, warning or error.
        fmt: ``json`` or ``console``.
        stream: Where lines go; stderr by default.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
