"""Concurrent single submissions share rounds: each is driven, none waits forever."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from registry_bridge.bridge import _SharedRounds


class _Recorder:
    """A drive_many that records its groups; the first call waits until released."""

    def __init__(self, fail_on: str = "") -> None:
        self.groups: list[list[str]] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self._fail_on = fail_on

    def __call__(self, transfer_ids: Sequence[str]) -> object:
        self.groups.append(list(transfer_ids))
        if len(self.groups) == 1:
            self.first_started.set()
            self.release_first.wait(timeout=10)
        if self._fail_on in transfer_ids:
            raise RuntimeError(f"database down while driving {self._fail_on}")
        return None


def _run(rounds: _SharedRounds, transfer_id: str, errors: dict[str, Exception]) -> None:
    try:
        rounds.drive(transfer_id)
    except RuntimeError as exc:
        errors[transfer_id] = exc


def test_submissions_arriving_during_a_round_are_driven_together_next() -> None:
    recorder = _Recorder()
    rounds = _SharedRounds(recorder)
    errors: dict[str, Exception] = {}
    first = threading.Thread(target=_run, args=(rounds, "t0", errors))
    first.start()
    assert recorder.first_started.wait(timeout=10)
    others = [threading.Thread(target=_run, args=(rounds, f"t{i}", errors)) for i in (1, 2, 3)]
    for thread in others:
        thread.start()
    while len(rounds._queue) < 3:  # all three wait behind the running round
        threading.Event().wait(0.01)
    recorder.release_first.set()
    for thread in [first, *others]:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert recorder.groups[0] == ["t0"]
    assert sorted(recorder.groups[1]) == ["t1", "t2", "t3"]  # one shared round
    assert errors == {}


def test_a_failed_round_fails_each_of_its_submissions_and_the_next_round_still_runs() -> None:
    recorder = _Recorder(fail_on="t1")
    rounds = _SharedRounds(recorder)
    errors: dict[str, Exception] = {}
    first = threading.Thread(target=_run, args=(rounds, "t0", errors))
    first.start()
    assert recorder.first_started.wait(timeout=10)
    second = [threading.Thread(target=_run, args=(rounds, f"t{i}", errors)) for i in (1, 2)]
    for thread in second:
        thread.start()
    while len(rounds._queue) < 2:
        threading.Event().wait(0.01)
    recorder.release_first.set()
    for thread in [first, *second]:
        thread.join(timeout=10)
    assert sorted(errors) == ["t1", "t2"]  # the failed group's submissions, not t0's
    rounds.drive("t9")  # no leader left stuck: a later submission leads a round of its own
    assert recorder.groups[-1] == ["t9"]


def test_a_lone_submission_is_driven_at_once_by_its_own_thread() -> None:
    seen: list[str] = []

    def drive_many(transfer_ids: Sequence[str]) -> object:
        seen.append(threading.current_thread().name)
        return None

    _SharedRounds(drive_many).drive("t0")
    assert seen == [threading.current_thread().name]


def test_a_base_exception_in_a_round_still_hands_the_lead_over() -> None:
    def drive_many(transfer_ids: Sequence[str]) -> object:
        raise KeyboardInterrupt

    rounds = _SharedRounds(drive_many)
    with pytest.raises(KeyboardInterrupt):
        rounds.drive("t0")
    assert rounds._leading is False and rounds._queue == []
