"""A registry that was down a while is used again as soon as it is back.

gRPC's channel waits longer and longer between reconnection attempts to an address that
refuses it (up to two minutes by default).  A registry restarted after an outage would
then stay unreachable to the gateway long after it is back, while every retry of every
call fails at once.  The adapter's channel caps that wait, so a call made once the
registry answers again succeeds within the adapter's own retries.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from registry_bridge.errors import RegistryUnavailable
from tests.loopback import ANY_PORT

_POLICY = RetryPolicy(attempts=6)
"""Retries spanning about 3 s: the capped channel dials at least once a second, well
within them, under any load."""
_OUTAGE_SECONDS = 10.0
"""Long enough for gRPC's default backoff (1 s, times 1.6 per dial, jittered) to reach
about 6 s: an uncapped channel's next dial after the restart is then most often after
the call has given up (gRPC's dial times are random, so not always)."""


def test_a_registry_back_after_an_outage_answers_the_next_call(tmp_path: Path) -> None:
    spec = REGISTRIES["verra"].emulator()
    running = start_emulator(spec, listen=ANY_PORT, data_dir=tmp_path)
    port = build_adapter("verra", running.target, _POLICY, timeout_s=2.0)
    assert port.totals() == port.totals()  # connected and answering
    target = running.target
    running.stop(grace=None)
    outage_ends = time.monotonic() + _OUTAGE_SECONDS
    while time.monotonic() < outage_ends:
        with pytest.raises(RegistryUnavailable):
            port.totals()
    running = start_emulator(spec, listen=target, data_dir=tmp_path)
    try:
        port.totals()  # would fail for seconds more with gRPC's uncapped backoff
    finally:
        running.stop(grace=None)
