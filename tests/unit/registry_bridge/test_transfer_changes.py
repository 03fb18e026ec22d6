"""The in-process news of transfer changes: no wake-up lost to a race, nothing kept past use."""

from __future__ import annotations

import threading
import time

from registry_bridge.transfer_changes import TransferChanges

WAIT_S = 30.0


def test_a_change_announced_between_the_read_and_the_wait_is_not_missed() -> None:
    changes = TransferChanges()
    with changes.watch("t1") as watch:
        seen = watch.version
        # The "read" happened here; the change is committed and announced after it.
        changes.announce(["t1"])
        began = time.monotonic()
        assert watch.wait(seen, WAIT_S)
        assert time.monotonic() - began < 1.0


def test_a_watcher_racing_its_writer_never_loses_a_wake_up() -> None:
    """A writer commits (here: sets ``state``) and then announces, as the bridge does, the
    moment the watcher has read the last state: the announcement lands anywhere between
    the watcher's read and its wait, or during the wait.  A lost wake-up leaves the
    watcher waiting with a state it has not read already there: the writer, waiting for
    it to be read, times out."""
    changes = TransferChanges()
    rounds = 500
    state = [0]
    read = [0]
    was_read = threading.Condition()
    with changes.watch("t1") as watch:

        def follow() -> None:
            while True:
                seen = watch.version
                value = state[0]
                with was_read:
                    read[0] = value
                    was_read.notify()
                if value == rounds:
                    return
                # Now and then the writer gets in before the wait starts.
                time.sleep(0.0001 * (value % 3))
                watch.wait(seen, WAIT_S)

        follower = threading.Thread(target=follow)
        follower.start()
        for value in range(1, rounds + 1):
            with was_read:
                while read[0] != value - 1:
                    assert was_read.wait(5.0), f"state {value - 1} was never read: a lost wake-up"
            state[0] = value
            changes.announce(["t1"])
        follower.join(WAIT_S)
        assert not follower.is_alive()
    assert read[0] == rounds


def test_only_the_watchers_of_the_changed_transfer_are_woken() -> None:
    changes = TransferChanges()
    with changes.watch("t1") as one, changes.watch("t2") as other:
        seen_one, seen_other = one.version, other.version
        changes.announce(["t2", "not-watched"])
        assert other.wait(seen_other, WAIT_S)
        assert not one.wait(seen_one, 0.05)


def test_every_watcher_of_a_transfer_is_woken() -> None:
    changes = TransferChanges()
    woken: list[bool] = []
    with changes.watch("t1") as first, changes.watch("t1") as second:
        seen = first.version
        waiters = [
            threading.Thread(target=lambda w=w: woken.append(w.wait(seen, WAIT_S)))
            for w in (first, second)
        ]
        for waiter in waiters:
            waiter.start()
        changes.announce(["t1"])
        for waiter in waiters:
            waiter.join(WAIT_S)
    assert woken == [True, True]


def test_a_cancelled_watch_wakes_at_once_and_others_keep_waiting() -> None:
    changes = TransferChanges()
    with changes.watch("t1") as leaving, changes.watch("t1") as staying:
        seen = leaving.version
        answered: list[bool] = []
        waiter = threading.Thread(target=lambda: answered.append(leaving.wait(seen, WAIT_S)))
        waiter.start()
        began = time.monotonic()
        leaving.cancel()
        waiter.join(WAIT_S)
        assert answered == [True]
        assert time.monotonic() - began < 1.0
        assert leaving.cancelled
        assert leaving.wait(seen, WAIT_S)  # and every later wait returns at once too
        assert not staying.cancelled
        assert not staying.wait(seen, 0.05)  # woken by the cancel, it waited on


def test_a_wait_with_no_change_times_out() -> None:
    changes = TransferChanges()
    with changes.watch("t1") as watch:
        began = time.monotonic()
        assert not watch.wait(watch.version, 0.1)
        assert time.monotonic() - began >= 0.1


def test_nothing_is_kept_for_transfers_nobody_watches() -> None:
    changes = TransferChanges()
    changes.announce([f"t{i}" for i in range(1000)])
    assert changes.watched == 0
    with changes.watch("t1"), changes.watch("t1"), changes.watch("t2"):
        assert changes.watched == 2
        changes.announce([f"t{i}" for i in range(1000)])
        assert changes.watched == 2
    assert changes.watched == 0


def test_a_watch_ended_by_an_error_is_released() -> None:
    changes = TransferChanges()
    try:
        with changes.watch("t1"):
            raise RuntimeError("the stream broke")
    except RuntimeError:
        pass
    assert changes.watched == 0


def test_a_new_watcher_after_the_last_left_starts_afresh() -> None:
    changes = TransferChanges()
    with changes.watch("t1") as watch:
        changes.announce(["t1"])
        assert watch.version == 1
    with changes.watch("t1") as again:
        assert again.version == 0
        changes.announce(["t1"])
        assert again.wait(0, WAIT_S)
