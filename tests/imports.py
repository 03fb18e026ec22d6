"""What a fresh interpreter has imported after running some code.

An offline auditor's or a script's command pays at start-up for every module its own
modules import, so some modules must stay clear of heavy ones (SQLAlchemy, the server
stack).  Tests assert on the modules loaded, never on timings, which flake on a busy
machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SQL_STACK = ("sqlalchemy", "alembic", "psycopg", "registry_bridge.db", "registry_bridge.schema")
"""The database layer: the ORM, migrations, the driver and the ledger's tables."""


@dataclass(frozen=True)
class Probe:
    """What a new interpreter printed, and had imported, once some code had run."""

    output: str
    """Its standard output, but for the last line (the modules)."""
    modules: frozenset[str]


def probe(code: str) -> Probe:
    """Run ``code`` in a new interpreter (at the repository's root) and list its modules.

    Raises:
        subprocess.CalledProcessError: ``code`` failed (its stderr is in the error).
    """
    script = f"{code}\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    *output, modules = done.stdout.splitlines()
    return Probe("\n".join(output), frozenset(json.loads(modules)))


def modules_loaded_by(code: str) -> frozenset[str]:
    """The names in ``sys.modules`` of a new interpreter once ``code`` has run."""
    return probe(code).modules


def loaded(modules: frozenset[str], packages: tuple[str, ...]) -> list[str]:
    """The members of ``modules`` that are one of ``packages`` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))
