"""An emulator serves alone on its address, as the gateway does."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES
from tests.loopback import ANY_PORT


def test_a_second_emulator_on_a_served_address_is_refused(tmp_path: Path) -> None:
    # gRPC binds with SO_REUSEPORT unless told not to: a second `carbonlink emulate` on
    # the port of a running one started, and the two took turns answering the gateway's
    # calls, each from its own store.
    spec = REGISTRIES["verra"].emulator()
    first = start_emulator(spec, listen=ANY_PORT, data_dir=tmp_path / "first")
    try:
        with pytest.raises(OSError, match=f"could not listen on {first.target}"):
            second = start_emulator(spec, listen=first.target, data_dir=tmp_path / "second")
            second.stop(grace=None)
    finally:
        first.stop(grace=None)
