"""Opaque page tokens for List methods (Google API design guide, AIP-158)."""

from __future__ import annotations

import base64
import binascii
import json

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


def decode_token(token: str, scope: str) -> int:
    """The offset a token stands for; 0 for an empty token.

    Raises:
        InvalidRequest: The token is malformed or belongs to another listing (filters
            changed between pages).
    """
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset = data["o"]
        token_scope = data["s"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET or token_scope != scope:
        raise InvalidRequest.field(
            "page_token", "does not belong to this listing (were the filters changed?)"
        )
    return offset
