"""Dependencies point one way: gateway -> adapters -> registry_bridge -> compliance_rules.

Generated protobuf types stop at the gRPC edge: only the gateway and the adapters (which
speak gRPC to clients and registries) may import ``adapters._pb``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["gateway", "adapters", "registry_bridge", "compliance_rules"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "_pb" not in p.relative_to(ROOT).parts]


@pytest.mark.parametrize("package", LAYERS)
def test_dependencies_point_one_way(package: str) -> None:
    allowed_below = LAYERS[LAYERS.index(package) :]
    offenders = []
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in LAYERS and top not in allowed_below:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


@pytest.mark.parametrize("package", ["registry_bridge", "compliance_rules"])
def test_generated_types_stay_at_the_edge(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in _imports(path)
        if "_pb" in name.split(".")
    ]
    assert offenders == []
