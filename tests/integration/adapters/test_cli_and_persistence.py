"""The emulator commands (import, emulate) and an emulator's store across restarts."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from adapters.registry import REGISTRIES, build_adapter
from adapters.verra.export import read_transactions
from gateway import cli_registry
from registry_bridge.errors import RegistryRejected
from registry_bridge.model import HoldingStatus
from registry_bridge.port import IssueRequest, ListHoldingsRequest, LockRequest
from tests.integration.adapters.conftest import (
    FAST_RETRY,
    OWN_BLOCK,
    TestClock,
    later,
    start_harness,
)
from tests.integration.signals import signal_another_thread
from tests.loopback import ANY_PORT

SAMPLES = Path("/work/shared/data/registry-samples")
VERRA_EXPORT = SAMPLES / "verra" / "transactions.csv"
REPO = Path(__file__).resolve().parents[3]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_registry.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.handler(args)
    return code


def verra_totals(data: Path) -> Counter[HoldingStatus]:
    store = REGISTRIES["verra"].emulator().open_store(data)
    try:
        return Counter(
            {
                HoldingStatus.RETIRED if s == "retired" else HoldingStatus.ACTIVE: q
                for _, s, q in store.totals()
            }
        )
    finally:
        store.close()


def test_import_loads_every_row_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = read_transactions(VERRA_EXPORT)
    expected: Counter[HoldingStatus] = Counter()
    for row in rows:
        expected[row.status] += row.quantity

    assert run_cli("registry", "import", "verra", str(VERRA_EXPORT), "--data", str(tmp_path)) == 0
    assert "imported 140 of 140 rows into verra account IMPORTED" in capsys.readouterr().out
    assert verra_totals(tmp_path) == expected

    assert run_cli("registry", "import", "verra", str(VERRA_EXPORT), "--data", str(tmp_path)) == 0
    assert (
        "imported 0 of 140 rows into verra account IMPORTED (140 already present)"
        in capsys.readouterr().out
    )
    assert verra_totals(tmp_path) == expected


def test_a_malformed_row_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = VERRA_EXPORT.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    # Line 5 of the file (the fourth data row) gets a serial with a bad block range.
    lines[4] = lines[4].replace("-VCS-VCU-", "-VCS-VCX-", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(lines), encoding="utf-8")

    assert run_cli("registry", "import", "verra", str(bad), "--data", str(tmp_path / "d")) == 1
    err = capsys.readouterr().err
    assert ":5:" in err and "nothing imported" in err
    assert verra_totals(tmp_path / "d") == Counter()


def test_a_row_the_registry_refuses_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = VERRA_EXPORT.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    # An issuance row shifted by one serial, appended: a block overlapping it.
    first = next(t for t in read_transactions(VERRA_EXPORT) if t.status is HoldingStatus.ACTIVE)
    start, end = first.block.id.serial_start, first.block.id.serial_end
    original = lines[first.line - 1]
    shifted = original.replace(f"-{start}-{end}-", f"-{start + 1}-{end + 1}-", 1)
    assert shifted != original
    dup = tmp_path / "dup.csv"
    dup.write_text("".join([*lines, shifted]), encoding="utf-8")

    assert run_cli("registry", "import", "verra", str(dup), "--data", str(tmp_path / "d")) == 1
    err = capsys.readouterr().err
    assert f":{len(lines) + 1}: DUPLICATE_ISSUANCE" in err and "nothing imported" in err
    assert verra_totals(tmp_path / "d") == Counter()


@pytest.mark.parametrize("registry_id", tuple(REGISTRIES))
def test_the_store_survives_a_restart(registry_id: str, tmp_path: Path) -> None:
    clock = TestClock()
    first = start_harness(registry_id, data_dir=tmp_path, clock=clock)
    issue = IssueRequest("issue-1", "ACC-1", first.block(1001, 2000))
    issued = first.adapter.issue(issue)
    part = issued.block.with_range(1001, 1100).id
    locked = first.adapter.lock(LockRequest("lock-1", "ACC-1", part, later(first), "T1"))
    before = first.adapter.list_holdings(ListHoldingsRequest())
    first.running.stop()

    second = start_harness(registry_id, data_dir=tmp_path, clock=clock)
    try:
        assert second.adapter.list_holdings(ListHoldingsRequest()) == before
        # The operation log persisted too: a repeat answers the first result...
        assert second.adapter.issue(issue) == issued
        assert second.adapter.lock(LockRequest("lock-1", "ACC-1", part, later(first), "T1")) == (
            locked
        )
        # ...and the issued serials stay taken.
        with pytest.raises(RegistryRejected, match="DUPLICATE_ISSUANCE"):
            second.adapter.issue(IssueRequest("issue-2", "ACC-2", second.block(1500, 1600)))
    finally:
        second.running.stop()


_EMULATE = (
    "import sys, argparse\n"
    "from gateway import cli_registry\n"
    "p = argparse.ArgumentParser()\n"
    "cli_registry.register(p.add_subparsers(dest='c', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.handler(a))\n"
)


def test_emulate_serves_until_sigterm_and_keeps_its_data(tmp_path: Path) -> None:
    def start() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _EMULATE,
                "emulate",
                "national",
                "--listen",
                ANY_PORT,
                "--data",
                str(tmp_path),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        # Log lines may come first (structlog writes to stdout unless configured).
        line = process.stdout.readline()
        while line and not line.startswith("emulating national on "):
            line = process.stdout.readline()
        assert line, "the emulator exited before serving"
        return process, line.rsplit(" ", 1)[1].strip()

    process, target = start()
    try:
        adapter = build_adapter("national", target, FAST_RETRY)
        harness_block = OWN_BLOCK["national"](1, 500)
        adapter.issue(IssueRequest("cli-issue", "ACC-1", harness_block))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0

    process, target = start()
    try:
        adapter = build_adapter("national", target, FAST_RETRY)
        held = adapter.list_holdings(ListHoldingsRequest("ACC-1"))
        assert [h.block.quantity for h in held] == [500]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0

    # The kernel may give the signal to any of the emulator's threads: it stops all the same.
    process, target = start()
    try:
        build_adapter("national", target, FAST_RETRY).list_holdings(ListHoldingsRequest("ACC-1"))
    finally:
        signal_another_thread(process.pid, signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_gold_standard_retirements_retire_parts_of_imported_issuances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapters.gold_standard.export import read_issuances, read_retirements

    issued = sum(c.quantity for c in read_issuances(SAMPLES / "gold-standard" / "issuances.csv"))
    retirements = read_retirements(SAMPLES / "gold-standard" / "retirements.csv")
    for name in ("issuances", "retirements", "retirements"):
        path = SAMPLES / "gold-standard" / f"{name}.csv"
        assert (
            run_cli("registry", "import", "gold-standard", str(path), "--data", str(tmp_path)) == 0
        )
    assert "(70 already present)" in capsys.readouterr().out

    store = REGISTRIES["gold-standard"].emulator().open_store(tmp_path)
    try:
        totals = Counter({state.value: q for _, state, q in store.totals()})
    finally:
        store.close()
    ended: Counter[str] = Counter()
    for credit in retirements:
        ended[credit.status.value] += credit.quantity
    # Retirement rows inside an issued block retire that part; the others add their units.
    assert totals["retired"] == ended["retired"]
    assert totals["cancelled"] == ended["cancelled"]
    assert totals["active"] + totals["retired"] + totals["cancelled"] >= issued
