from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import paging
from registry_bridge.errors import InvalidRequest


@given(st.integers(min_value=0, max_value=10**9), st.text(max_size=20))
def test_token_round_trip(offset: int, scope: str) -> None:
    assert paging.decode_token(paging.encode_token(offset, scope), scope) == offset


def test_foreign_or_garbage_token_is_refused() -> None:
    token = paging.encode_token(5, "transfers:state=1")
    with pytest.raises(InvalidRequest, match="page_token"):
        paging.decode_token(token, "transfers:state=2")
    with pytest.raises(InvalidRequest, match="page_token"):
        paging.decode_token("%%%not-base64", "x")


def test_a_token_forged_past_the_largest_offset_is_refused() -> None:
    # Well formed and in scope, but its offset would overflow the database's OFFSET.
    for offset in (paging.MAX_OFFSET + 1, 2**63, 10**30):
        with pytest.raises(InvalidRequest, match="page_token"):
            paging.decode_token(paging.encode_token(offset, "transfers"), "transfers")


def test_page_size_bounds() -> None:
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(10**6) == paging.MAX_PAGE_SIZE
    with pytest.raises(InvalidRequest, match="page_size"):
        paging.page_size(-1)
