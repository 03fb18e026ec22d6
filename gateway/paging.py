"""Opaque page tokens for List methods (Google API design guide, AIP-158)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry_bridge.errors import InvalidRequest
from registry_bridge.model import BlockId, Program

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


MAX_SEALED_TOKEN_CHARS = 4096
"""The longest sealed token a gateway issues, or opens: what a trace's token carries
beside its position (its serial ranges) has a bound, so that a token stays a small part
of a request, and a larger one is refused before its seal is computed."""


def encode_sealed_token(fields: Mapping[str, object], scope: str, key: bytes) -> str:
    """A token holding ``fields`` (JSON values), sealed with ``key`` for ``scope``.

    Unlike :func:`encode_token`'s, what it holds is more than a position: a client that
    changed it could make the gateway answer another question than the one it began (a
    trace at another tree size), so it is sealed, and only a gateway holding ``key``
    issues one.
    """
    raw = json.dumps(dict(fields), separators=(",", ":"), sort_keys=True).encode()
    payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return f"{payload}.{_seal(key, scope, payload)}"


def _open_sealed(token: str, scope: str, key: bytes) -> dict[str, Any]:
    """The fields of a sealed token, its size and seal checked.

    Raises:
        InvalidRequest: On ``page_token``: the token is too long, malformed, was
            changed, was issued by a gateway with another key, or belongs to another
            listing.
    """
    if len(token) > MAX_SEALED_TOKEN_CHARS:
        raise InvalidRequest.field(
            "page_token", f"is longer than any this gateway issues ({MAX_SEALED_TOKEN_CHARS})"
        )
    payload, dot, seal = token.partition(".")
    # Compared as bytes: compare_digest raises TypeError on a str holding non-ASCII,
    # and a client may send any text as a token; such a seal is simply not ours.
    expected = _seal(key, scope, payload).encode()
    if not dot or not hmac.compare_digest(seal.encode(), expected):
        raise InvalidRequest.field(
            "page_token",
            "is not a token this gateway issued for this query (was it changed, or the "
            "query changed between pages?)",
        )
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if not isinstance(data, dict):
        raise InvalidRequest.field("page_token", "is not a token this server issued")
    return data


def decode_sealed_token(token: str, scope: str, key: bytes, names: Sequence[str]) -> list[int]:
    """The values of ``names`` a sealed token holds.

    Raises:
        InvalidRequest: On ``page_token``: the token is too long, malformed, was
            changed, was issued by a gateway with another key, or belongs to another
            listing.
    """
    return _positions(_open_sealed(token, scope, key), names)


def _positions(data: Mapping[str, Any], names: Sequence[str]) -> list[int]:
    """The positions ``names`` of an opened token's fields."""
    try:
        values = [data[name] for name in names]
    except KeyError as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if not all(_is_position(v) for v in values):
        raise InvalidRequest.field("page_token", "is not a token this server issued")
    return values


def _is_position(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_OFFSET


TRACE_TOKEN_RANGES = 32
"""Serial ranges a trace's page token carries at most (a trace's are its units' own and
the origin serials they stand for: one or a few).  A trace with more gets tokens without
them, and each of its pages works them out again, as every page did before tokens
carried them."""


@dataclass(frozen=True)
class TraceResume:
    """Where the next page of a trace starts, as its page token says."""

    pinned_size: int
    """The tree size of the trace's first page, against which every page is proven."""
    start: int
    """The first log index the page answers for: the previous page's end."""
    ranges: tuple[BlockId, ...] | None
    """The serial ranges answering the query at ``pinned_size``, as the first page worked
    them out (see ``TracePage.ranges``); None from a token without them."""


def encode_trace_token(resume: TraceResume, scope: str, key: bytes) -> str:
    """The sealed token of the trace page ``resume`` says, for the query ``scope``.

    The ranges are left out past :data:`TRACE_TOKEN_RANGES` or
    :data:`MAX_SEALED_TOKEN_CHARS`: the next page then works them out itself.
    """
    position: dict[str, object] = {"n": resume.pinned_size, "a": resume.start}
    if resume.ranges is not None and len(resume.ranges) <= TRACE_TOKEN_RANGES:
        ranges = [
            [r.program.value, r.serial_series, r.serial_start, r.serial_end] for r in resume.ranges
        ]
        token = encode_sealed_token({**position, "r": ranges}, scope, key)
        if len(token) <= MAX_SEALED_TOKEN_CHARS:
            return token
    return encode_sealed_token(position, scope, key)


def decode_trace_token(token: str, scope: str, key: bytes) -> TraceResume:
    """What a trace's page token says: its pinned tree size, where the page starts, and
    the serial ranges that answer the query, if it carries them.

    Raises:
        InvalidRequest: On ``page_token``: as :func:`decode_sealed_token`, or its ranges
            are more than :data:`TRACE_TOKEN_RANGES` or not serial ranges.
    """
    data = _open_sealed(token, scope, key)
    pinned, start = _positions(data, ("n", "a"))
    carried = data.get("r")
    if carried is None:
        return TraceResume(pinned, start, None)
    if not isinstance(carried, list) or not 0 < len(carried) <= TRACE_TOKEN_RANGES:
        raise InvalidRequest.field(
            "page_token", f"carries other than 1 to {TRACE_TOKEN_RANGES} serial ranges"
        )
    ranges: list[BlockId] = []
    for item in carried:
        try:
            program, series, first, last = item
            if not (
                isinstance(program, str)
                and isinstance(series, str)
                and type(first) is int
                and type(last) is int
            ):
                raise ValueError(f"not a serial range: {item!r}")
            ranges.append(BlockId(Program(program), series, first, last))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest.field(
                "page_token", "carries something other than serial ranges"
            ) from exc
    return TraceResume(pinned, start, tuple(ranges))


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
