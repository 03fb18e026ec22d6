"""Reconciliation meets a registry that fails to answer: ``Reconcile`` and ``carbonlink
reconcile`` against a live gateway whose Verra emulator refuses chosen reads, or is down.

The gateway reads every registry through its adapters' one retry policy
(``adapters.retry``): a read that fails transiently fewer times than the policy's attempts
is retried and the reconciliation answers as if nothing had failed; a read refused for
good, or failing on every attempt, makes the report name the registry unreadable and why,
claim nothing of whether it matches, and reconcile the other registries all the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import pytest
from google.rpc import code_pb2
from structlog.testing import capture_logs

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from gateway.cli import main
from gateway.config import GatewayConfig
from registry_bridge.model import BlockId, Program, UnitBlock
from tests.integration.gateway.conftest import (
    COUNTED_CALLS_TIMEOUT_S,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.logs import logged_events

ATTEMPTS = 3
"""The gateway's registry retry attempts in these tests (the first call included)."""

# Verra's native reads of a reconciliation: its totals and its holdings listing.  The
# gateway's start-up import lists the holdings once first, hence ``after``.
TOTALS = "GetRegistryTotals"
LISTING = "ListAccountHoldings"
AFTER = {TOTALS: 0, LISTING: 1}


@contextmanager
def _registries(*refusals: ScriptedRefusal) -> Iterator[LinkedRegistries]:
    """The linked registries, Verra refusing ``refusals``, the HK venue holding Verra units."""
    with linked_registries({"verra": FaultConfig(refusals=refusals)}) as registries:
        registries.seed_venue()
        yield registries


@contextmanager
def _serving(database_url: str, registries: LinkedRegistries) -> Iterator[LiveGateway]:
    """A gateway on ``registries``; no periodic import reads a registry during the test,
    and no attempt of the gateway ends before the registry's answer to it."""
    with running_gateway(
        database_url,
        registries,
        registry_retry_attempts=ATTEMPTS,
        registry_timeout_seconds=COUNTED_CALLS_TIMEOUT_S,
        # As many attempts, with waits of milliseconds: which reads are retried is under
        # test, not how long the waits between them are.
        registry_retry_initial_wait_seconds=0.01,
        registry_retry_max_wait_seconds=0.02,
        registry_import_interval_seconds=3600.0,
    ) as gateway:
        yield gateway


@contextmanager
def _gateway(database_url: str, *refusals: ScriptedRefusal) -> Iterator[LiveGateway]:
    """A gateway on the linked registries, Verra refusing ``refusals``."""
    with _registries(*refusals) as registries, _serving(database_url, registries) as gateway:
        yield gateway


def _reconcile(
    capsys: pytest.CaptureFixture[str], gateway: LiveGateway, *options: str
) -> tuple[int, str, str]:
    """Run ``carbonlink reconcile`` with ``options``: its exit code, stdout and stderr
    (the in-process gateway's and emulators' log lines kept out of them)."""
    capsys.readouterr()
    with capture_logs():
        code = main(["reconcile", "--target", gateway.target, "--insecure", *options])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("method", "status"),
    [(TOTALS, "UNAVAILABLE"), (LISTING, "DEADLINE_EXCEEDED"), (LISTING, "UNAVAILABLE")],
)
def test_a_read_failing_transiently_is_retried_and_the_registry_reconciles(
    database_url: str, method: str, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = ScriptedRefusal(method, status, calls=ATTEMPTS - 1, after=AFTER[method])
    with _gateway(database_url, refusal) as gateway:
        code, out, _ = _reconcile(capsys, gateway, "--json")
        assert code == 0
        report = json.loads(out)
        assert report["consistent"] is True and report["phase"] == "completed"
        assert report["discrepancies"] == []


def test_a_read_failing_on_every_attempt_names_the_registry_unreadable(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exactly the policy's attempts fail: one more would have been answered.
    refusal = ScriptedRefusal(LISTING, calls=ATTEMPTS, after=AFTER[LISTING])
    with _gateway(database_url, refusal) as gateway:
        code, out, _ = _reconcile(capsys, gateway)
        assert code == 1
        # Nothing claimed about Verra, either way; Hong Kong and Shenzhen agree.
        unreadable = (
            "  [unreadable] verra: UNAVAILABLE: registry verra unavailable: UNAVAILABLE: "
            "injected fault: scripted UNAVAILABLE\n"
        )
        assert out == "reconciliation 1: consistent=false phase=completed\n" + unreadable
        # Verra answers again: the next reconciliation reads it and finds it consistent.
        code, out, _ = _reconcile(capsys, gateway)
        assert (code, out) == (0, "reconciliation 2: consistent=true phase=completed\n")
        # Both are recorded, the first with what it could not read, as it was said.
        capsys.readouterr()
        target = ["--target", gateway.target, "--insecure"]
        with capture_logs():
            code = main(["reconciliations", *target])
        out, _ = capsys.readouterr()
        assert code == 0
        second, first, *rest = out.splitlines(keepends=True)
        assert second.startswith("2 ") and second.endswith(": consistent=true\n")
        assert first.startswith("1 ") and " request by " in first
        assert first.endswith(": consistent=false\n") and rest == [unreadable]
        # A page at a time: the first ends with the token that reads on.
        with capture_logs():
            code = main(["reconciliations", *target, "--limit", "1"])
        out, _ = capsys.readouterr()
        newest, more = out.splitlines()
        assert code == 0 and newest.startswith("2 ")
        token = more.removeprefix("more: ask again, same filters, with --page-token ")
        with capture_logs():
            code = main(["reconciliations", *target, "--limit", "1", "--page-token", token])
        out, _ = capsys.readouterr()
        assert code == 0 and out.startswith("1 ") and "more:" not in out
        # None scheduled: an empty listing says so rather than printing nothing.
        with capture_logs():
            code = main(["reconciliations", *target, "--trigger", "schedule"])
        assert (code, capsys.readouterr().out) == (0, "no reconciliations triggered schedule\n")
        with pytest.raises(SystemExit):
            main(["reconciliations", *target, "--limit", "0"])


def _phantom_at_shenzhen(registries: LinkedRegistries) -> None:
    """Shenzhen issues units behind the gateway's back: a difference to be found there."""
    registries.emulators["shenzhen"].store.issue(
        "phantom",
        "sz-thief",
        UnitBlock(
            BlockId(Program.SZA, "", 900_000_000, 900_000_099),
            project_id="",
            country="CN",
            vintage_start=date(2024, 1, 1),
            vintage_end=date(2024, 12, 31),
        ),
    )


@pytest.mark.parametrize("stopped", [False, True], ids=["refusing", "stopped"])
def test_a_registry_down_is_named_unreadable_and_the_others_are_reconciled(
    database_url: str, stopped: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    # Verra refuses every listing after the start-up import's, or does not answer at all.
    refusals = () if stopped else (ScriptedRefusal(LISTING, calls=1_000, after=AFTER[LISTING]),)
    with _registries(*refusals) as registries, _serving(database_url, registries) as gateway:
        _phantom_at_shenzhen(registries)
        if stopped:
            registries.emulators["verra"].server.stop(None).wait()
        with logged_events() as logs:
            report = gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
        assert [e["registry"] for e in logs if e["event"] == "reconcile_registry_unreadable"] == [
            "verra"
        ]
        assert not report.consistent
        assert [(u.registry, u.error.code) for u in report.unreadable_registries] == [
            ("verra", code_pb2.UNAVAILABLE)
        ]
        assert report.unreadable_registries[0].error.message.startswith(
            "registry verra unavailable: "
        )
        # Shenzhen is reconciled: its phantom units are named, and nothing of Verra is.
        assert {d.registry for d in report.discrepancies} == {"shenzhen"}
        assert any("sz-thief" in d.detail for d in report.discrepancies)
        assert report.phase == "trail"

        code, out, _ = _reconcile(capsys, gateway, "--json")
        assert code == 1
        printed = json.loads(out)
        assert printed["consistent"] is False
        assert [(u["registry"], u["error"]["code"]) for u in printed["unreadableRegistries"]] == [
            ("verra", code_pb2.UNAVAILABLE)
        ]
        # Named alone, the registries that answer reconcile as ever.
        code, out, _ = _reconcile(capsys, gateway, "--registry", "hkmo")
        assert (code, out) == (0, "reconciliation 3: consistent=true phase=completed\n")


def _stall_refusals(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every scripted refusal answer ``seconds`` late, as a stall of the whole test
    process (a loaded machine, a full collection of a large heap) would."""
    refuses = ScriptedRefusal.refuses

    def late(refusal: ScriptedRefusal, number: int) -> bool:
        refused = refuses(refusal, number)
        if refused:
            time.sleep(seconds)
        return refused

    monkeypatch.setattr(ScriptedRefusal, "refuses", late)


STALL_SECONDS = GatewayConfig().registry_timeout_seconds + 0.5
"""Longer than a gateway's default registry deadline."""


@pytest.mark.parametrize(
    ("status", "stall_seconds"),
    [("INVALID_ARGUMENT", 0.0), ("NOT_FOUND", 0.0), ("INVALID_ARGUMENT", STALL_SECONDS)],
    ids=["INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT-stalled"],
)
def test_a_read_refused_for_good_is_not_retried(
    database_url: str,
    status: str,
    stall_seconds: float,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Refused once only: a retry would have been answered, so Verra unreadable shows none
    # was made.  Stalled, the refusal comes after the default registry deadline: the
    # gateway's attempt must still be there to hear it.
    _stall_refusals(monkeypatch, stall_seconds)
    with _gateway(database_url, ScriptedRefusal(TOTALS, status)) as gateway:
        code, out, _ = _reconcile(capsys, gateway)
        assert code == 1
        assert out == (
            "reconciliation 1: consistent=false phase=completed\n"
            f"  [unreadable] verra: FAILED_PRECONDITION: registry verra rejected the "
            f"operation ({status}): injected fault: scripted {status}\n"
        )
