"""Where a serial range is filed in ``event_blocks``: a node of a binary tree over the
serial numbers, so that a trace seeks the entries of its own units' ranges only.

A range of serials overlaps the traced ones however it lies, so no order of the ranges
themselves lets an index read only those that overlap.  Instead each range is filed under
one node of an implicit binary tree (a relational interval tree's "fork" node): the
serial in it with the most trailing zero bits, its highest node in the tree.  A range
that holds a serial ``x`` is filed under ``x`` or under one of ``x``'s ancestors, at most
one node per level; a range inside the traced serials is filed under a node inside them.
So the ranges that overlap ``a``..``b`` are all under the ancestors of ``a`` and ``b`` and
the nodes between them: an index on ``(program, series, node, event index)`` reads, node
by node from a page's position, the traced units' entries and, under the ancestors, only
the few other ranges that hold the same ancestor.

Serial 0 has no lowest set bit: it is taken as above every other node, so a range from
0 is filed under 0 and every lookup looks there too.
"""

from __future__ import annotations

from registry_bridge.model import MAX_SERIAL

_LEVELS = MAX_SERIAL.bit_length()
"""Levels of the tree over 1 to ``MAX_SERIAL``: the highest node is ``2**62``."""


def serial_node(start: int, end: int) -> int:
    """The node the range ``start``..``end`` (``0 <= start <= end``) is filed under: its
    serial with the most trailing zero bits (0 if it starts at 0)."""
    if start == 0:
        return 0
    # start-1 and end agree above the highest bit in which they differ, and end has it
    # set: end with every bit below it cleared is in the range, and no serial of the range
    # is a multiple of a higher power of two.
    level = ((start - 1) ^ end).bit_length() - 1
    return (end >> level) << level


def _ancestors(serial: int) -> list[int]:
    """``serial`` and the nodes above it: one per level, from its own up."""
    if serial == 0:
        return []
    own = (serial & -serial).bit_length() - 1
    return [((serial >> (k + 1)) << (k + 1)) | (1 << k) for k in range(own, _LEVELS)]


def nodes_around(start: int, end: int, top: int = MAX_SERIAL) -> list[int]:
    """The nodes up to ``top`` outside ``start``..``end`` that a range overlapping it can
    be filed under, in rising order: 0 and the ancestors of both ends, about two per
    level.  ``top``, the highest node anything is filed under, leaves out the levels above
    the serials in use.  The others are the serials ``start``..``end`` themselves."""
    nodes = {0, *_ancestors(start), *_ancestors(end)}
    return sorted(node for node in nodes if node <= top and not start <= node <= end)
