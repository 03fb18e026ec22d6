"""Fixtures of the adapter tests: the in-repo copies of the registry sample exports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REGISTRY_ASSETS = Path(__file__).resolve().parents[2] / "assets" / "registries"
"""``tests/assets/registries``: one directory per registry id."""


def asset_path(registry: str, name: str) -> Path:
    """The asset file ``tests/assets/registries/<registry>/<name>``, which must exist."""
    path = REGISTRY_ASSETS / registry / name
    if not path.is_file():
        raise FileNotFoundError(f"missing test asset {path}")
    return path


@pytest.fixture
def registry_asset() -> Callable[[str, str], Path]:
    """Resolve ``registry_asset("verra", "transactions.csv")`` to an asset file."""
    return asset_path
