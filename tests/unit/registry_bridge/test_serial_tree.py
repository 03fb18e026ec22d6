"""The serials' tree a traced range's index entries are filed in: every range that
overlaps a traced range is filed under a node a trace of it looks under."""

from __future__ import annotations

import random

from registry_bridge.model import MAX_SERIAL
from registry_bridge.serial_tree import nodes_around, serial_node


def _highest(start: int, end: int) -> int:
    """The serial of ``start``..``end`` with the most trailing zero bits, 0 above all."""
    return max(range(start, end + 1), key=lambda s: MAX_SERIAL + 1 if s == 0 else s & -s)


def test_a_range_is_filed_under_its_highest_node() -> None:
    for start in range(0, 80):
        for end in range(start, 80):
            assert serial_node(start, end) == _highest(start, end), (start, end)
    assert serial_node(MAX_SERIAL, MAX_SERIAL) == MAX_SERIAL
    assert serial_node(1, MAX_SERIAL) == 2**62


def _looked_under(start: int, end: int, top: int = MAX_SERIAL) -> set[int]:
    return {*nodes_around(start, end, top), *range(start, min(end, top) + 1)}


def test_every_range_overlapping_a_traced_one_is_filed_where_its_trace_looks() -> None:
    for start in range(0, 40):
        for end in range(start, 40):
            for first in range(0, 40):
                for last in range(first, min(first + 6, 40)):
                    if start <= last and first <= end:
                        assert serial_node(start, end) in _looked_under(first, last)
    rng = random.Random(3)
    for _ in range(20_000):
        top = rng.choice([100, 10**6, 2**40, MAX_SERIAL])
        start = rng.randrange(0, top)
        end = min(top, start + rng.choice([0, 1, 100, 10**5, 10**12, MAX_SERIAL]))
        first = rng.randrange(max(0, start - 50), min(top, end + 50) + 1)
        last = min(MAX_SERIAL, first + rng.choice([0, 1, 5, 31]))
        if start <= last and first <= end:
            # Looked under up to the highest node filed (here, this range's).
            node = serial_node(start, end)
            assert node in _looked_under(first, last, node), (start, end, first, last)


def test_a_trace_looks_under_about_two_nodes_per_level() -> None:
    around = nodes_around(500_999, 500_999)
    assert 0 in around and 500_999 not in around
    assert len(around) <= 2 * 63
    # Up to the highest node filed, only the levels of the serials in use.
    assert max(nodes_around(500_999, 500_999, top=600_999)) <= 600_999
    assert len(nodes_around(500_999, 500_999, top=600_999)) <= 21
