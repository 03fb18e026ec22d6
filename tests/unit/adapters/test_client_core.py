"""What every registry client shares: translating native states to canonical ones."""

from __future__ import annotations

import importlib

import pytest

from adapters.client_core import canonical_status
from adapters.registry import REGISTRIES
from registry_bridge.errors import RegistryRejected
from registry_bridge.model import HoldingStatus


def test_a_known_native_state_translates() -> None:
    assert canonical_status("x", {7: HoldingStatus.EXPORTED}, 7) is HoldingStatus.EXPORTED


def test_an_unknown_native_state_is_refused_not_guessed() -> None:
    with pytest.raises(RegistryRejected, match=r"\(UNKNOWN_STATE\)"):
        canonical_status("x", {1: HoldingStatus.ACTIVE}, 0)


# Each registry's native enum of where units stand.
STATE_ENUM = {
    "verra": "VcuStatus",
    "gold-standard": "CreditStatus",
    "national": "BlockState",
    "hkmo": "PositionState",
    "shenzhen": "LotState",
    "guangdong": "BatchStatus",
    "bri": "ItmoStatus",
}


def test_every_registry_names_its_state_enum() -> None:
    assert set(STATE_ENUM) == set(REGISTRIES)


@pytest.mark.parametrize("registry_id", sorted(STATE_ENUM))
def test_every_client_translates_every_native_state(registry_id: str) -> None:
    """A client's table covers its registry's whole state enum but 0 ('unspecified')."""
    client = importlib.import_module(f"adapters.{REGISTRIES[registry_id].package}.client")
    table = getattr(client, "STATE_TO_CANONICAL", None) or client.STATUS_TO_CANONICAL
    enum = client.pb.DESCRIPTOR.enum_types_by_name[STATE_ENUM[registry_id]]
    assert set(table) == {value.number for value in enum.values} - {0}
    assert HoldingStatus.EXPORTED in table.values()
