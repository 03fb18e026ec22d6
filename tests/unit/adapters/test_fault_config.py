"""An emulator's fault settings: scripted refusals are read from YAML and checked."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from adapters.emulator_core import FaultConfig, ScriptedRefusal


def test_refusals_are_read_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text(
        "seed: 3\n"
        "refusals:\n"
        "  - {method: ListAccountHoldings, calls: 2, after: 1}\n"
        "  - {method: GetRegistryTotals, code: DEADLINE_EXCEEDED}\n",
        encoding="utf-8",
    )
    config = FaultConfig.from_yaml(path)
    assert config.active
    assert config.refusals == (
        ScriptedRefusal("ListAccountHoldings", "UNAVAILABLE", calls=2, after=1),
        ScriptedRefusal("GetRegistryTotals", "DEADLINE_EXCEEDED"),
    )
    assert config.refusals[1].status is grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_refusal_counts_the_calls_it_refuses_after_those_it_lets_through() -> None:
    refusal = ScriptedRefusal("ListAccountHoldings", calls=2, after=1)
    assert [refusal.refuses(n) for n in range(1, 6)] == [False, True, True, False, False]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"refusals": [{"method": "X", "times": 2}]}, "unknown refusal settings: times"),
        ({"refusals": [{"method": "X", "code": "OK"}]}, "must name a gRPC error status"),
        ({"refusals": [{"method": "X", "code": "UNAVAILABLES"}]}, "'UNAVAILABLES'"),
        ({"refusals": [{"method": "/v.Verra/X"}]}, "without its service"),
        ({"refusals": [{"method": "X", "calls": 0}]}, "calls must be >= 1"),
        ({"refusals": [{"method": "X", "after": -1}]}, "after must be >= 0"),
        ({"refusals": [{"code": "UNAVAILABLE"}]}, "bad refusal settings"),
        ({"refusals": {"method": "X"}}, "refusals must be a list"),
        ({"refusals": ["X"]}, "a refusal must be a mapping"),
    ],
)
def test_a_bad_refusal_is_refused_naming_what_is_wrong(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FaultConfig.from_mapping(settings)
