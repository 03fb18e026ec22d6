"""Paged listings without a network: the emulators' pages (``serve_page`` on a store), the
clients' loop over them (``read_pages``), and the retries of a page that fails."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from google.protobuf.wrappers_pb2 import StringValue

from adapters.client_core import HoldingsPage, list_all_holdings, read_pages
from adapters.emulator_core import (
    PAGE_BYTES_CAP,
    CreditMode,
    PageAsked,
    Rejection,
    Store,
    StoredHolding,
    serve_page,
)
from adapters.retry import RetryingRegistry, RetryPolicy
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.port import ListHoldingsRequest, RegistryHolding, RegistryPort, StillWanted

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def block(start: int, end: int, series: str = "") -> UnitBlock:
    return UnitBlock(
        id=BlockId(Program.CCER, series, start, end),
        project_id="P1",
        country="CN",
        vintage_start=date(2024, 1, 1),
        vintage_end=date(2024, 12, 31),
    )


def store(mode: CreditMode = CreditMode.MIRROR, cap: int = 1000) -> Store:
    opened = Store("reg", frozenset({Program.CCER}), mode, clock=lambda: NOW, page_size_cap=cap)
    opened.open_account("A")  # credited before anything is issued into it
    return opened


def start_of(held: StoredHolding) -> StringValue:
    """A row's native message: its first serial and state."""
    return StringValue(value=f"{held.block.id.serial_start}:{held.state.value}")


def every_page(
    registry: Store,
    to_native: Callable[[StoredHolding], StringValue] = start_of,
    size: int = 0,
    overlapping: BlockId | None = None,
) -> list[list[str]]:
    """The values of every page of a query, page by page."""
    pages: list[list[str]] = []
    token = ""
    while True:
        asked = PageAsked(size, "page_size", token, "page_token")
        rows, token = serve_page(registry, asked, to_native, overlapping=overlapping)
        pages.append([row.value for row in rows])
        if not token:
            return pages


def test_a_page_stops_before_its_rows_outweigh_the_byte_cap() -> None:
    registry = store()
    for n in range(10):
        registry.issue(f"i{n}", "A", block(10 * n, 10 * n + 9))
    # Three rows of a third of the cap fit a page; a fourth would not.
    weight = PAGE_BYTES_CAP // 3 - 16

    def heavy(held: StoredHolding) -> StringValue:
        return StringValue(value=f"{held.block.id.serial_start:04d}".ljust(weight, "."))

    pages = every_page(registry, heavy)
    assert [len(page) for page in pages] == [3, 3, 3, 1]
    assert [int(row[:4]) for page in pages for row in page] == [10 * n for n in range(10)]


def test_a_row_heavier_than_the_byte_cap_goes_alone() -> None:
    registry = store()
    for n in range(3):
        registry.issue(f"i{n}", "A", block(10 * n, 10 * n + 9))

    def huge(held: StoredHolding) -> StringValue:
        return StringValue(value="x" * (PAGE_BYTES_CAP + 1))

    assert [len(page) for page in every_page(registry, huge)] == [1, 1, 1]


def test_a_page_asked_larger_than_the_cap_gets_the_cap() -> None:
    registry = store(cap=2)
    for n in range(5):
        registry.issue(f"i{n}", "A", block(10 * n, 10 * n + 9))
    assert [len(page) for page in every_page(registry, size=50)] == [2, 2, 1]
    assert [len(page) for page in every_page(registry, size=1)] == [1] * 5


def test_a_store_refuses_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="page_size_cap must be >= 1, got 0"):
        store(cap=0)


def test_units_held_again_over_their_exported_history_are_paged_one_row_at_a_time() -> None:
    # A venue's units delivered out and held again share their first serial with their
    # history: every row has a key of its own all the same (its layer).
    venue = store(CreditMode.HOLD)
    for n in range(3):
        venue.credit(f"in-{n}", "A", block(1, 10, "venue"), "other", f"in-{n}")
        venue.lock(f"lock-{n}", "A", BlockId(Program.CCER, "venue", 1, 10), NOW + timedelta(1), "t")
        venue.finalize(f"out-{n}", "A", BlockId(Program.CCER, "venue", 1, 10), "t", export=True)
    venue.credit("in-last", "A", block(1, 10, "venue"), "other", "in-last")
    everything = BlockId(Program.CCER, "venue", 1, 10)
    assert every_page(venue, size=1, overlapping=everything) == [
        ["1:active"],
        ["1:exported"],
        ["1:exported"],
        ["1:exported"],
    ]
    # Listed by account, only the units still here.
    assert every_page(venue, size=1) == [["1:active"]]


def test_a_token_for_another_query_or_malformed_is_refused_naming_the_field() -> None:
    registry = store(cap=1)
    for n in range(2):
        registry.issue(f"i{n}", "A", block(10 * n, 10 * n + 9))
    _, token = serve_page(registry, PageAsked(0, "limit", "", "cursor"), start_of)
    with pytest.raises(Rejection, match="cursor was given for another query") as refused:
        serve_page(registry, PageAsked(0, "limit", token, "cursor"), start_of, account="A")
    assert refused.value.code == "INVALID_PAGE_TOKEN"
    with pytest.raises(Rejection, match="cursor is not a token this registry gave"):
        serve_page(registry, PageAsked(0, "limit", token[:-2], "cursor"), start_of)
    with pytest.raises(Rejection, match="limit must not be negative, got -5") as refused:
        serve_page(registry, PageAsked(-5, "limit", "", "cursor"), start_of)
    assert refused.value.code == "INVALID_PAGE_SIZE"


def holding(start: int) -> RegistryHolding:
    return RegistryHolding(block(start, start), "A", HoldingStatus.ACTIVE)


def test_every_page_is_read_in_order_empty_ones_included() -> None:
    pages = {
        "": HoldingsPage((holding(1), holding(2)), "t1"),
        "t1": HoldingsPage((), "t2"),
        "t2": HoldingsPage((holding(3),), ""),
    }
    asked: list[str] = []

    def fetch(token: str) -> HoldingsPage:
        asked.append(token)
        return pages[token]

    listed = read_pages("reg", fetch)
    assert [h.block.id.serial_start for h in listed] == [1, 2, 3]
    assert asked == ["", "t1", "t2"]


def test_a_registry_answering_a_token_twice_is_refused_instead_of_read_for_ever() -> None:
    pages = {
        "": HoldingsPage((holding(1),), "t1"),
        "t1": HoldingsPage((holding(2),), "t2"),
        "t2": HoldingsPage((holding(3),), "t1"),
    }
    with pytest.raises(RegistryRejected, match="answered the page token 't1' twice") as refused:
        read_pages("reg", pages.__getitem__)
    assert refused.value.code == "PAGE_TOKEN_REPEATED"


class FlakyPages:
    """A paged client whose pages fail in transit as scripted, recording what is asked."""

    registry_id = "reg"

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = dict(failures)
        self.asked: list[str] = []
        self.pages = {
            "": HoldingsPage((holding(1),), "t1"),
            "t1": HoldingsPage((holding(2),), "t2"),
            "t2": HoldingsPage((holding(3),), ""),
        }

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        self.asked.append(page)
        if self.failures.get(page, 0):
            self.failures[page] -= 1
            raise RegistryUnavailable("reg", "lost")
        return self.pages[page]

    def list_holdings(
        self, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
    ) -> tuple[RegistryHolding, ...]:
        return list_all_holdings(self, request, still_wanted)


QUICK = RetryPolicy(attempts=3, initial_wait_s=0.0, max_wait_s=0.0, jitter_s=0.0)


def test_a_retried_listing_asks_again_for_the_page_that_failed_only() -> None:
    client = FlakyPages({"t1": 2})
    port: RegistryPort = RetryingRegistry(client, QUICK)  # type: ignore[arg-type]
    # NOTE(registry-adapters): the fake has only the listing of the port's operations.
    listed = port.list_holdings(ListHoldingsRequest())
    assert [h.block.id.serial_start for h in listed] == [1, 2, 3]
    assert client.asked == ["", "t1", "t1", "t1", "t2"]


def test_a_page_failing_past_the_policys_attempts_fails_the_listing() -> None:
    client = FlakyPages({"t2": 3})
    port: RegistryPort = RetryingRegistry(client, QUICK)  # type: ignore[arg-type]
    # NOTE(registry-adapters): as above.
    with pytest.raises(RegistryUnavailable):
        port.list_holdings(ListHoldingsRequest())
    assert client.asked == ["", "t1", "t2", "t2", "t2"]
