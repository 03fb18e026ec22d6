"""A registry's reply larger than gRPC's default 4 MiB cap reaches its adapter whole.

The native holdings listings answer in one message; reconciliation and the registry
import read them whole, and a registry of some 30,000 holdings already answers more than
4 MiB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from adapters.emulator_core import RunningEmulator, start_emulator
from adapters.registry import MAX_REPLY_BYTES, REGISTRIES, build_adapter
from adapters.serials import parse_serial
from registry_bridge.model import BlockId
from registry_bridge.port import ListHoldingsRequest

SERIAL = "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
DEFAULT_GRPC_CAP = 4 * 1024 * 1024
# Long account names make each holding about a kilobyte, so a few thousand holdings,
# quick to issue, outgrow the default cap as some 30,000 ordinary ones would.
ACCOUNT = "a" * 1_000
HOLDINGS = 4_500


@pytest.fixture
def crowded_verra() -> Iterator[RunningEmulator]:
    running = start_emulator(REGISTRIES["verra"].emulator())
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


def test_a_listing_larger_than_the_default_cap_is_read_whole(
    crowded_verra: RunningEmulator,
) -> None:
    assert HOLDINGS * len(ACCOUNT) > DEFAULT_GRPC_CAP
    assert MAX_REPLY_BYTES > DEFAULT_GRPC_CAP
    port = build_adapter("verra", crowded_verra.target)
    listed = port.list_holdings(ListHoldingsRequest())
    assert len(listed) == HOLDINGS
    assert {h.block.id.serial_start for h in listed} == {10**9 + 10 * i for i in range(HOLDINGS)}
