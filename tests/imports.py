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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SQL_STACK = ("sqlalchemy", "alembic", "psycopg", "registry_bridge.db", "registry_bridge.schema")
"""The database layer: the ORM, migrations, the driver and the ledger's tables."""


def modules_loaded_by(code: str) -> frozenset[str]:
    """The names in ``sys.modules`` of a new interpreter once ``code`` has run.

    Raises:
        subprocess.CalledProcessError: ``code`` failed (its stderr is in the error).
    """
    probe = f"{code}\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return frozenset(json.loads(done.stdout.splitlines()[-1]))


def loaded(modules: frozenset[str], packages: tuple[str, ...]) -> list[str]:
    """The members of ``modules`` that are one of ``packages`` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))
