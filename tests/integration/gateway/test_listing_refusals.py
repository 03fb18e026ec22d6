"""A project's refused listing in a jurisdiction refuses its units there, on every path.

An issuer who declares, when listing a project, that its reductions are also issued under
another program (double issuance, CR-DC-0002) is refused; the declaration is not recorded
as the project's facts, and so its units moved into the market, and were used there, as if
nothing had been said. Now the jurisdiction's latest listing decision of the project is read
with its facts: while it is a refusal, the units are refused there (transfer, batch item,
dry run, retirement, surrender) with the listing's own violations and its name; a later
listing that is not refused lifts it. A project never listed in a jurisdiction is decided
by each transfer's own rules, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy.orm import Session

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway.demo_migration import pilot_entity, record_entity, seed_registries
from registry_bridge import projects
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.integration.gateway.test_transfers_api import START, _block, _instruction

# The seeded Verra block's project, as its issuer would list it.
VCS_1060 = model_pb2.Project(
    program="VCS",
    project_id="1060",
    country="US",
    start_date="2018-06-01",
    crediting_period_start="2019-01-01",
    crediting_period_end="2019-12-31",
)
assert "-1060-01012019-31122019-" in VERRA_SERIAL


def _double_issued(project: model_pb2.Project) -> model_pb2.Project:
    """``project`` declared with its reductions of early 2019 also issued by Gold Standard."""
    declared = model_pb2.Project()
    declared.CopyFrom(project)
    declared.other_registrations.append(
        model_pb2.ProjectRegistration(
            program="GS",
            project_id="GS-1060",
            issued_period_start=f"{project.crediting_period_start[:4]}-01-01",
            issued_period_end=f"{project.crediting_period_start[:4]}-06-30",
        )
    )
    return declared


def _list(
    gateway: LiveGateway, request_id: str, project: model_pb2.Project, where: str = "shenzhen"
) -> gateway_pb2.ListProjectResponse:
    reply: gateway_pb2.ListProjectResponse = gateway.stub.ListProject(
        gateway_pb2.ListProjectRequest(request_id=request_id, project=project, jurisdiction=where),
        timeout=30,
    )
    return reply


def _refused(gateway: LiveGateway, request_id: str, project: model_pb2.Project) -> str:
    """List ``project`` double issued in Shenzhen; the refused listing's name."""
    reply = _list(gateway, request_id, _double_issued(project))
    assert not reply.listed
    assert [v.rule_id for v in reply.refusals] == ["CR-DC-0002"]
    return reply.name


def _listing_refusal(decision: model_pb2.Decision, name: str) -> model_pb2.Violation:
    """The decision's violation that carries the refused listing ``name``."""
    assert not decision.allowed
    found = [v for v in decision.violations if v.details.get("listing") == name]
    assert [v.rule_id for v in found] == ["CR-DC-0002"], decision
    (violation,) = found
    assert name in violation.message
    assert "shenzhen" in violation.message
    assert violation.details["jurisdiction"] == "shenzhen"
    assert "GCC Standard" in violation.source
    return violation


def _use_refused_under(listing: str, use: Callable[[], object]) -> None:
    """``use`` (a retirement or surrender) is refused FAILED_PRECONDITION, naming
    CR-DC-0002 and the refused listing ``listing``."""
    with pytest.raises(grpc.RpcError) as caught:
        use()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert "CR-DC-0002" in details
    assert listing in details


def _to_shenzhen(first: int, last: int) -> model_pb2.TransferInstruction:
    return _instruction([_block(START + first, START + last)])


def test_a_refused_listing_refuses_transfers_dry_runs_and_batch_items_until_relisted(
    live_gateway: LiveGateway,
) -> None:
    name = _refused(live_gateway, "dc-listing", VCS_1060)

    dry = live_gateway.stub.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(instruction=_to_shenzhen(0, 9)), timeout=30
    )
    violation = _listing_refusal(dry.decision, name)
    assert [b.serial_start for b in violation.blocks] == [START]

    single = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(request_id="dc-single", instruction=_to_shenzhen(0, 9)),
        timeout=30,
    )
    assert single.state == model_pb2.TRANSFER_STATE_REJECTED
    _listing_refusal(single.decision, name)
    assert "CR-DC-0002" in single.failure_reason

    batch = live_gateway.stub.SubmitTransfers(
        gateway_pb2.SubmitTransfersRequest(
            request_id="dc-batch",
            transfers=[
                gateway_pb2.SubmitTransferRequest(
                    request_id=f"dc-batch-{i}", instruction=_to_shenzhen(10 * i, 10 * i + 9)
                )
                for i in range(1, 4)
            ],
        ),
        timeout=60,
    )
    for result in batch.results:
        assert result.transfer.state == model_pb2.TRANSFER_STATE_REJECTED, result
        _listing_refusal(result.transfer.decision, name)

    # Another jurisdiction's listing neither refuses nor lifts Shenzhen's.
    assert _list(live_gateway, "hk-listing", VCS_1060, where="hkmo").listed
    again = live_gateway.stub.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(instruction=_to_shenzhen(0, 9)), timeout=30
    )
    _listing_refusal(again.decision, name)

    # The issuer withdraws the double registration: listed again, the units are admitted.
    assert _list(live_gateway, "fixed-listing", VCS_1060).listed
    moved = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(request_id="dc-after", instruction=_to_shenzhen(0, 9)),
        timeout=30,
    )
    assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason


def test_units_moved_in_before_a_refusal_cannot_be_retired_there_but_may_leave(
    live_gateway: LiveGateway,
) -> None:
    # Never listed in Shenzhen: the transfer's own rules decide, and admit the units.
    moved = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(request_id="in-first", instruction=_to_shenzhen(0, 49)),
        timeout=30,
    )
    assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
    mirror = moved.credited_blocks[0].id
    buyer = model_pb2.AccountRef(registry="shenzhen", account="buyer")

    def retire(request_id: str) -> model_pb2.UnitUse:
        use: model_pb2.UnitUse = live_gateway.stub.Retire(
            gateway_pb2.RetireRequest(
                request_id=request_id,
                account=buyer,
                units=[
                    _block(
                        mirror.serial_start,
                        mirror.serial_start + 9,
                        mirror.program,
                        mirror.serial_series,
                    )
                ],
                beneficiary="Acme Ltd",
            ),
            timeout=30,
        )
        return use

    name = _refused(live_gateway, "dc-after-transfer", VCS_1060)
    _use_refused_under(name, lambda: retire("retire-refused"))
    # They may leave, for a market whose rules admit them: back to the Hong Kong venue.
    back = live_gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="back-to-the-venue",
            instruction=_instruction(
                [
                    _block(
                        mirror.serial_start + 40,
                        mirror.serial_end,
                        mirror.program,
                        mirror.serial_series,
                    )
                ],
                source=("shenzhen", "buyer"),
                destination=("hkmo", "hk-seller"),
            ),
        ),
        timeout=30,
    )
    assert back.state == model_pb2.TRANSFER_STATE_COMPLETED, back.failure_reason

    assert _list(live_gateway, "relisted", VCS_1060).listed
    assert retire("retire-after").decision.allowed


@pytest.fixture
def pilots() -> Iterator[LinkedRegistries]:
    with linked_registries(wired=("shenzhen", "national")) as linked:
        yield linked


def test_a_refused_listing_refuses_surrenders_in_its_jurisdiction_until_relisted(
    database_url: str, pilots: LinkedRegistries
) -> None:
    steel = pilot_entity("steel-dc", "steel", 2023, 9_000_000)
    seed_registries(pilots.ports, steel)
    carbon_inclusive = model_pb2.Project(
        program="SZ-CI",
        project_id=steel.sz_ci.project_id,
        country="CN",
        region="Guangdong/Shenzhen",
        start_date="2022-06-01",
        crediting_period_start="2023-01-01",
        crediting_period_end="2023-12-31",
    )
    account = model_pb2.AccountRef(registry="shenzhen", account=steel.shenzhen_account)
    units = [
        model_pb2.UnitSelector(
            block=model_pb2.BlockId(
                program="SZ-CI",
                serial_start=steel.sz_ci.id.serial_start,
                serial_end=steel.sz_ci.id.serial_start + 99,
            )
        )
    ]
    with running_gateway(database_url, pilots) as gateway:
        gateway.server.import_registries()
        record_entity(gateway.stub, steel)

        def surrender(request_id: str) -> model_pb2.UnitUse:
            used: model_pb2.UnitUse = gateway.stub.Surrender(
                gateway_pb2.SurrenderRequest(
                    request_id=request_id,
                    account=account,
                    units=units,
                    entity_id=steel.entity_id,
                    compliance_year=2023,
                    jurisdiction="shenzhen",
                ),
                timeout=60,
            )
            return used

        name = _refused(gateway, "szci-double", carbon_inclusive)
        _use_refused_under(name, lambda: surrender("surrender-refused"))

        assert _list(gateway, "szci-relisted", carbon_inclusive).listed
        assert surrender("surrender-after").decision.allowed


def test_a_batch_reads_a_projects_listings_once(
    live_gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The facts and the refusals come from one statement, read once per project by the
    # batch's check transaction, not once per transfer (docs/performance.md, item 29).
    name = _refused(live_gateway, "dc-reads", VCS_1060)
    reads: list[tuple[str, str]] = []
    read = projects._read_standing

    def counted(session: Session, program: str, project_id: str) -> Any:
        reads.append((program, project_id))
        return read(session, program, project_id)

    monkeypatch.setattr(projects, "_read_standing", counted)
    batch = live_gateway.stub.SubmitTransfers(
        gateway_pb2.SubmitTransfersRequest(
            request_id="dc-reads-batch",
            transfers=[
                gateway_pb2.SubmitTransferRequest(
                    request_id=f"dc-reads-{i}", instruction=_to_shenzhen(10 * i, 10 * i + 9)
                )
                for i in range(8)
            ],
        ),
        timeout=60,
    )
    for result in batch.results:
        _listing_refusal(result.transfer.decision, name)
    assert reads == [("VCS", "1060")]
