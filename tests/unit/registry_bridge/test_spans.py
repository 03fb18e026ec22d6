"""Serial runs: merged into maximal runs, and what of a range they leave out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from hypothesis import given
from hypothesis import strategies as st

from registry_bridge.model import Span, merge_spans, spans_missing


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


class _CountedRuns(Sequence[Span]):
    """Runs that count how many of them are read."""

    def __init__(self, runs: list[Span]) -> None:
        self._runs = runs
        self.read = 0

    def __len__(self) -> int:
        return len(self._runs)

    @overload
    def __getitem__(self, index: int) -> Span: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Span]: ...
    def __getitem__(self, index: int | slice) -> Span | Sequence[Span]:
        self.read += 1
        return self._runs[index]


def test_a_range_reads_the_runs_near_it_not_every_run_before_it() -> None:
    # Reconciliation asks once per block against an account's runs: walking every run
    # before each block made that quadratic in the runs.
    runs = _CountedRuns([(10 * i, 10 * i + 4) for i in range(100_000)])
    assert spans_missing(500_002, 500_013, runs) == [(500_005, 500_009)]
    assert runs.read < 40
    assert spans_missing(2_000_000, 2_000_001, runs) == [(2_000_000, 2_000_001)]
    assert spans_missing(0, 3, runs) == []


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=12),
    st.integers(0, 70),
    st.integers(0, 12),
)
def test_what_a_range_misses_is_every_serial_of_it_outside_the_runs(
    spans: list[tuple[int, int]], start: int, length: int
) -> None:
    runs = merge_spans((low, low + extra) for low, extra in spans)
    covered = {serial for low, high in runs for serial in range(low, high + 1)}
    missing = {
        serial
        for low, high in spans_missing(start, start + length, runs)
        for serial in range(low, high + 1)
    }
    assert missing == set(range(start, start + length + 1)) - covered
    assert merge_spans(spans_missing(start, start + length, runs)) == spans_missing(
        start, start + length, runs
    )
