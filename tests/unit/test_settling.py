"""The settler of accepted transfers: groups, its bounded backlog, stopping."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from registry_bridge.settling import Settler

WAIT_S = 30.0


class _Driven:
    """A drive function that records each group and, while ``held``, waits to be let go."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self.changed = threading.Condition()
        self.fail_next = False

    def __call__(self, group: list[str]) -> None:
        with self.changed:
            self.groups.append(group)
            self.changed.notify_all()
        self.held.set()
        assert self.release.wait(WAIT_S)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a registry fell over")

    def wait_for(self, groups: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.groups) >= groups, WAIT_S)


def _settler(driven: Callable[[list[str]], None], **settings: int) -> Settler:
    return Settler(driven, **({"backlog": 100, "group_size": 10} | settings))


def test_transfers_accepted_while_a_group_settles_are_taken_together() -> None:
    driven = _Driven()
    settler = _settler(driven)
    assert settler.add(["t1"])
    assert driven.held.wait(WAIT_S)
    assert settler.add(["t2", "t3"])
    assert settler.add(["t4"])
    driven.release.set()
    driven.wait_for(2)
    assert driven.groups == [["t1"], ["t2", "t3", "t4"]]
    settler.stop(WAIT_S)


def test_a_group_takes_at_most_its_size_in_order() -> None:
    driven = _Driven()
    settler = _settler(driven, group_size=2)
    settler.add(["t1"])
    assert driven.held.wait(WAIT_S)
    settler.add(["t2", "t3", "t4", "t5", "t6"])
    driven.release.set()
    driven.wait_for(4)
    assert driven.groups == [["t1"], ["t2", "t3"], ["t4", "t5"], ["t6"]]
    settler.stop(WAIT_S)


def test_room_is_made_only_once_the_backlog_settles() -> None:
    driven = _Driven()
    settler = _settler(driven, backlog=3)
    settler.add(["t1", "t2"])
    assert driven.held.wait(WAIT_S)
    settler.make_room(1)  # 2 + 1 fit
    made = threading.Event()

    def make_room_for_two() -> None:
        settler.make_room(2)
        made.set()

    waiting = threading.Thread(target=make_room_for_two)
    waiting.start()
    assert not made.wait(0.3)  # 2 + 2 do not: the call is still waiting
    assert settler.pending == 2
    driven.release.set()
    assert made.wait(WAIT_S)
    waiting.join(WAIT_S)
    assert settler.pending == 0
    settler.stop(WAIT_S)


def test_an_empty_backlog_takes_a_round_larger_than_itself() -> None:
    settler = _settler(_Driven(), backlog=2)
    settler.make_room(5)  # returns: a round larger than the backlog is never refused
    settler.stop(WAIT_S)


def test_a_stopped_settler_hands_back_what_it_never_took() -> None:
    driven = _Driven()
    settler = _settler(driven)
    settler.add(["t1"])
    assert driven.held.wait(WAIT_S)
    settler.add(["t2", "t3"])
    left = settler.stop(0.1)  # t1's group is still settling: not waited for past the time
    assert left == ["t2", "t3"]
    assert not settler.add(["t4"])
    settler.make_room(1000)  # a stopping settler makes nobody wait
    driven.release.set()
    assert driven.groups == [["t1"]]


def test_a_group_that_fails_leaves_the_settler_settling() -> None:
    driven = _Driven()
    driven.fail_next = True
    settler = _settler(driven)
    settler.add(["t1"])
    driven.release.set()
    driven.wait_for(1)
    settler.add(["t2"])
    driven.wait_for(2)
    assert driven.groups == [["t1"], ["t2"]]
    settler.stop(WAIT_S)


@pytest.mark.parametrize("setting", ["backlog", "group_size"])
def test_a_setting_below_one_is_refused(setting: str) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _settler(_Driven(), **{setting: 0})
