"""A holdings listing larger than gRPC's default 4 MiB reply cap reaches its adapter whole,
a page per call, over a channel that accepts no larger reply than the default.

Reconciliation and the registry import read a registry's listing whole, and a registry of
some 30,000 holdings already weighs more than 4 MiB; each page weighs a fraction of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import pytest

from adapters._pb.registries.verra.v1 import verra_pb2, verra_pb2_grpc
from adapters.emulator_core import PAGE_BYTES_CAP, PAGE_SIZE_CAP, RunningEmulator, start_emulator
from adapters.registry import CHANNEL_OPTIONS, MAX_REPLY_BYTES, REGISTRIES, build_adapter
from adapters.serials import parse_serial
from registry_bridge.model import BlockId
from registry_bridge.port import ListHoldingsRequest
from tests.loopback import ANY_PORT

SERIAL = "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
DEFAULT_GRPC_CAP = 4 * 1024 * 1024
# Long account names make each holding about a kilobyte, so a few thousand holdings,
# quick to issue, outgrow the default cap as some 30,000 ordinary ones would.
ACCOUNT = "a" * 1_000
HOLDINGS = 4_500


@pytest.fixture
def crowded_verra() -> Iterator[RunningEmulator]:
    running = start_emulator(REGISTRIES["verra"].emulator(), listen=ANY_PORT)
    block = parse_serial("verra", SERIAL)
    try:
        with running.store.batch():
            for i in range(HOLDINGS):
                start = 10**9 + 10 * i
                piece = dataclasses.replace(block, id=BlockId(block.id.program, "", start, start))
                running.store.issue(f"crowd-{i}", f"{ACCOUNT}{i}", piece)
        yield running
    finally:
        running.stop(grace=None)


def test_a_listing_larger_than_the_default_cap_is_read_whole_in_pages(
    crowded_verra: RunningEmulator,
) -> None:
    assert HOLDINGS * len(ACCOUNT) > DEFAULT_GRPC_CAP
    assert MAX_REPLY_BYTES == DEFAULT_GRPC_CAP
    port = build_adapter("verra", crowded_verra.target)
    listed = port.list_holdings(ListHoldingsRequest())
    assert [h.block.id.serial_start for h in listed] == [10**9 + 10 * i for i in range(HOLDINGS)]
    assert crowded_verra.calls.snapshot()["ListAccountHoldings"] > 1


def test_a_page_of_the_registrys_largest_size_stays_under_its_byte_cap(
    crowded_verra: RunningEmulator,
) -> None:
    # A thousand holdings of a kilobyte would weigh about 1 MiB and more: the page stops
    # at the byte cap, before the row cap.
    channel = grpc.insecure_channel(crowded_verra.target, options=CHANNEL_OPTIONS)
    try:
        stub = verra_pb2_grpc.VerraRegistryStub(channel)
        page = stub.ListAccountHoldings(
            verra_pb2.ListAccountHoldingsRequest(page_size=PAGE_SIZE_CAP), timeout=10
        )
    finally:
        channel.close()
    assert 0 < len(page.holdings) < PAGE_SIZE_CAP
    assert page.next_page_token
    assert sum(h.ByteSize() for h in page.holdings) <= PAGE_BYTES_CAP < MAX_REPLY_BYTES
