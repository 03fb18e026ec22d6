"""The ``carbonlink`` command as a shell runs it."""

from __future__ import annotations

import subprocess
import sys

from gateway.cli import EXIT_BROKEN_PIPE


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # As in `carbonlink trace ... | head -3`: the pipe closes before the output is written.
    command = [sys.executable, "-m", "gateway.cli", "rules", "validate"]
    command += ["compliance_rules/packs/national.yaml"] * 200
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
