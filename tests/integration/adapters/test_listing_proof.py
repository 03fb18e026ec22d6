"""A project's registry of origin proves who holds, or held, its units (listing_proof).

Asked of every registry that issues units, over its real adapter and emulator: the
holder's account proves it while the units are active, bridged out or retired; another
account, another project, or another program of the same registry does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from registry_bridge.bridge import ORIGIN_REGISTRY
from registry_bridge.listing_proof import holds_units
from registry_bridge.model import Program
from registry_bridge.port import (
    FinalizeDisposition,
    FinalizeRequest,
    IssueRequest,
    LockRequest,
    RetireRequest,
)
from tests.integration.adapters.conftest import Harness, later, start_harness

ORIGINS = sorted(set(ORIGIN_REGISTRY.values()))


@pytest.fixture(params=ORIGINS)
def origin(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """An emulator of each registry of origin, with its adapter."""
    started = start_harness(str(request.param))
    yield started
    started.running.stop(grace=None)


def test_only_the_account_holding_a_projects_units_proves_it(origin: Harness) -> None:
    block = origin.block(1001, 2000)
    adapter = origin.adapter
    another_project = block.project_id + "7"
    adapter.issue(IssueRequest(origin.op(), "proponent", block))
    # Units of another project in another account, and of the same project id under
    # the registry's other program where it has one.
    adapter.issue(
        IssueRequest(
            origin.op(),
            "neighbour",
            dataclasses.replace(origin.block(3001, 3100), project_id=another_project),
        )
    )
    twins = [
        p for p, r in ORIGIN_REGISTRY.items() if r == origin.registry_id and p is not block.program
    ]
    for i, program in enumerate(twins):
        twin = dataclasses.replace(
            block,
            id=dataclasses.replace(
                block.id, program=program, serial_start=5001 + i * 100, serial_end=5050 + i * 100
            ),
        )
        adapter.issue(IssueRequest(origin.op(), "twin", twin))

    def proves(accounts: list[str], program: Program = block.program) -> bool:
        return holds_units(adapter, program, block.project_id, accounts)

    assert proves(["proponent"])
    assert proves(["nobody", "neighbour", "proponent"])
    assert not proves(["neighbour", "twin", "nobody"])
    assert not proves([])
    assert not proves([""])  # not the registry's whole listing (ListHoldingsRequest(""))
    assert not holds_units(adapter, block.program, another_project, ["proponent"])

    # Held: bridged out (immobilized at the origin), or retired, the units still prove it.
    bridged = dataclasses.replace(block.id, serial_end=1400)
    adapter.lock(LockRequest(origin.op(), "proponent", bridged, later(origin), "T1"))
    adapter.finalize(
        FinalizeRequest(
            origin.op(), "proponent", bridged, FinalizeDisposition.IMMOBILIZE, "T1", "national"
        )
    )
    retired = dataclasses.replace(block.id, serial_start=1401)
    adapter.retire(RetireRequest(origin.op(), "proponent", retired, "Acme", ""))
    assert proves(["proponent"])
