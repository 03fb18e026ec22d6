"""Which nodes of the serials' tree (``serial_tree``) a read of ``event_blocks`` seeks to
find the entries of ranges overlapping given ones: a trace's pages (``provenance``) and a
reconciliation's trails (``reconcile``) read the index entries filed under them
(``ix_event_blocks_node``), not their program's in log order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry_bridge import serial_tree
from registry_bridge.model import BlockId
from registry_bridge.schema import EventBlock

NARROW = 32
"""Serials a range has at most to be sought under each of them as a node; inside a wider
one, only the nodes something is filed under are sought (:func:`nodes_to_seek`)."""

INNER_NODES = 64
"""Nodes filed under inside a wide range that are sought one by one at most: past them (a
range split into so many pieces), reading its program's entries in log order costs less
than finding and seeking them all."""

_KEYS_PER_STATEMENT = 100
"""Programs and series whose highest node one statement reads (two parameters each): old
SQLite builds bind at most 999."""

_WIDE_PER_STATEMENT = 100
"""Wide ranges whose inner nodes one statement finds (four parameters each, and one)."""


@functools.lru_cache(maxsize=16)
def _tops_statement(programs: int) -> sa.Select[Any]:
    """The highest node filed in each of ``programs`` programs and series: one seek each."""
    return sa.select(
        *(
            sa.select(sa.func.max(EventBlock.serial_node))
            .where(
                EventBlock.program == sa.bindparam(f"program_{n}"),
                EventBlock.serial_series == sa.bindparam(f"series_{n}"),
            )
            .scalar_subquery()
            for n in range(programs)
        )
    )


def _top_nodes(session: Session, ranges: Sequence[BlockId]) -> dict[tuple[str, str], int | None]:
    """The highest node anything is filed under in each program and series of ``ranges``
    (None where nothing is), in one statement per :data:`_KEYS_PER_STATEMENT`."""
    keys = sorted({(b.program.value, b.serial_series) for b in ranges})
    tops: dict[tuple[str, str], int | None] = {}
    for at in range(0, len(keys), _KEYS_PER_STATEMENT):
        chunk = keys[at : at + _KEYS_PER_STATEMENT]
        parameters: dict[str, Any] = {}
        for n, (program, series) in enumerate(chunk):
            parameters[f"program_{n}"], parameters[f"series_{n}"] = program, series
        row = session.execute(_tops_statement(len(chunk)), parameters).one()
        tops.update(zip(chunk, (None if top is None else int(top) for top in row), strict=True))
    return tops


@functools.lru_cache(maxsize=16)
def _inner_nodes_statement(ranges: int) -> sa.TextClause:
    """The nodes filed under inside each of ``ranges`` ranges (``first_n``..``last_n`` of
    ``program_n`` and ``series_n``), rising, with the range's ``n``: one seek each (a loose
    index scan, which neither database does by itself), and one more than ``most`` at
    most per range."""
    asked = ", ".join(
        f"({n}, CAST(:program_{n} AS VARCHAR(16)), CAST(:series_{n} AS VARCHAR(64)), "
        f"CAST(:first_{n} AS BIGINT), CAST(:last_{n} AS BIGINT))"
        for n in range(ranges)
    )
    return sa.text(
        f"WITH RECURSIVE asked(n, program, serial_series, first, last) AS (VALUES {asked}), "
        "inner_nodes(n, program, serial_series, last, node, found) AS ("
        "SELECT asked.n, asked.program, asked.serial_series, asked.last, "
        "(SELECT min(b.serial_node) FROM event_blocks AS b WHERE b.program = asked.program "
        "AND b.serial_series = asked.serial_series AND b.serial_node >= asked.first "
        "AND b.serial_node <= asked.last), 1 FROM asked "
        "UNION ALL "
        "SELECT i.n, i.program, i.serial_series, i.last, "
        "(SELECT min(b.serial_node) FROM event_blocks AS b WHERE b.program = i.program "
        "AND b.serial_series = i.serial_series AND b.serial_node > i.node "
        "AND b.serial_node <= i.last), i.found + 1 "
        "FROM inner_nodes AS i WHERE i.node IS NOT NULL AND i.found <= :most) "
        "SELECT n, node FROM inner_nodes WHERE node IS NOT NULL"
    )


def _inner_nodes(session: Session, ranges: Sequence[BlockId]) -> list[list[int] | None]:
    """For each of ``ranges``, the nodes inside it that something is filed under (every
    one a range inside it is), or None past :data:`INNER_NODES`; in one statement per
    :data:`_WIDE_PER_STATEMENT`."""
    found: list[list[int] | None] = []
    for at in range(0, len(ranges), _WIDE_PER_STATEMENT):
        chunk = ranges[at : at + _WIDE_PER_STATEMENT]
        parameters: dict[str, Any] = {"most": INNER_NODES}
        for n, block in enumerate(chunk):
            parameters[f"program_{n}"] = block.program.value
            parameters[f"series_{n}"] = block.serial_series
            parameters[f"first_{n}"] = block.serial_start
            parameters[f"last_{n}"] = block.serial_end
        nodes: list[list[int]] = [[] for _ in chunk]
        for n, node in session.execute(_inner_nodes_statement(len(chunk)), parameters).tuples():
            nodes[int(n)].append(int(node))
        found.extend(None if len(inside) > INNER_NODES else sorted(inside) for inside in nodes)
    return found


def nodes_to_seek(session: Session, ranges: Sequence[BlockId]) -> list[list[int] | None]:
    """For each of ``ranges``, the nodes of the serials' tree that every entry of
    ``event_blocks`` overlapping it is filed under, rising, or None where reading its
    program's entries in log order costs less.

    They are the ancestors of its ends up to the highest node filed in its program and
    series (:func:`_top_nodes`), and inside it, each of its serials if it is narrow
    (:data:`NARROW`), else the nodes something is filed under (:func:`_inner_nodes`;
    None past :data:`INNER_NODES`).  None at all where nothing is filed in its program
    and series.  Two statements at most for up to a hundred ranges, whatever their number.
    """
    tops = _top_nodes(session, ranges)
    wide = [
        n
        for n, block in enumerate(ranges)
        if block.serial_end - block.serial_start >= NARROW
        and tops[(block.program.value, block.serial_series)] is not None
    ]
    inner = dict(zip(wide, _inner_nodes(session, [ranges[n] for n in wide]), strict=True))
    planned: list[list[int] | None] = []
    for n, block in enumerate(ranges):
        top = tops[(block.program.value, block.serial_series)]
        if top is None:
            planned.append([])
            continue
        first, last = block.serial_start, block.serial_end
        inside = inner[n] if n in inner else list(range(first, min(last, top) + 1))
        if inside is None:
            planned.append(None)
            continue
        planned.append(sorted({*serial_tree.nodes_around(first, last, top), *inside}))
    return planned
