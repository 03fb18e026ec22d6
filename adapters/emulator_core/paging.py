"""Paged holdings listings, as every emulated registry serves them in its own words.

A registry's listing call names its page size and its continuation token as the registry
does (Verra ``page_size``/``page_token`` after Google AIP-158, Gold Standard
``limit``/``cursor``, the BRI registry ``max_entries``/``resumption_token``...); the
servicer passes their values and names to :func:`serve_page`, which reads one page and
answers the token of the next.

Consistency: a page resumes after the listing key (:class:`ListingKey`: program, series,
first serial) of the last row of the page before, not at a count of rows.  Each page is
read in one store transaction, and nothing is held between pages, so a listing is not a
snapshot; but a row present, unchanged, from the first page to the last is listed exactly
once, whatever rows are added or removed meanwhile (an offset would skip a row when one
before it goes, and repeat one when one comes).  A row added or removed during the
listing is listed when its key lies ahead of the page being read; a row changed during
it may be seen as it was, as it is, or, split or merged, in part or twice over its
serials.  Rows come in key order.  Tokens stay valid as long as the registry runs, so a
page that failed may be asked again with the same token.

A page holds at most the registry's cap of rows (``Store.page_size_cap``, whatever the
caller asks) and about :data:`PAGE_BYTES_CAP` bytes, so it always fits in gRPC's default
4 MiB receive limit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from adapters.emulator_core.store import ListingKey, Rejection, Store, StoredHolding
from registry_bridge.block_json import block_id_to_dict
from registry_bridge.model import BlockId

PAGE_BYTES_CAP = 1024 * 1024
"""Serialized rows one page carries at most, in bytes (a row larger alone goes alone).  A
quarter of gRPC's default 4 MiB receive limit: room for the reply's own framing, and for
clients whose limit is lower."""

_TOKEN_VERSION = 1

Native = TypeVar("Native", bound=Message)


@dataclass(frozen=True)
class PageAsked:
    """A listing call's paging arguments, and the names the registry gives them."""

    size: int
    """Rows asked for; 0 asks for the cap."""
    size_field: str
    """The native name of ``size`` (``page_size``), named in a refusal."""
    token: str
    """The continuation token; '' for the first page."""
    token_field: str
    """The native name of ``token`` (``page_token``), named in a refusal."""


def serve_page(
    store: Store,
    asked: PageAsked,
    to_native: Callable[[StoredHolding], Native],
    *,
    account: str = "",
    overlapping: BlockId | None = None,
) -> tuple[list[Native], str]:
    """One page of a holdings query (see ``Store.listing_page`` for the query).

    Args:
        store: The registry's store.
        asked: The call's paging arguments.
        to_native: The registry's message of one row.
        account: The account asked about, or ''.
        overlapping: The block asked about, or ``None`` to list by account.

    Returns:
        The page's rows as native messages, and the token of the next page ('' when the
        page is the last).

    Raises:
        Rejection: ``INVALID_PAGE_SIZE`` for a negative size, ``INVALID_PAGE_TOKEN`` for
            a token the registry did not give for this query; each names the field.
    """
    if asked.size < 0:
        raise Rejection(
            "INVALID_PAGE_SIZE", f"{asked.size_field} must not be negative, got {asked.size}"
        )
    size = min(asked.size or store.page_size_cap, store.page_size_cap)
    query = _query_of(account, overlapping)
    after = _read_token(asked, query)
    # One row more than the page: whether another page follows is known without asking.
    rows = store.listing_page(account, overlapping, after, size + 1)
    page: list[Native] = []
    last: ListingKey | None = None
    weight = 0
    for key, held in rows[:size]:
        native = to_native(held)
        weight += native.ByteSize()
        if page and weight > PAGE_BYTES_CAP:
            break
        page.append(native)
        last = key
    if last is None or len(page) == len(rows):
        return page, ""
    return page, _token(query, last)


def _query_of(account: str, overlapping: BlockId | None) -> str:
    """A short digest of a query, carried by its tokens: a token answers only its query."""
    text = json.dumps(
        [account, None if overlapping is None else block_id_to_dict(overlapping)],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _token(query: str, key: ListingKey) -> str:
    payload = json.dumps([_TOKEN_VERSION, query, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _read_token(asked: PageAsked, query: str) -> ListingKey | None:
    """The key a token resumes after (``None`` for no token).

    Raises:
        Rejection: ``INVALID_PAGE_TOKEN``: not a token of this registry, or one of
            another query.
    """
    if not asked.token:
        return None
    malformed = Rejection(
        "INVALID_PAGE_TOKEN", f"{asked.token_field} is not a token this registry gave"
    )
    try:
        padded = asked.token + "=" * (-len(asked.token) % 4)
        decoded = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
    except (binascii.Error, ValueError) as exc:
        raise malformed from exc
    match decoded:
        case [int(version), str(of), str(program), str(series), int(start), int(layer)] if (
            version == _TOKEN_VERSION
        ):
            pass
        case _:
            raise malformed
    if of != query:
        raise Rejection(
            "INVALID_PAGE_TOKEN",
            f"{asked.token_field} was given for another query: ask with the same filters, "
            "or start again without it",
        )
    return ListingKey(program, series, start, layer)
