"""The gateway learns what the registries hold: at start-up, in every status a unit can
have been left in, and again at every import interval."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date
from typing import Any

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.emulator_core import FaultConfig, ScriptedRefusal
from adapters.serials import parse_serial
from gateway.convert import block_id_to_pb
from registry_bridge import db, ledger
from registry_bridge.model import BlockId, HoldingStatus, Program, UnitBlock
from registry_bridge.port import IssueRequest, RetireRequest
from tests.integration.gateway.conftest import (
    COUNTED_CALLS_TIMEOUT_S,
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.logs import logged_events

ISSUED = parse_serial("verra", VERRA_SERIAL)
START = ISSUED.id.serial_start


def _gateway(
    database_url: str, registries: LinkedRegistries, import_every: float = 60.0, **settings: Any
) -> AbstractContextManager[LiveGateway]:
    return running_gateway(
        database_url, registries, registry_import_interval_seconds=import_every, **settings
    )


def _statuses(gateway: LiveGateway, block: BlockId) -> list[tuple[int, int, HoldingStatus]]:
    with db.read_only(db.session_factory(gateway.server.engine)) as session:
        return sorted(
            (h.block.id.serial_start, h.block.id.serial_end, h.status)
            for h in ledger.origin_rows(session, block)
        )


def _retire(gateway: LiveGateway, block: BlockId) -> model_pb2.UnitUse:
    selector = model_pb2.UnitSelector(block=block_id_to_pb(block))
    reply: model_pb2.UnitUse = gateway.stub.Retire(
        gateway_pb2.RetireRequest(
            request_id=uuid.uuid4().hex,
            account=model_pb2.AccountRef(registry="verra", account="issuer"),
            units=[selector],
            beneficiary="Again Co.",
        ),
        timeout=30,
    )
    return reply


def test_units_retired_before_the_gateway_started_are_known_retired_and_reconcile(
    database_url: str, registries: LinkedRegistries
) -> None:
    verra = registries.ports["verra"]
    verra.issue(IssueRequest("issue-1", "issuer", ISSUED))
    retired = BlockId(ISSUED.id.program, "", START, START + 99)
    verra.retire(RetireRequest("retire-1", "issuer", retired, "Early Co.", ""))

    with _gateway(database_url, registries) as gateway:
        assert _statuses(gateway, ISSUED.id) == [
            (START, START + 99, HoldingStatus.RETIRED),
            (START + 100, ISSUED.id.serial_end, HoldingStatus.ACTIVE),
        ]
        report = gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
        assert report.consistent, [d.detail for d in report.discrepancies]
        # Retired once at the registry, the units cannot be retired again through it.
        with pytest.raises(grpc.RpcError) as refused:
            _retire(gateway, BlockId(ISSUED.id.program, "", START, START + 9))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "retired" in (refused.value.details() or "")


def test_units_issued_after_start_up_are_learned_at_the_next_look(
    database_url: str, registries: LinkedRegistries
) -> None:
    with _gateway(database_url, registries, import_every=0.2) as gateway:
        assert _statuses(gateway, ISSUED.id) == []
        registries.ports["verra"].issue(IssueRequest("issue-late", "issuer", ISSUED))
        deadline = time.monotonic() + 30
        while not _statuses(gateway, ISSUED.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _statuses(gateway, ISSUED.id) == [
            (START, ISSUED.id.serial_end, HoldingStatus.ACTIVE)
        ]
        used = _retire(gateway, BlockId(ISSUED.id.program, "", START, START + 9))
        assert used.beneficiary == "Again Co." and used.kind == "retirement"


def test_a_later_look_reads_the_ledger_only_for_what_changed(
    database_url: str, registries: LinkedRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    verra = registries.ports["verra"]
    verra.issue(IssueRequest("issue-1", "issuer", ISSUED))
    with _gateway(database_url, registries) as gateway:
        looked: list[BlockId] = []
        origin_rows = ledger.origin_rows

        def counted(session: object, block: BlockId) -> object:
            looked.append(block)
            return origin_rows(session, block)  # type: ignore[arg-type]

        monkeypatch.setattr(ledger, "origin_rows", counted)
        assert gateway.server.import_registries()["verra"] == 0
        assert looked == []  # the start-up look saw every holding there is
        later = BlockId(ISSUED.id.program, "", ISSUED.id.serial_end + 1, ISSUED.id.serial_end + 5)
        verra.issue(IssueRequest("issue-2", "issuer", dataclasses.replace(ISSUED, id=later)))
        assert gateway.server.import_registries()["verra"] == 1
        assert later in looked and ISSUED.id not in looked


ATTEMPTS = 3
"""The gateway's registry retry attempts in the fault tests (the first call included)."""

SZA = UnitBlock(
    BlockId(Program.SZA, "", 700_000_000, 700_000_099),
    project_id="",
    country="CN",
    vintage_start=date(2024, 1, 1),
    vintage_end=date(2024, 12, 31),
)


@contextmanager
def _refusing_listings(
    database_url: str, calls: int, after: int, issued_first: bool
) -> Iterator[tuple[LinkedRegistries, LiveGateway]]:
    """A gateway whose Verra refuses its holdings listings ``after + 1`` to
    ``after + calls``; ``issued_first``: Verra issued ISSUED before the gateway started.
    No periodic look runs during the test: the test looks itself."""
    refusal = ScriptedRefusal("ListAccountHoldings", calls=calls, after=after)
    with linked_registries({"verra": FaultConfig(refusals=(refusal,))}) as registries:
        if issued_first:
            registries.ports["verra"].issue(IssueRequest("issue-1", "issuer", ISSUED))
        with _gateway(
            database_url,
            registries,
            import_every=3600.0,
            registry_retry_attempts=ATTEMPTS,
            registry_timeout_seconds=COUNTED_CALLS_TIMEOUT_S,
            # As many attempts, milliseconds apart: the waits are not under test.
            registry_retry_initial_wait_seconds=0.01,
            registry_retry_max_wait_seconds=0.02,
        ) as gateway:
            yield registries, gateway


def test_a_listing_failing_transiently_at_start_up_is_retried(database_url: str) -> None:
    with _refusing_listings(database_url, ATTEMPTS - 1, after=0, issued_first=True) as (_, gateway):
        assert _statuses(gateway, ISSUED.id) == [
            (START, ISSUED.id.serial_end, HoldingStatus.ACTIVE)
        ]


def test_a_registry_failing_every_attempt_is_skipped_named_and_imported_at_the_next_look(
    database_url: str,
) -> None:
    # The start-up look lists Verra's holdings (call 1); the next look fails every attempt.
    with _refusing_listings(database_url, ATTEMPTS, after=1, issued_first=False) as (
        registries,
        gateway,
    ):
        registries.ports["verra"].issue(IssueRequest("issue-1", "issuer", ISSUED))
        registries.ports["shenzhen"].issue(IssueRequest("issue-sza", "sz-entity", SZA))
        with logged_events() as logs:
            imported = gateway.server.import_registries()
        # The registries that answered are imported; Verra is left for the next look.
        assert imported == {"hkmo": 0, "shenzhen": 1}
        skipped = [e for e in logs if e["event"] == "registry_import_skipped"]
        assert [e["registry"] for e in skipped] == ["verra"]
        assert skipped[0]["error"].startswith(
            "registry verra unavailable: UNAVAILABLE: injected fault: scripted UNAVAILABLE"
        )
        assert _statuses(gateway, ISSUED.id) == []
        assert gateway.server.import_registries()["verra"] == 1
        assert _statuses(gateway, ISSUED.id) == [
            (START, ISSUED.id.serial_end, HoldingStatus.ACTIVE)
        ]
