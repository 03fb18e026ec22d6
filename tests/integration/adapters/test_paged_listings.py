"""Every registry's native holdings listing pages, over real gRPC against its emulator.

Each registry names its paging in its own words (``LISTINGS``).  Every one caps its pages,
refuses a negative size or a token it did not give (naming the field), and resumes a page
after the last holding of the page before, so holdings present throughout a listing are
listed exactly once however others come and go; each adapter reads every page, and
retries a page that fails in transit without reading the others again.  Verra and Gold
Standard look up the holdings overlapping a range with a call of their own, paged as their
listings are.  The emulators here cap a page at four holdings, so ten holdings take three
pages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from adapters._pb.registries.bri.v1 import bri_pb2, bri_pb2_grpc
from adapters._pb.registries.gold_standard.v1 import gold_standard_pb2, gold_standard_pb2_grpc
from adapters._pb.registries.guangdong.v1 import guangdong_pb2, guangdong_pb2_grpc
from adapters._pb.registries.hkmo.v1 import hkmo_pb2, hkmo_pb2_grpc
from adapters._pb.registries.national.v1 import national_pb2, national_pb2_grpc
from adapters._pb.registries.shenzhen.v1 import shenzhen_pb2, shenzhen_pb2_grpc
from adapters._pb.registries.verra.v1 import verra_pb2, verra_pb2_grpc
from adapters.client_core import PagedListing, rejection_code
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from adapters.gold_standard import client as gold_standard_client
from adapters.retry import RetryingRegistry
from adapters.verra import client as verra_client
from registry_bridge.errors import RegistryRejected, RegistryUnavailable
from registry_bridge.model import BlockId
from registry_bridge.port import (
    BlockStatusRequest,
    IssueRequest,
    ListHoldingsRequest,
    RegistryHolding,
)
from tests.integration.adapters.conftest import ALL_REGISTRIES, Harness, later, start_harness

CAP = 4
"""Holdings per page at most, at the emulators of these tests."""

A, B = "ACC-A", "ACC-B"
STARTS = [1_000 + 100 * n for n in range(10)]
"""The first serial of each holding issued, in the order a listing gives them."""


def account_of(start: int) -> str:
    """The account holding the block starting at ``start`` (they alternate)."""
    return A if STARTS.index(start) % 2 == 0 else B


@dataclass(frozen=True)
class NativeListing:
    """A registry's listing call and the names it gives its paging."""

    stub: Callable[[grpc.Channel], Any]
    method: str
    request: Callable[..., Message]
    account_field: str
    size_field: str
    token_field: str
    rows_field: str
    next_field: str

    def call(
        self, channel: grpc.Channel, size: int = 0, token: str = "", account: str = ""
    ) -> tuple[int, str]:
        """One call: the rows of the page, and the token of the next."""
        request = self.request(
            **{self.account_field: account, self.size_field: size, self.token_field: token}
        )
        reply = getattr(self.stub(channel), self.method)(request, timeout=5)
        return len(getattr(reply, self.rows_field)), str(getattr(reply, self.next_field))


LISTINGS: dict[str, NativeListing] = {
    "verra": NativeListing(
        verra_pb2_grpc.VerraRegistryStub,
        "ListAccountHoldings",
        verra_pb2.ListAccountHoldingsRequest,
        "account_id",
        "page_size",
        "page_token",
        "holdings",
        "next_page_token",
    ),
    "gold-standard": NativeListing(
        gold_standard_pb2_grpc.GoldStandardRegistryStub,
        "ListAccountCredits",
        gold_standard_pb2.ListAccountCreditsRequest,
        "account_id",
        "limit",
        "cursor",
        "holdings",
        "next_cursor",
    ),
    "national": NativeListing(
        national_pb2_grpc.NationalRegistryStub,
        "ProvideUnitBlocks",
        national_pb2.ProvideUnitBlocksRequest,
        "account_identifier",
        "max_blocks",
        "continuation_token",
        "blocks",
        "continuation_token",
    ),
    "hkmo": NativeListing(
        hkmo_pb2_grpc.CarbonVenueStub,
        "QueryPositions",
        hkmo_pb2.QueryPositionsRequest,
        "client_account",
        "max_results",
        "next_token",
        "positions",
        "next_token",
    ),
    "shenzhen": NativeListing(
        shenzhen_pb2_grpc.ShenzhenRegistryStub,
        "QueryLots",
        shenzhen_pb2.QueryLotsRequest,
        "account_no",
        "max_lots",
        "after_key",
        "lots",
        "next_after_key",
    ),
    "guangdong": NativeListing(
        guangdong_pb2_grpc.GuangdongRegistryStub,
        "ListBatches",
        guangdong_pb2.ListBatchesRequest,
        "holder_code",
        "rows_per_page",
        "resume_key",
        "batches",
        "next_resume_key",
    ),
    "bri": NativeListing(
        bri_pb2_grpc.ItmoRegistryStub,
        "GetHoldings",
        bri_pb2.GetHoldingsRequest,
        "holding_account",
        "max_entries",
        "resumption_token",
        "holdings",
        "resumption_token",
    ),
}


def test_every_registry_has_its_listing_described() -> None:
    assert set(LISTINGS) == set(ALL_REGISTRIES)


def seed(h: Harness) -> None:
    """Ten holdings of ten units, alternating between two accounts."""
    for start in STARTS:
        h.adapter.issue(IssueRequest(h.op("issue"), account_of(start), h.block(start, start + 9)))


def _seeded(registry_id: str) -> Iterator[tuple[Harness, grpc.Channel]]:
    h = start_harness(registry_id, page_size_cap=CAP)
    channel = grpc.insecure_channel(h.running.target)
    try:
        seed(h)
        yield h, channel
    finally:
        channel.close()
        h.running.stop(grace=None)


@pytest.fixture(params=ALL_REGISTRIES)
def paged(request: pytest.FixtureRequest) -> Iterator[tuple[Harness, grpc.Channel]]:
    """Each registry's emulator capping pages at ``CAP``, holding ten holdings, with its
    adapter and a bare channel for native calls."""
    yield from _seeded(str(request.param))


def starts(holdings: Sequence[RegistryHolding]) -> list[int]:
    return [holding.block.id.serial_start for holding in holdings]


def client_of(h: Harness) -> PagedListing:
    """The adapter under the retries, which reads one page a call."""
    assert isinstance(h.adapter, RetryingRegistry)
    client = h.adapter.inner
    assert isinstance(client, PagedListing)
    return client


def listing_calls(h: Harness) -> int:
    return h.running.calls.snapshot()[LISTINGS[h.registry_id].method]


def test_a_listing_longer_than_a_page_is_read_whole_and_in_order(
    paged: tuple[Harness, grpc.Channel],
) -> None:
    h, _ = paged
    before = listing_calls(h)
    assert starts(h.adapter.list_holdings(ListHoldingsRequest())) == STARTS
    assert listing_calls(h) - before == 3  # 4 + 4 + 2
    held_by_a = h.adapter.list_holdings(ListHoldingsRequest(account=A))
    assert starts(held_by_a) == STARTS[::2]
    assert {holding.account for holding in held_by_a} == {A}
    assert listing_calls(h) - before == 3 + 2  # 4 + 1


def test_a_block_overlapping_more_holdings_than_a_page_is_read_whole(
    paged: tuple[Harness, grpc.Channel],
) -> None:
    h, _ = paged
    whole = h.block(STARTS[0], STARTS[-1] + 9).id
    assert starts(h.adapter.block_status(BlockStatusRequest(whole))) == STARTS


def test_a_page_holds_at_most_the_registrys_cap_whatever_is_asked(
    paged: tuple[Harness, grpc.Channel],
) -> None:
    h, channel = paged
    listing = LISTINGS[h.registry_id]
    rows, token = listing.call(channel, size=1_000)
    assert rows == CAP and token
    # No size asks for the cap; a smaller one is kept.
    assert listing.call(channel)[0] == CAP
    assert listing.call(channel, size=3)[0] == 3


def test_the_pages_asked_for_one_at_a_time_list_every_holding_once(
    paged: tuple[Harness, grpc.Channel],
) -> None:
    h, channel = paged
    listing = LISTINGS[h.registry_id]
    counted, token = listing.call(channel, size=3)
    pages = 1
    while token:
        rows, token = listing.call(channel, size=3, token=token)
        counted += rows
        pages += 1
    assert (counted, pages) == (10, 4)


@dataclass(frozen=True)
class NativeBlockLookup:
    """A registry's own call for the holdings overlapping a range, where it has one apart
    from its listing (the other registries filter their listing by range), and the names
    it gives its paging: those of its listing."""

    stub: Callable[[grpc.Channel], Any]
    method: str
    request: Callable[..., Message]
    range_of: Callable[[BlockId], Message]
    size_field: str
    token_field: str
    next_field: str
    block_field: str
    """The holding's field of its block, which carries the block's serial number."""

    def call(
        self, channel: grpc.Channel, block_id: BlockId, size: int = 0, token: str = ""
    ) -> tuple[list[str], str]:
        """One call: the serial numbers of the page's holdings, and the token of the next."""
        request = self.request(
            range=self.range_of(block_id), **{self.size_field: size, self.token_field: token}
        )
        reply = getattr(self.stub(channel), self.method)(request, timeout=5)
        serials = [str(getattr(h, self.block_field).serial_number) for h in reply.holdings]
        return serials, str(getattr(reply, self.next_field))


BLOCK_LOOKUPS: dict[str, NativeBlockLookup] = {
    "verra": NativeBlockLookup(
        verra_pb2_grpc.VerraRegistryStub,
        "GetVcuBlock",
        verra_pb2.GetVcuBlockRequest,
        verra_client.range_to_native,
        "page_size",
        "page_token",
        "next_page_token",
        "vcus",
    ),
    "gold-standard": NativeBlockLookup(
        gold_standard_pb2_grpc.GoldStandardRegistryStub,
        "GetCreditBlock",
        gold_standard_pb2.GetCreditBlockRequest,
        gold_standard_client.range_to_native,
        "limit",
        "cursor",
        "next_cursor",
        "credits",
    ),
}


@pytest.fixture(params=sorted(BLOCK_LOOKUPS))
def looked_up(request: pytest.FixtureRequest) -> Iterator[tuple[Harness, grpc.Channel]]:
    """``paged``, for the registries with a block lookup of their own."""
    yield from _seeded(str(request.param))


def test_a_block_lookup_pages_as_its_registrys_listing_does(
    looked_up: tuple[Harness, grpc.Channel],
) -> None:
    h, channel = looked_up
    lookup, whole = BLOCK_LOOKUPS[h.registry_id], h.block(STARTS[0], STARTS[-1] + 9).id
    first, token = lookup.call(channel, whole, size=1_000)
    assert len(first) == CAP and token
    seen = list(first)
    while token:
        page, token = lookup.call(channel, whole, size=3, token=token)
        seen += page
    assert len(set(seen)) == len(seen) == len(STARTS)
    # Through the adapter: every page, one call each.
    before = h.running.calls.snapshot()[lookup.method]
    assert starts(h.adapter.block_status(BlockStatusRequest(whole))) == STARTS
    assert h.running.calls.snapshot()[lookup.method] - before == 3  # 4 + 4 + 2


def test_a_block_lookups_token_answers_its_own_range_only(
    looked_up: tuple[Harness, grpc.Channel],
) -> None:
    h, channel = looked_up
    lookup = BLOCK_LOOKUPS[h.registry_id]
    whole, part = h.block(STARTS[0], STARTS[-1] + 9).id, h.block(STARTS[0], STARTS[5]).id
    _, token = lookup.call(channel, whole, size=1)
    refused = _refusal(lambda: lookup.call(channel, part, size=1, token=token))
    assert rejection_code(refused) == "INVALID_PAGE_TOKEN"
    assert refused.details().startswith(f"{lookup.token_field} was given for another query")
    refused = _refusal(lambda: lookup.call(channel, whole, size=-1))
    assert rejection_code(refused) == "INVALID_PAGE_SIZE"
    assert refused.details() == f"{lookup.size_field} must not be negative, got -1"


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return refused.value


def test_a_negative_page_size_is_refused_naming_it(paged: tuple[Harness, grpc.Channel]) -> None:
    h, channel = paged
    listing = LISTINGS[h.registry_id]
    refused = _refusal(lambda: listing.call(channel, size=-1))
    assert rejection_code(refused) == "INVALID_PAGE_SIZE"
    assert refused.details() == f"{listing.size_field} must not be negative, got -1"


@pytest.mark.parametrize("token", ["not a token", "WzEsIngiXQ", "bm90IGpzb24"])
def test_a_token_the_registry_never_gave_is_refused_naming_it(
    paged: tuple[Harness, grpc.Channel], token: str
) -> None:
    h, channel = paged
    listing = LISTINGS[h.registry_id]
    refused = _refusal(lambda: listing.call(channel, token=token))
    assert rejection_code(refused) == "INVALID_PAGE_TOKEN"
    assert refused.details() == f"{listing.token_field} is not a token this registry gave"
    # Through the adapter, the registry's refusal with its code.
    with pytest.raises(RegistryRejected) as rejected:
        client_of(h).list_holdings_page(ListHoldingsRequest(), token)
    assert rejected.value.code == "INVALID_PAGE_TOKEN"


def test_a_token_of_another_query_is_refused_naming_it(
    paged: tuple[Harness, grpc.Channel],
) -> None:
    h, channel = paged
    listing = LISTINGS[h.registry_id]
    _, token_of_a = listing.call(channel, size=1, account=A)
    assert listing.call(channel, size=1, token=token_of_a, account=A)[0] == 1
    refused = _refusal(lambda: listing.call(channel, size=1, token=token_of_a))
    assert rejection_code(refused) == "INVALID_PAGE_TOKEN"
    assert refused.details().startswith(f"{listing.token_field} was given for another query")


def _export(h: Harness, start: int) -> None:
    """The holding at ``start`` leaves the registry (transferred out), behind the adapter."""
    store, block_id = h.running.store, h.block(start, start + 9).id
    store.lock(h.op("lock"), account_of(start), block_id, later(h), f"out-{start}")
    store.finalize(h.op("out"), account_of(start), block_id, f"out-{start}", export=True)


def test_holdings_present_throughout_are_listed_once_while_others_come_and_go(
    paged: tuple[Harness, grpc.Channel],
) -> None:
    h, _ = paged
    client, everything = client_of(h), ListHoldingsRequest()
    first = client.list_holdings_page(everything, "")
    assert starts(first.holdings) == STARTS[:CAP]

    # Between two pages, behind the page read: two holdings leave and one arrives (an
    # offset would skip two holdings, then repeat one); ahead of it: one of each.
    gone = {STARTS[0], STARTS[2], STARTS[6]}
    for start in sorted(gone):
        _export(h, start)
    behind, ahead = STARTS[1] + 50, STARTS[8] + 50
    for start in (behind, ahead):
        h.running.store.issue(h.op("new"), A, h.block(start, start + 9))

    rest: list[RegistryHolding] = []
    page = first
    while page.next_page:
        page = client.list_holdings_page(everything, page.next_page)
        rest.extend(page.holdings)

    listed = Counter(starts(first.holdings) + starts(rest))
    assert {start: listed[start] for start in STARTS if start not in gone} == {
        start: 1 for start in STARTS if start not in gone
    }
    # The rest is in order, has what arrived ahead and nothing of what left ahead.
    assert starts(rest) == [STARTS[4], STARTS[5], STARTS[7], STARTS[8], ahead, STARTS[9]]
    assert behind not in listed


def _refusing_the_second_page(registry_id: str, calls: int) -> Harness:
    """An emulator capping pages at ``CAP`` whose listing refuses ``calls`` calls after the
    first page (UNAVAILABLE), holding ten holdings."""
    refusal = ScriptedRefusal(LISTINGS[registry_id].method, calls=calls, after=1)
    h = start_harness(registry_id, faults=FaultConfig(refusals=(refusal,)), page_size_cap=CAP)
    seed(h)
    return h


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_a_page_failing_transiently_is_asked_again_and_the_pages_read_are_kept(
    registry_id: str,
) -> None:
    h = _refusing_the_second_page(registry_id, calls=2)
    try:
        assert starts(h.adapter.list_holdings(ListHoldingsRequest())) == STARTS
        # Three pages and the second page's two refused calls: the first page was not
        # read again.
        assert listing_calls(h) == 3 + 2
    finally:
        h.running.stop(grace=None)


@pytest.mark.parametrize("registry_id", ALL_REGISTRIES)
def test_a_page_failing_on_every_attempt_fails_the_listing(registry_id: str) -> None:
    h = _refusing_the_second_page(registry_id, calls=1_000)
    try:
        with pytest.raises(RegistryUnavailable, match="injected fault: scripted UNAVAILABLE"):
            h.adapter.list_holdings(ListHoldingsRequest())
        assert isinstance(h.adapter, RetryingRegistry)
        assert listing_calls(h) == 1 + h.adapter.policy.attempts
    finally:
        h.running.stop(grace=None)
