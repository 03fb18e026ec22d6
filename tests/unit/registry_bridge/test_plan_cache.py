"""A transfer's plan is parsed at most once per text, and the step writing it never parses it.

The step that writes a plan hands its own pieces to the cache; the steps after it read them
back from there.  That is only sound if a piece read from the plan's text is the very piece
that was written, so the round trip is checked on a piece with every attribute set.
"""

from __future__ import annotations

import json
from datetime import date

import pytest

from registry_bridge.bridge import _ParsedPlan, _Piece, _PlanCache
from registry_bridge.model import (
    Authorization,
    BlockId,
    CorrespondingAdjustment,
    Program,
    UnitBlock,
)


def _piece(start: int) -> _Piece:
    block = UnitBlock(
        id=BlockId(Program.VCS, "", start, start + 9),
        project_id="1060",
        country="KH",
        vintage_start=date(2019, 1, 1),
        vintage_end=date(2019, 12, 31),
        region="Siem Reap",
        project_type="REDD+",
        methodology="VM0009",
        gas="CO2",
        gwp_basis="AR5",
        issuance_id="9660",
        authorization=Authorization(
            "LoA-KH-7", "KH", frozenset({"ndc", "corsia"}), date(2024, 5, 2)
        ),
        corresponding_adjustment=CorrespondingAdjustment.PENDING,
        labels=frozenset({"CCB", "SDG-13"}),
        native_attributes=(("additional_certification", "CCB"), ("batch", "0")),
    )
    return _Piece(
        source_block=block.id,
        origin_block=BlockId(Program.VCS, "", start + 1_000, start + 1_009),
        origin_account="venue-hkmo",
        block=block,
    )


def _plan_text(pieces: list[_Piece], locked_rows: list[int]) -> str:
    return json.dumps(
        {"pieces": [p.to_json() for p in pieces], "credited": [], "locked_rows": locked_rows},
        sort_keys=True,
    )


def test_a_piece_read_back_from_its_plan_is_the_piece_written() -> None:
    written = _piece(300_000_001)
    assert _Piece.from_json(json.loads(json.dumps(written.to_json()))) == written


def test_a_plan_is_parsed_from_its_text_when_not_remembered() -> None:
    pieces = [_piece(1), _piece(101)]
    parsed = _PlanCache(size=8).get(_plan_text(pieces, [7, 9]))
    assert parsed == _ParsedPlan(tuple(pieces), (7, 9))


def test_a_remembered_plan_is_not_parsed_again() -> None:
    cache = _PlanCache(size=8)
    remembered = _ParsedPlan((_piece(1),), (3,))
    # Text that does not parse: only the remembered answer can be returned for it.
    cache.remember("not json", remembered)
    assert cache.get("not json") is remembered


def test_the_oldest_plans_are_forgotten_beyond_the_size() -> None:
    cache = _PlanCache(size=2)
    for n in range(3):
        cache.remember(f"plan {n}", _ParsedPlan((), (n,)))
    assert cache.get("plan 2").locked_rows == (2,)
    assert cache.get("plan 1").locked_rows == (1,)
    with pytest.raises(json.JSONDecodeError):
        cache.get("plan 0")  # forgotten: parsed anew, and it is no JSON
