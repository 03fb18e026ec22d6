"""scripts/shifted_clock: the clock ``scripts/test-on`` runs the suite on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

_SHIM = Path(__file__).resolve().parents[2] / "scripts" / "shifted_clock"

_PROBE = """
import json, os, time
from datetime import UTC, datetime as true_datetime
from adapters.emulator_core import store
from gateway import cli_rules, server
print(json.dumps({
    "gateway": server._utc_now().isoformat(),
    "emulator": store.utc_now().isoformat(),
    "today": cli_rules.date.today().isoformat(),
    "true_is_instance": isinstance(true_datetime.now(UTC), server.datetime),
    "time": time.time(),
    "shift_seconds": os.environ.get("SHIFTED_CLOCK_SECONDS"),
}))
"""


def _true_now() -> datetime:
    # time.time is never shifted: this test passes under scripts/test-on too.
    return datetime.fromtimestamp(time.time(), UTC)


def _probe(shifted_now: str | None, shift_seconds: str | None = None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTED_CLOCK_")}
    env["PYTHONPATH"] = str(_SHIM)
    if shifted_now is not None:
        env["SHIFTED_CLOCK_NOW"] = shifted_now
    if shift_seconds is not None:
        env["SHIFTED_CLOCK_SECONDS"] = shift_seconds
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    answer: dict[str, object] = json.loads(out.stdout)
    return answer


def test_a_process_reads_the_shifted_date_and_true_time_stays() -> None:
    began = _true_now()
    seen = _probe("2031-02-03T04:05:06")

    for clock in ("gateway", "emulator"):
        moment = datetime.fromisoformat(str(seen[clock]))
        assert (
            timedelta(0)
            <= moment - datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
            < timedelta(minutes=1)
        ), clock
    assert seen["today"] == "2031-02-03"
    # A true datetime from another module still passes the shifted module's isinstance.
    assert seen["true_is_instance"] is True
    # time.time is not shifted: timeouts and token lifetimes run as they would.
    assert abs(float(str(seen["time"])) - began.timestamp()) < 60


def test_a_child_process_keeps_its_parents_shift() -> None:
    """The first process fixes the shift for its children: were each to start its clock
    at the named moment, a gateway started a minute into the run would run a minute
    behind the tests that started it."""
    parent = _probe("2031-02-03T04:05:06")
    assert parent["shift_seconds"] is not None

    child = _probe("2040-01-01T00:00:00", shift_seconds=str(parent["shift_seconds"]))

    moment = datetime.fromisoformat(str(child["gateway"]))
    assert moment.date().isoformat() == "2031-02-03"


def test_without_a_date_nothing_is_shifted() -> None:
    began = _true_now()
    seen = _probe(None)

    assert abs(datetime.fromisoformat(str(seen["gateway"])) - began) < timedelta(minutes=1)
    # date.today is local: the day here, at the start of the probe or a minute on.
    here = began.astimezone()
    assert seen["today"] in {
        here.date().isoformat(),
        (here + timedelta(minutes=1)).date().isoformat(),
    }
