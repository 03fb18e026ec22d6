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


def test_a_sealed_token_opens_only_with_its_key_and_scope() -> None:
    key, other = b"k" * 32, b"o" * 32
    token = paging.encode_sealed_token({"n": 42, "a": 7}, "trace:x", key)
    assert paging.decode_sealed_token(token, "trace:x", key, ("n", "a")) == [42, 7]
    for scope, with_key in (("trace:y", key), ("trace:x", other)):
        with pytest.raises(InvalidRequest) as caught:
            paging.decode_sealed_token(token, scope, with_key, ("n", "a"))
        assert [v.field for v in caught.value.violations] == ["page_token"]
    with pytest.raises(InvalidRequest):
        paging.decode_sealed_token(token.replace(".", ""), "trace:x", key, ("n", "a"))


def test_a_sealed_token_with_non_ascii_text_is_refused_on_page_token() -> None:
    # A client may send any text as a token: a seal of non-ASCII characters is refused
    # like any other wrong seal (it made compare_digest raise TypeError: INTERNAL).
    key = b"k" * 32
    token = paging.encode_sealed_token({"n": 42, "a": 7}, "trace:x", key)
    for forged in (".\u00e9", token + "\u00e9", "\u00e9." + token.partition(".")[2]):
        with pytest.raises(InvalidRequest) as caught:
            paging.decode_sealed_token(forged, "trace:x", key, ("n", "a"))
        assert [v.field for v in caught.value.violations] == ["page_token"]
        with pytest.raises(InvalidRequest) as caught:
            paging.decode_trace_token(forged, "trace:x", key)
        assert [v.field for v in caught.value.violations] == ["page_token"]


def test_trace_page_sizes() -> None:
    assert paging.trace_page_size(0) == paging.TRACE_DEFAULT_PAGE_SIZE
    assert paging.trace_page_size(10**6) == paging.TRACE_MAX_PAGE_SIZE
    with pytest.raises(InvalidRequest):
        paging.trace_page_size(-1)


@given(st.lists(st.text(max_size=30), min_size=2, max_size=2), st.text(max_size=20))
def test_key_token_round_trip(key: list[str], scope: str) -> None:
    token = paging.encode_key_token(key, scope)
    assert paging.decode_key_token(token, scope, 2) == tuple(key)
    assert paging.decode_key_token("", scope, 2) is None


def test_a_key_token_of_another_listing_an_offset_token_or_garbage_is_refused() -> None:
    token = paging.encode_key_token(("2026-11-26T09:30:15+00:00", "abc"), "transfers:1")
    with pytest.raises(InvalidRequest, match="filters"):
        paging.decode_key_token(token, "transfers:2", 2)
    with pytest.raises(InvalidRequest, match="start the listing again"):
        paging.decode_key_token(paging.encode_token(50, "transfers:1"), "transfers:1", 2)
    with pytest.raises(InvalidRequest, match="page_token"):
        paging.decode_key_token(paging.encode_key_token(("x",), "t"), "t", 2)
    for garbage in ("%%%not-base64", "bnVsbA", "WzFd"):  # not base64, null, [1]
        with pytest.raises(InvalidRequest, match="page_token"):
            paging.decode_key_token(garbage, "t", 2)
