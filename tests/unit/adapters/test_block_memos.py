"""Native block conversions remembered by the block's attributes convert as they did.

The HK/Macau, Shenzhen and Verra adapters (and their emulators) convert a block's
attributes once per attribute set and write each block's range into a copy.  Held here:
any mix of blocks converts both ways to exactly what a fresh conversion gives, a shared
template never leaks into or out of a converted message, and a malformed native block is
refused whatever was converted before it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from google.protobuf.message import Message

from adapters.client_core import relabelled, spell_serial
from adapters.hkmo import client as hkmo
from adapters.serials import parse_serial
from adapters.shenzhen import client as shenzhen
from adapters.verra import client as verra
from registry_bridge.model import Authorization, BlockId, Program, UnitBlock

VERRA_SERIAL = "9660-300000001-300100000-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"


def variants(block: UnitBlock) -> list[UnitBlock]:
    """``block`` with its attributes and its range varied, one thing at a time."""
    start = block.id.serial_start
    changed = [
        block,
        dataclasses.replace(block, labels=frozenset({"CCB"})),
        dataclasses.replace(block, labels=frozenset({"CCB", "SD"})),
        dataclasses.replace(
            block, authorization=Authorization("LoA-1", "CN", frozenset({"NDC"}), date(2024, 2, 1))
        ),
        dataclasses.replace(block, region="CN-GD", methodology="ACM0002"),
        dataclasses.replace(block, gwp_basis="AR5"),
    ]
    ranges = [(start, start), (start + 1, start + 9), (start + 100, start + 100)]
    return [b.with_range(s, e) for b, (s, e) in itertools.product(changed, ranges)]


CCER = UnitBlock(
    id=BlockId(Program.CCER, "", 1, 1_000),
    project_id="P1",
    country="CN",
    vintage_start=date(2024, 1, 1),
    vintage_end=date(2024, 12, 31),
    native_attributes=(("a", "1"),),
)

# (to native, a fresh conversion to native, from native, a block to vary); each case's
# converters take and give its registry's own message type.
Case = tuple[
    Callable[[UnitBlock], Any],
    Callable[[UnitBlock], Message],
    Callable[[Any], UnitBlock],
    UnitBlock,
]


def fresh_units(block: UnitBlock) -> Message:
    native = hkmo._units_of_attributes(block)
    native.range.CopyFrom(hkmo.range_to_native(block.id))
    return native


def fresh_info(block: UnitBlock) -> Message:
    native = shenzhen._info_of_attributes(block)
    native.numbers.CopyFrom(shenzhen.numbers_to_native(block.id))
    return native


def fresh_vcus(block: UnitBlock) -> Message:
    native = verra._vcus_of_attributes(block)
    native.serial_number = spell_serial("verra", block)
    native.quantity = block.quantity
    return native


CASES: dict[str, Case] = {
    "hkmo": (hkmo.units_to_native, fresh_units, hkmo.units_from_native, CCER),
    "shenzhen": (shenzhen.info_to_native, fresh_info, shenzhen.info_from_native, CCER),
    "verra": (
        verra.block_to_native,
        fresh_vcus,
        verra.block_from_native,
        parse_serial("verra", VERRA_SERIAL),
    ),
}


@pytest.mark.parametrize("registry", sorted(CASES))
def test_every_mix_of_blocks_converts_as_a_fresh_conversion(registry: str) -> None:
    to_native, fresh, from_native, base = CASES[registry]
    blocks = variants(base)
    # Interleaved: each attribute set is met again after others.
    for block in blocks + blocks[::-1]:
        native = to_native(block)
        assert native == fresh(block)
        assert from_native(native) == block
        # A converted message is the caller's: changing it changes no later conversion.
        native.Clear()
    assert to_native(blocks[0]) == fresh(blocks[0])


def test_a_malformed_native_block_is_refused_after_a_good_one() -> None:
    good = hkmo.units_to_native(CCER)
    assert hkmo.units_from_native(good) == CCER
    bad_vintage = hkmo.units_to_native(CCER)
    bad_vintage.vintage_to = "2024-13-01"
    with pytest.raises(ValueError):
        hkmo.units_from_native(bad_vintage)
    reversed_range = hkmo.units_to_native(CCER)
    reversed_range.range.first_serial = 2_000
    with pytest.raises(ValueError):
        hkmo.units_from_native(reversed_range)
    info = shenzhen.info_to_native(CCER)
    info.numbers.product = "NOT-A-PROGRAM"
    with pytest.raises(ValueError):
        shenzhen.info_from_native(info)


def test_a_relabelled_block_is_the_block_over_the_new_id() -> None:
    new_id = BlockId(Program.CCER, "x", 5, 9)
    block = variants(CCER)[9]
    moved = relabelled(block, new_id)
    assert moved == dataclasses.replace(block, id=new_id)
    assert hash(moved) == hash(dataclasses.replace(block, id=new_id))
    assert block.id != new_id  # the original is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        moved.id = block.id  # type: ignore[misc]
        # NOTE(registry-adapters): the point: a relabelled block stays frozen.
