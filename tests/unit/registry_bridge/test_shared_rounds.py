"""Concurrent single submissions share rounds: each is settled, none waits forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from registry_bridge.bridge import _SharedRounds, _Submission
from registry_bridge.errors import RequestIdConflict
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.model import BlockId, Program
from registry_bridge.transfers import AccountRef, TransferInstruction

_INSTRUCTION = TransferInstruction(
    AccountRef("hkmo", "hk-seller"),
    AccountRef("shenzhen", "buyer"),
    (BlockId(Program.VCS, "", 1, 1),),
)


def _submission(request_id: str) -> _Submission:
    return _Submission(LOCAL_CALLER, request_id, _INSTRUCTION)


class _Recorder:
    """A settle that records its groups; the first call waits until released.

    A request id in ``conflicting`` is answered with its own error; ``fail_on`` fails
    the whole round it is in.
    """

    def __init__(self, fail_on: str = "", conflicting: frozenset[str] = frozenset()) -> None:
        self.groups: list[list[str]] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self._fail_on = fail_on
        self._conflicting = conflicting

    def __call__(self, submissions: Sequence[_Submission]) -> list[str | Exception]:
        request_ids = [s.request_id for s in submissions]
        self.groups.append(request_ids)
        if len(self.groups) == 1:
            self.first_started.set()
            self.release_first.wait(timeout=10)
        if self._fail_on in request_ids:
            raise RuntimeError(f"database down while settling {self._fail_on}")
        return [
            RequestIdConflict(f"{r} reused") if r in self._conflicting else f"transfer-of-{r}"
            for r in request_ids
        ]


def _run(
    rounds: _SharedRounds[str],
    request_id: str,
    answers: dict[str, str],
    errors: dict[str, Exception],
) -> None:
    try:
        answers[request_id] = rounds.submit(_submission(request_id))
    except (RuntimeError, RequestIdConflict) as exc:
        errors[request_id] = exc


def test_submissions_arriving_during_a_round_are_settled_together_next() -> None:
    recorder = _Recorder(conflicting=frozenset({"r2"}))
    rounds = _SharedRounds(recorder)
    answers: dict[str, str] = {}
    errors: dict[str, Exception] = {}
    first = threading.Thread(target=_run, args=(rounds, "r0", answers, errors))
    first.start()
    assert recorder.first_started.wait(timeout=10)
    others = [
        threading.Thread(target=_run, args=(rounds, f"r{i}", answers, errors)) for i in (1, 2, 3)
    ]
    for thread in others:
        thread.start()
    while len(rounds._queue) < 3:  # all three wait behind the running round
        threading.Event().wait(0.01)
    recorder.release_first.set()
    for thread in [first, *others]:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert recorder.groups[0] == ["r0"]
    assert sorted(recorder.groups[1]) == ["r1", "r2", "r3"]  # one shared round
    # Each hears its own answer; one submission's own error is its alone.
    assert answers == {"r0": "transfer-of-r0", "r1": "transfer-of-r1", "r3": "transfer-of-r3"}
    assert list(errors) == ["r2"] and isinstance(errors["r2"], RequestIdConflict)


def test_a_failed_round_fails_each_of_its_submissions_and_the_next_round_still_runs() -> None:
    recorder = _Recorder(fail_on="r1")
    rounds = _SharedRounds(recorder)
    answers: dict[str, str] = {}
    errors: dict[str, Exception] = {}
    first = threading.Thread(target=_run, args=(rounds, "r0", answers, errors))
    first.start()
    assert recorder.first_started.wait(timeout=10)
    second = [
        threading.Thread(target=_run, args=(rounds, f"r{i}", answers, errors)) for i in (1, 2)
    ]
    for thread in second:
        thread.start()
    while len(rounds._queue) < 2:
        threading.Event().wait(0.01)
    recorder.release_first.set()
    for thread in [first, *second]:
        thread.join(timeout=10)
    assert sorted(errors) == ["r1", "r2"]  # the failed group's submissions, not r0's
    assert answers == {"r0": "transfer-of-r0"}
    # No leader left stuck: a later submission leads a round of its own.
    assert rounds.submit(_submission("r9")) == "transfer-of-r9"
    assert recorder.groups[-1] == ["r9"]


def test_a_lone_submission_is_settled_at_once_by_its_own_thread() -> None:
    seen: list[str] = []

    def settle(submissions: Sequence[_Submission]) -> list[str | Exception]:
        seen.append(threading.current_thread().name)
        return ["t0"]

    assert _SharedRounds(settle).submit(_submission("r0")) == "t0"
    assert seen == [threading.current_thread().name]


def test_a_round_that_answers_too_few_submissions_fails_them() -> None:
    rounds: _SharedRounds[str] = _SharedRounds(lambda submissions: [])
    with pytest.raises(RuntimeError, match="without answering"):
        rounds.submit(_submission("r0"))
    assert rounds._leading is False and rounds._queue == []


def test_a_base_exception_in_a_round_still_hands_the_lead_over() -> None:
    def settle(submissions: Sequence[_Submission]) -> list[str | Exception]:
        raise KeyboardInterrupt

    rounds = _SharedRounds(settle)
    with pytest.raises(KeyboardInterrupt):
        rounds.submit(_submission("r0"))
    assert rounds._leading is False and rounds._queue == []


class _Paced:
    """A settle that records its groups and takes ``seconds_per_round`` for each (but
    the first, which waits for ``release_first``)."""

    def __init__(self, seconds_per_round: float) -> None:
        self.groups: list[list[str]] = []
        self.seconds_per_round = seconds_per_round
        self.release_first = threading.Event()

    def __call__(self, submissions: Sequence[_Submission]) -> list[str | Exception]:
        request_ids = [s.request_id for s in submissions]
        self.groups.append(request_ids)
        if len(self.groups) == 1:
            self.release_first.wait(timeout=10)
        else:
            time.sleep(self.seconds_per_round)
        return [f"transfer-of-{r}" for r in request_ids]


def test_the_submitters_of_a_round_who_come_back_at_once_share_the_next_round() -> None:
    """Clients that submit again as soon as they are answered come back a little apart;
    the round after theirs waits for them (a share of a round's time) instead of leaving
    with the first alone and the others for the round after."""
    paced = _Paced(seconds_per_round=1.0)  # so the window is 100 ms
    rounds = _SharedRounds(paced, gather_cap_seconds=10.0)
    answers: dict[str, str] = {}
    errors: dict[str, Exception] = {}
    blocker = threading.Thread(target=_run, args=(rounds, "r0", answers, errors))
    blocker.start()
    while not paced.groups:
        time.sleep(0.001)

    def client(i: int) -> None:
        _run(rounds, f"a{i}", answers, errors)
        time.sleep(0.01 * i)  # answered together, back a little apart
        _run(rounds, f"b{i}", answers, errors)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in clients:
        thread.start()
    while len(rounds._queue) < 3:
        time.sleep(0.001)
    paced.release_first.set()
    for thread in [blocker, *clients]:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert errors == {}
    assert [sorted(g) for g in paced.groups] == [["r0"], ["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    # Only one came back: its round went without the others, and the next expects one.
    # It waited its share of the b round's second for them; its own round need not last.
    paced.seconds_per_round = 0.0
    assert rounds.submit(_submission("c0")) == "transfer-of-c0"
    assert paced.groups[-1] == ["c0"]
    assert rounds._submitters == 1


def test_a_lone_client_never_waits_for_others(monkeypatch: pytest.MonkeyPatch) -> None:
    paced = _Paced(seconds_per_round=0.05)
    paced.release_first.set()
    rounds = _SharedRounds(paced, gather_cap_seconds=10.0)
    waits: list[float | None] = []
    arrived = rounds._arrived

    class _Spy:
        def notify(self) -> None:
            arrived.notify()

        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return arrived.wait(timeout)

    monkeypatch.setattr(rounds, "_arrived", _Spy())
    for i in range(4):
        assert rounds.submit(_submission(f"r{i}")) == f"transfer-of-r{i}"
    assert paced.groups == [["r0"], ["r1"], ["r2"], ["r3"]]
    assert waits == []
