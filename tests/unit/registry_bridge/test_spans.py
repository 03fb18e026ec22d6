"""Serial runs: merged into maximal runs, and what of a range they leave out."""

from __future__ import annotations

from registry_bridge.model import merge_spans, spans_missing


def test_adjacent_and_overlapping_runs_merge() -> None:
    assert merge_spans([(10, 12), (1, 3), (4, 5), (11, 20), (30, 30)]) == [
        (1, 5),
        (10, 20),
        (30, 30),
    ]
    assert merge_spans([]) == []


def test_what_a_range_misses_of_its_runs() -> None:
    runs = merge_spans([(5, 9), (12, 14)])
    assert spans_missing(1, 20, runs) == [(1, 4), (10, 11), (15, 20)]
    assert spans_missing(5, 9, runs) == []
    assert spans_missing(6, 13, runs) == [(10, 11)]
    assert spans_missing(1, 3, runs) == [(1, 3)]
    assert spans_missing(1, 3, []) == [(1, 3)]
