"""Reconciliation meets a registry that fails to answer: ``Reconcile`` and ``carbonlink
reconcile`` against a live gateway whose Verra emulator refuses chosen reads.

The gateway reads every registry through its adapters' one retry policy
(``adapters.retry``): a read that fails transiently fewer times than the policy's attempts
is retried and the reconciliation answers as if nothing had failed; a read refused for
good, or failing on every attempt, fails the reconciliation naming the registry and why,
and no report claims that registry matches or differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from structlog.testing import capture_logs

from adapters._pb.carbonlink.v1 import gateway_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from gateway.cli import main
from tests.integration.gateway.conftest import LiveGateway, linked_registries, running_gateway

ATTEMPTS = 3
"""The gateway's registry retry attempts in these tests (the first call included)."""

# Verra's native reads of a reconciliation: its totals and its holdings listing.  The
# gateway's start-up import lists the holdings once first, hence ``after``.
TOTALS = "GetRegistryTotals"
LISTING = "ListAccountHoldings"
AFTER = {TOTALS: 0, LISTING: 1}


@contextmanager
def _gateway(database_url: str, *refusals: ScriptedRefusal) -> Iterator[LiveGateway]:
    """A gateway on the linked registries, Verra refusing ``refusals``, the HK venue
    holding Verra units; no periodic import reads a registry during the test."""
    with linked_registries({"verra": FaultConfig(refusals=refusals)}) as registries:
        registries.seed_venue()
        with running_gateway(
            database_url,
            registries,
            registry_retry_attempts=ATTEMPTS,
            registry_import_interval_seconds=3600.0,
        ) as gateway:
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


def test_a_read_failing_on_every_attempt_fails_the_reconciliation_naming_the_registry(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exactly the policy's attempts fail: one more would have been answered.
    refusal = ScriptedRefusal(LISTING, calls=ATTEMPTS, after=AFTER[LISTING])
    with _gateway(database_url, refusal) as gateway:
        code, out, err = _reconcile(capsys, gateway)
        assert code == 1
        assert out == ""  # no report: nothing claimed about Verra, either way
        assert err.startswith("carbonlink reconcile: UNAVAILABLE: registry verra unavailable: ")
        assert "injected fault: scripted UNAVAILABLE" in err
        # Verra answers again: the next reconciliation reads it and finds it consistent.
        code, out, _ = _reconcile(capsys, gateway)
        assert (code, out) == (0, "consistent=true phase=completed\n")


def test_a_registry_down_fails_a_reconciliation_of_it_and_not_of_the_others(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = ScriptedRefusal(LISTING, calls=1_000, after=AFTER[LISTING])
    with _gateway(database_url, refusal) as gateway:
        with pytest.raises(grpc.RpcError) as failed:
            gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "registry verra unavailable" in (failed.value.details() or "")
        # The registries that answer are reconciled when named.
        code, out, _ = _reconcile(capsys, gateway, "--registry", "hkmo", "--registry", "shenzhen")
        assert (code, out) == (0, "consistent=true phase=completed\n")


@pytest.mark.parametrize("status", ["INVALID_ARGUMENT", "NOT_FOUND"])
def test_a_read_refused_for_good_is_not_retried(
    database_url: str, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused once only: a retry would have been answered, so failing shows none was made.
    with _gateway(database_url, ScriptedRefusal(TOTALS, status)) as gateway:
        code, out, err = _reconcile(capsys, gateway)
        assert (code, out) == (1, "")
        assert err.startswith(
            f"carbonlink reconcile: FAILED_PRECONDITION: registry verra rejected the "
            f"operation ({status}): injected fault: scripted {status}"
        )
