"""The gateway learns what the registries hold: at start-up, in every status a unit can
have been left in, and again at every import interval."""

from __future__ import annotations

import dataclasses
import time
import uuid
from contextlib import AbstractContextManager

import grpc
import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from registry_bridge import db, ledger
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import IssueRequest, RetireRequest
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    running_gateway,
)

ISSUED = parse_serial("verra", VERRA_SERIAL)
START = ISSUED.id.serial_start


def _gateway(
    database_url: str, registries: LinkedRegistries, import_every: float = 60.0
) -> AbstractContextManager[LiveGateway]:
    return running_gateway(database_url, registries, registry_import_interval_seconds=import_every)


def _statuses(gateway: LiveGateway, block: BlockId) -> list[tuple[int, int, HoldingStatus]]:
    with db.read_only(db.session_factory(gateway.server.engine)) as session:
        return sorted(
            (h.block.id.serial_start, h.block.id.serial_end, h.status)
            for h in ledger.origin_rows(session, block)
        )


def _retire(gateway: LiveGateway, block: BlockId) -> model_pb2.UnitUse:
    selector = model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=block.program.value,
            serial_series=block.serial_series,
            serial_start=block.serial_start,
            serial_end=block.serial_end,
        )
    )
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
