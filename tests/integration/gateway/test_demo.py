"""The README's main command, `carbonlink demo`, runs every journey and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_journey(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== exchange operator" in result.stdout
    assert "== foreign credit issuer" in result.stdout
    # The auditor reads the exchange journey's retirement back, in its stored state.
    assert re.search(
        r"GetUse uses/\w+: retirement of \d+ units at shenzhen:sz-buyer .*, completed",
        result.stdout,
    )
    assert "== operator: the gateway's metrics" in result.stdout
    assert "nothing unfinished" in result.stdout
    assert "demo finished" in result.stdout
