"""Structured logging, configured once by the entrypoint.

Modules log through ``structlog.get_logger(__name__)``; the server interceptor binds
``request_id`` and ``method`` to the context of each call, so every line an RPC causes
carries them.  Output is one JSON object per line on stderr.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

import structlog

_REDACTED = "[redacted]"
# Keys whose values must never reach a log line, whatever logs them.
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "token",
        "password",
        "private_key",
        "secret",
        "jwt",
        "bearer",
        "access_token",
        "id_token",
        "key_pem",
        "tls_key",
        "signing_key",
        "metadata",
        "invocation_metadata",
    }
)
# A JWT (or any JWS) anywhere in a value: three base64url segments, the first a JSON
# header ("eyJ"). Caught even when a library puts a token inside a message string.
_JWS = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return _PEM_PRIVATE.sub(_REDACTED, _JWS.sub(_REDACTED, value))
    return value


def _redact_secrets(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = _REDACTED
        else:
            event[key] = _scrub(event[key])
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
            structlog.processors.format_exc_info,
            # After format_exc_info, so tracebacks are scrubbed as well.
            _redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
