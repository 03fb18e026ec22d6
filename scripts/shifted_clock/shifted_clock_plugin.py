"""pytest plugin of ``scripts/test-on``: shifts the modules imported since the last test."""

from __future__ import annotations

import pytest
import sitecustomize


def pytest_runtest_setup(item: pytest.Item) -> None:
    sitecustomize.shift_loaded()
