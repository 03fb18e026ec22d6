"""Opaque page tokens for List methods (Google API design guide, AIP-158)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from registry_bridge.errors import InvalidRequest

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 2**53
"""Past any listing the gateway holds, and far inside the 64-bit integers SQLite and
PostgreSQL take for OFFSET: a forged token's larger offset would fail the query."""


def page_size(requested: int) -> int:
    """The effective page size: the default for 0, capped at the maximum."""
    if requested < 0:
        raise InvalidRequest.field("page_size", f"must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(offset: int, scope: str) -> str:
    """A token for the page starting at ``offset`` of a listing identified by ``scope``."""
    raw = json.dumps({"o": offset, "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _load(token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if not isinstance(data, dict):
        raise InvalidRequest.field("page_token", "is not a token this server issued")
    return data


def decode_token(token: str, scope: str) -> int:
    """The offset a token stands for; 0 for an empty token.

    Raises:
        InvalidRequest: The token is malformed or belongs to another listing (filters
            changed between pages).
    """
    if not token:
        return 0
    data = _load(token)
    try:
        offset = data["o"]
        token_scope = data["s"]
    except KeyError as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET or token_scope != scope:
        raise InvalidRequest.field(
            "page_token", "does not belong to this listing (were the filters changed?)"
        )
    return offset


TRACE_DEFAULT_PAGE_SIZE = 200
TRACE_MAX_PAGE_SIZE = 1000
"""Events of a TraceUnits page: about a kilobyte each with its proof, so the largest page
stays near the reply budget (``trace_page_bytes``), which also ends a page early."""


def trace_page_size(requested: int) -> int:
    """The effective page size of a trace: the default for 0, capped at the maximum.

    Raises:
        InvalidRequest: ``requested`` is negative.
    """
    if requested < 0:
        raise InvalidRequest.field("page_size", f"must not be negative, got {requested}")
    return min(requested or TRACE_DEFAULT_PAGE_SIZE, TRACE_MAX_PAGE_SIZE)


_SEAL_BYTES = 16


def _seal(key: bytes, scope: str, payload: str) -> str:
    mac = hmac.new(key, f"{scope}\n{payload}".encode(), hashlib.sha256).digest()[:_SEAL_BYTES]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def encode_sealed_token(fields: Mapping[str, int], scope: str, key: bytes) -> str:
    """A token holding ``fields``, sealed with ``key`` for the listing ``scope``.

    Unlike :func:`encode_token`'s, what it holds is more than a position: a client that
    changed it could make the gateway answer another question than the one it began (a
    trace at another tree size), so it is sealed, and only a gateway holding ``key``
    issues one.
    """
    raw = json.dumps(dict(fields), separators=(",", ":"), sort_keys=True).encode()
    payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return f"{payload}.{_seal(key, scope, payload)}"


def decode_sealed_token(token: str, scope: str, key: bytes, names: Sequence[str]) -> list[int]:
    """The values of ``names`` a sealed token holds.

    Raises:
        InvalidRequest: On ``page_token``: the token is malformed, was changed, was
            issued by a gateway with another key, or belongs to another listing.
    """
    payload, dot, seal = token.partition(".")
    if not dot or not hmac.compare_digest(seal, _seal(key, scope, payload)):
        raise InvalidRequest.field(
            "page_token",
            "is not a token this gateway issued for this query (was it changed, or the "
            "query changed between pages?)",
        )
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        values = [data[name] for name in names]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if not all(isinstance(v, int) and 0 <= v <= MAX_OFFSET for v in values):
        raise InvalidRequest.field("page_token", "is not a token this server issued")
    return values


def encode_key_token(key: Sequence[str], scope: str) -> str:
    """A token for the page after the item whose sort key is ``key``, in ``scope``.

    A position by key, not by count: items that leave the listing, or enter it before the
    key, between two pages shift nothing the client has not read yet.
    """
    raw = json.dumps({"k": list(key), "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_key_token(token: str, scope: str, length: int) -> tuple[str, ...] | None:
    """The sort key of the last item the previous page returned; None for an empty token.

    Raises:
        InvalidRequest: The token is malformed, belongs to another listing (filters
            changed between pages), or is an offset token of an earlier server version.
    """
    if not token:
        return None
    data = _load(token)
    if "o" in data and "k" not in data:
        raise InvalidRequest.field(
            "page_token",
            "is an offset token of an earlier server version, whose pages could skip or "
            "repeat items; start the listing again without a page_token",
        )
    key, token_scope = data.get("k"), data.get("s")
    if (
        not isinstance(key, list)
        or len(key) != length
        or not all(isinstance(part, str) for part in key)
    ):
        raise InvalidRequest.field("page_token", "is not a token this server issued")
    if token_scope != scope:
        raise InvalidRequest.field(
            "page_token", "does not belong to this listing (were the filters changed?)"
        )
    return tuple(key)
